"""Quality checks on a result: figures, per-script speaking rates, thresholds that fail a job."""

from __future__ import annotations

import pytest

from core.settings import Settings
from workers.audio import AudioStats
from workers.quality import assess, count_chars


def _stats(seconds: float, **kw: float) -> AudioStats:
    rate = 16000
    base: dict[str, float] = {
        "samples": int(seconds * rate),
        "sample_rate": rate,
        "peak": 0.5,
        "rms": 0.1,
        "nan_count": 0,
        "clipped": 0,
        "silent_frames": 10,
        "frames_20ms": int(seconds * 50),
        "loudness_lufs": -18.0,
    }
    base.update(kw)
    return AudioStats(**base)  # type: ignore[arg-type]


def test_characters_are_counted_per_script_without_markup() -> None:
    assert count_chars("Hello, world 42!") == (0, 12)
    assert count_chars("她[h][ào]干净，价格是3元。") == (7, 1)
    assert count_chars("[breath]<strong>今天</strong> OK") == (2, 2)


def test_good_audio_passes_and_is_recorded() -> None:
    text = "This sentence has a plausible number of letters for its audio."
    verdict = assess(_stats(4.0), text, 1.0, Settings())
    assert verdict.check is None and verdict.message is None and verdict.script == "latin"
    q = verdict.quality
    assert q["duration_s"] == 4.0 and q["chars_per_second"] == pytest.approx(51 / 4, abs=0.01)
    assert q["silence_ratio"] == 0.05 and q["nan_count"] == 0
    assert q["loudness_input_lufs"] == -18.0


@pytest.mark.parametrize(
    ("kw", "check", "figure"),
    [
        ({"nan_count": 7}, "nan", "7 of 64000 samples are NaN"),
        ({"clipped": 6400}, "clipped", "10.0% of samples are clipped"),
        ({"silent_frames": 180}, "silence", "90.0% of the audio is silent"),
    ],
)
def test_thresholds_fail_with_the_figure(kw: dict[str, float], check: str, figure: str) -> None:
    text = "This sentence has a plausible number of letters for its audio."
    verdict = assess(_stats(4.0, **kw), text, 1.0, Settings())
    assert verdict.check == check
    assert verdict.message is not None and figure in verdict.message
    assert verdict.message.startswith("quality check failed: ")
    # A threshold of 0 turns its check off (never NaN: that is always a fault).
    off = Settings(quality_max_clipped_ratio=0, quality_max_silence_ratio=0)
    assert (assess(_stats(4.0, **kw), text, 1.0, off).check is None) is (check != "nan")


def test_rates_are_per_script_and_scale_with_speed() -> None:
    chinese = "今天天气很好我们一起去公园散步吧然后吃午饭" * 2  # 42 characters
    s = Settings()
    assert assess(_stats(8.0), chinese, 1.0, s).check is None  # ~5 chars/s
    # 42 Han characters in 1 s is 42 chars/s: far past the CJK limit (25), though a Latin text
    # of 42 letters in 1 s would pass.
    fast = assess(_stats(1.0), chinese, 1.0, s)
    assert fast.check == "too_fast" and fast.script == "cjk"
    assert fast.message is not None and "42 CJK" in fast.message
    assert assess(_stats(1.05), "a" * 42, 1.0, s).check is None
    # At speed 2 audio half as long is expected: the same second is plausible, half of it not.
    assert assess(_stats(1.0), chinese, 2.0, s).check is None
    assert assess(_stats(0.5), chinese, 2.0, s).check == "too_fast"
    slow = assess(_stats(100.0), chinese, 1.0, s)
    assert slow.check == "too_slow"
    assert slow.message is not None and "at most 84.00 s" in slow.message
    # Mixed text: each script's characters at their own rate.
    mixed = "我们今天use the new模型to speak" + "中文" * 5
    assert assess(_stats(5.0), mixed, 1.0, s).script == "mixed"
    # Short texts are not held to a rate.
    assert assess(_stats(30.0), "Hi.", 1.0, s).check is None


def test_figures_and_failures_are_exported_as_metrics() -> None:
    from prometheus_client import REGISTRY

    from workers.quality import observe

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    text = "This sentence has a plausible number of letters for its audio."
    before = value("voicefarm_audio_silence_ratio_count", engine="qtest")
    failed = value("voicefarm_quality_failures_total", engine="qtest", check="clipped")
    verdict = assess(_stats(4.0, clipped=6400), text, 1.0, Settings())
    observe("qtest", verdict)
    assert value("voicefarm_audio_silence_ratio_count", engine="qtest") == before + 1
    assert value("voicefarm_quality_failures_total", engine="qtest", check="clipped") == failed + 1
    cps = value("voicefarm_audio_chars_per_second_sum", engine="qtest", script="latin")
    assert cps == pytest.approx(51 / 4, abs=0.01)

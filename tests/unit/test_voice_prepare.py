"""Voice preparation (workers/voices/audio.py) on real Piper speech and variants that each fail
one way, and the speaker-similarity helpers (workers/voices/encoder.py)."""

from __future__ import annotations

import numpy as np
import pytest

from core.enums import VoiceErrorCode
from tests.fixtures import voice_audio as va
from workers.voices import EMBEDDING_DIM, embed, similarity
from workers.voices.audio import Limits, VoiceRejected, make_prompt, speech_bounds


def test_speech_becomes_a_trimmed_prompt() -> None:
    prompt = make_prompt(va.speech(), Limits())
    assert prompt.sample_rate == va.RATE and prompt.samples.dtype == np.float32
    raw_s = len(va.speech_samples()) / va.RATE
    # Half a second of silence was added on each side (Piper leaves some of its own too);
    # trimming keeps 0.1 s of padding around the speech.
    assert 5.0 <= prompt.duration_s <= raw_s - 0.8


def test_stereo_flac_is_mixed_to_mono() -> None:
    prompt = make_prompt(va.flac_stereo(), Limits())
    assert prompt.samples.ndim == 1 and 5.0 <= prompt.duration_s <= 8.5


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (va.too_short, VoiceErrorCode.too_short),
        (va.silence, VoiceErrorCode.too_quiet),
        (va.clipped, VoiceErrorCode.clipped),
        (va.low_rate, VoiceErrorCode.sample_rate_too_low),
        (va.garbage, VoiceErrorCode.audio_undecodable),
        (va.long_recording, VoiceErrorCode.too_long),
        (lambda: b"", VoiceErrorCode.audio_undecodable),
    ],
)
def test_each_bad_recording_is_rejected_with_its_code(make: object, code: VoiceErrorCode) -> None:
    with pytest.raises(VoiceRejected) as err:
        make_prompt(make(), Limits())  # type: ignore[operator]
    assert err.value.code == code and err.value.message


def test_limits_are_configurable() -> None:
    with pytest.raises(VoiceRejected) as err:
        make_prompt(va.speech(), Limits(min_seconds=1.0, max_seconds=4.0))
    assert err.value.code == VoiceErrorCode.too_long
    assert make_prompt(va.too_short(), Limits(min_seconds=1.0)).duration_s < 2.0


def test_speech_bounds_find_a_tone_between_silences() -> None:
    rate = 16000
    t = np.arange(rate) / rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t)
    samples = np.concatenate([np.zeros(rate), tone, np.zeros(2 * rate)]).astype(np.float32)
    start, end, loudest = speech_bounds(samples, rate)
    assert abs(start - 0.9 * rate) <= 0.02 * rate and abs(end - 2.1 * rate) <= 0.02 * rate
    assert -14 < loudest < -12  # RMS of a 0.3 sine


def test_same_speaker_scores_higher_than_another_voice() -> None:
    ours = embed(va.speech_samples(), va.RATE)
    assert ours.shape == (EMBEDDING_DIM,) and abs(float(np.linalg.norm(ours)) - 1.0) < 1e-5
    same = embed(va.other_speech_samples(), va.RATE)  # same speaker, other sentences
    other = embed(va.other_speaker(va.other_speech_samples()), va.RATE)
    assert similarity(ours, same) > 0.85
    assert similarity(ours, same) > similarity(ours, other) + 0.2
    assert similarity(ours, ours) == pytest.approx(1.0, abs=1e-5)


def test_similarity_normalises_and_checks_its_inputs() -> None:
    assert similarity([3.0, 0.0], [1.0, 0.0]) == pytest.approx(1.0)
    assert similarity([1.0, 0.0], [-2.0, 0.0]) == pytest.approx(-1.0)
    assert similarity([1.0, 0.0], [0.0, 5.0]) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        similarity([1.0, 0.0], [1.0, 0.0, 0.0])
    with pytest.raises(ValueError):
        similarity([0.0, 0.0], [1.0, 0.0])
    with pytest.raises(ValueError):
        embed(np.zeros(0, np.float32), 16000)

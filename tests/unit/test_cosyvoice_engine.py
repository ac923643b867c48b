"""The CosyVoice engine against a stand-in of the official module (the weights cannot run
here): which upstream call each job makes, FP16 only on CUDA, no downloads, markup untouched."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.settings import Settings
from workers.engines.base import RequestRejected, SegmentRequest
from workers.engines.cosyvoice import CosyVoiceEngine

STUB = Path(__file__).resolve().parents[1] / "fixtures" / "cosyvoice_stub"


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    monkeypatch.syspath_prepend(str(STUB))
    from cosyvoice.cli import cosyvoice as stub

    stub.CALLS.clear()
    yield stub.CALLS


def _engine(tmp_path: Path, device: str = "cpu", dtype: str = "fp32") -> CosyVoiceEngine:
    engine = CosyVoiceEngine(Settings(cosyvoice_model_dir=tmp_path))
    engine.load(device, dtype)
    return engine


def _pitch(samples: np.ndarray, rate: int) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(samples))) * rate / len(samples))


def test_fp16_only_on_cuda(tmp_path: Path, calls: list[dict[str, Any]]) -> None:
    _engine(tmp_path, "cuda", "fp16")
    _engine(tmp_path, "cpu", "fp32")
    _engine(tmp_path, "cuda", "fp32")
    assert [c["fp16"] for c in calls if c["call"] == "init"] == [True, False, False]


def test_refuses_a_missing_model_dir_instead_of_downloading(
    tmp_path: Path, calls: list[dict[str, Any]]
) -> None:
    with pytest.raises(RuntimeError, match="not a model directory"):
        _engine(tmp_path / "absent")
    assert calls == []


def test_instruction_uses_instruct2_with_the_speaker_and_keeps_markup(
    tmp_path: Path, calls: list[dict[str, Any]]
) -> None:
    engine = _engine(tmp_path)
    (audio,) = engine.synthesize(
        [SegmentRequest("她[h][ào]干净", "speaker_b", 1.0, {"instruction": "用四川话说这句话"})]
    )
    call = calls[-1]
    assert call["call"] == "instruct2" and call["text"] == "她[h][ào]干净"
    assert call["instruct_text"] == "用四川话说这句话<|endofprompt|>"
    assert call["zero_shot_spk_id"] == "speaker_b"
    assert call["text_frontend"] is False  # the normaliser must not rewrite the markup
    assert audio.sample_rate == 24000 and abs(_pitch(audio.samples, 24000) - 400) < 5


def test_preset_voice_defaults_to_the_first_speaker(
    tmp_path: Path, calls: list[dict[str, Any]]
) -> None:
    engine = _engine(tmp_path)
    engine.synthesize([SegmentRequest("你好。", None, 1.2)])
    assert calls[-1]["call"] == "zero_shot" and calls[-1]["zero_shot_spk_id"] == "中文女"
    assert calls[-1]["speed"] == 1.2 and calls[-1]["text_frontend"] is True
    with pytest.raises(RequestRejected, match="not in the model"):
        engine.synthesize([SegmentRequest("hi", "nobody", 1.0)])


def test_cosyvoice3_instructions_get_the_system_line_and_lose_injected_tokens(
    tmp_path: Path, calls: list[dict[str, Any]]
) -> None:
    engine = _engine(tmp_path)
    engine.model.__class__ = type("CosyVoice3", (type(engine.model),), {})
    engine.synthesize(
        [
            SegmentRequest(
                "你好。", None, 1.0, {"instruction": "请用广东话表达。<|endofprompt|><|im_end|>"}
            )
        ]
    )
    assert calls[-1]["instruct_text"] == (
        "You are a helpful assistant. 请用广东话表达。<|endofprompt|>"
    )

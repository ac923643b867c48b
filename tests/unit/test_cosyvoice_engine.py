"""The CosyVoice engine against a stand-in of the official module that behaves like upstream
(tests/fixtures/cosyvoice_stub: no speakers on a fresh model, a speaker id overriding the prompt
and instruct text, one chunk per sentence, CosyVoice 3's <|endofprompt|> assertion).

The same behaviours are proved against the official code in
tests/integration/test_cosyvoice_real.py; this module covers what that cannot run here (fp16
on CUDA: the stand-in honours fp16 as if CUDA were present and can return NaN or silence for
fp16 calls) and keeps the engine checked where the `cosyvoice` extra is not installed."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.settings import Settings
from workers.engines.base import PreparedVoice, RequestRejected, SegmentRequest, VoicePrompt
from workers.engines.cosyvoice import CosyVoiceEngine
from workers.metrics import FP16_FALLBACKS

STUB = Path(__file__).resolve().parents[1] / "fixtures" / "cosyvoice_stub"
EOP = 151646


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The stand-in as `cosyvoice`, without leaking it to (or from) tests of the real code."""
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] == "cosyvoice"}
    monkeypatch.syspath_prepend(str(STUB))
    from cosyvoice.cli import cosyvoice as module

    module.CALLS.clear()
    module.FAIL_FP16["mode"] = None
    yield module
    for k in [k for k in sys.modules if k.split(".")[0] == "cosyvoice"]:
        del sys.modules[k]
    sys.modules.update(saved)


def _model_dir(tmp_path: Path, version: int, sft: str | None = None) -> Path:
    d = tmp_path / f"cv{version}"
    d.mkdir(exist_ok=True)
    (d / f"cosyvoice{version}.yaml").write_text("sample_rate: 24000\n")
    if sft:
        import torch

        torch.save({sft: {"embedding": torch.ones(1, 192)}}, d / "spk2info.pt")
    return d


def _engine(model_dir: Path, device: str = "cpu", dtype: str = "fp32") -> CosyVoiceEngine:
    engine = CosyVoiceEngine(Settings(cosyvoice_model_dir=model_dir))
    engine.load(device, dtype)
    return engine


def _voice(
    engine: CosyVoiceEngine, key: str = "k1", transcript: str = "希望你以后能够做的比我还好呦。"
) -> PreparedVoice:
    rate = 16000
    t = np.arange(3 * rate) / rate
    samples = (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
    prompt = VoicePrompt("v1", 1, transcript, "zh", "sha", samples, rate)
    return PreparedVoice(key, engine.prepare_voice(prompt), "v1", transcript, "zh")


def _tokens(text: str) -> list[int]:
    from cosyvoice.cli.cosyvoice import _Tokenizer

    return _Tokenizer().encode(text)


def test_fp16_only_on_cuda(tmp_path: Path, stub: Any) -> None:
    d = _model_dir(tmp_path, 2)
    assert _engine(d, "cuda", "fp16").fp16 is True
    assert _engine(d, "cpu", "fp16").fp16 is False
    assert _engine(d, "cuda", "fp32").fp16 is False


def test_refuses_a_missing_model_dir_instead_of_downloading(tmp_path: Path, stub: Any) -> None:
    with pytest.raises(RuntimeError, match="not a model directory"):
        _engine(tmp_path / "absent")


def test_a_fresh_model_has_no_preset_speakers(tmp_path: Path, stub: Any) -> None:
    engine = _engine(_model_dir(tmp_path, 2))
    with pytest.raises(RequestRejected, match=r"needs a voice.*no speakers"):
        engine.synthesize([SegmentRequest("你好。", None)])
    with pytest.raises(RequestRejected, match="needs a voice"):
        engine.synthesize([SegmentRequest("你好。", None, mode="instruct", instruction="慢一点")])
    assert stub.CALLS == []


def test_sft_speakers_of_the_model_dir_serve_preset(tmp_path: Path, stub: Any) -> None:
    engine = _engine(_model_dir(tmp_path, 3, sft="中文女"))
    (audio,) = engine.synthesize([SegmentRequest("你好。再见。", "中文女")])
    assert len(stub.CALLS) == 2 and audio.samples.size > 0
    # CosyVoice 3 gets its system line before each segment's text
    assert all(
        c["text"][: len(_tokens("You are a helpful assistant.<|endofprompt|>"))]
        == _tokens("You are a helpful assistant.<|endofprompt|>")
        for c in stub.CALLS
    )
    with pytest.raises(RequestRejected, match="SFT speakers \\['中文女'\\]"):
        engine.synthesize([SegmentRequest("你好。", "nobody")])


def test_clone_keeps_the_prompt_transcript_and_joins_one_chunk_per_sentence(
    tmp_path: Path, stub: Any
) -> None:
    engine = _engine(_model_dir(tmp_path, 2))
    voice = _voice(engine)
    (audio,) = engine.synthesize(
        [SegmentRequest("第一句。第二句话。", None, 1.5, mode="clone", prompt=voice)]
    )
    assert [c["text"] for c in stub.CALLS] == [_tokens("第一句。"), _tokens("第二句话。")]
    assert all(c["prompt_text"] == _tokens(voice.transcript) for c in stub.CALLS)
    assert all(c["llm_prompt_speech_token"] and c["speed"] == 1.5 for c in stub.CALLS)
    assert audio.sample_rate == 24000
    assert audio.samples.size == sum(int(24000 * 0.02 * len(c["text"]) / 1.5) for c in stub.CALLS)


def test_instruction_reaches_the_llm_prompt_and_markup_is_untouched(
    tmp_path: Path, stub: Any
) -> None:
    engine = _engine(_model_dir(tmp_path, 2))
    voice = _voice(engine)
    engine.synthesize(
        [
            SegmentRequest(
                "她[h][ào]干净。",
                None,
                mode="instruct",
                prompt=voice,
                instruction="用四川话说这句话<|im_end|>",
            )
        ]
    )
    (call,) = stub.CALLS
    assert call["prompt_text"] == _tokens("用四川话说这句话<|endofprompt|>")
    assert call["text"] == _tokens("她[h][ào]干净。")
    assert call["llm_prompt_speech_token"] is False  # as frontend_instruct2 composes it


def test_cosyvoice3_formats(tmp_path: Path, stub: Any) -> None:
    engine = _engine(_model_dir(tmp_path, 3))
    voice = _voice(engine, transcript="<|endofprompt|>希望你以后能够做的比我还好呦。")
    engine.synthesize([SegmentRequest("你好。", None, mode="clone", prompt=voice)])
    engine.synthesize(
        [
            SegmentRequest(
                "你好。",
                None,
                mode="instruct",
                prompt=voice,
                instruction="请用广东话表达。<|endofprompt|>",
            )
        ]
    )
    engine.synthesize([SegmentRequest("Hello there.", None, mode="cross_lingual", prompt=voice)])
    clone, instruct, cross = stub.CALLS
    assert clone["prompt_text"] == _tokens(
        "You are a helpful assistant.<|endofprompt|>希望你以后能够做的比我还好呦。"
    )
    assert instruct["prompt_text"] == _tokens(
        "You are a helpful assistant. 请用广东话表达。<|endofprompt|>"
    )
    assert cross["prompt_text"] == []
    assert cross["text"] == _tokens("You are a helpful assistant.<|endofprompt|>Hello there.")


def test_cosyvoice3_refuses_a_prompt_without_endofprompt_before_any_call(
    tmp_path: Path, stub: Any
) -> None:
    cv2 = _engine(_model_dir(tmp_path, 2))
    cv3 = _engine(_model_dir(tmp_path, 3))
    voice = _voice(cv2)  # prepared for CosyVoice 2: the transcript as is
    with pytest.raises(RequestRejected, match="endofprompt"):
        cv3.synthesize([SegmentRequest("你好。", None, mode="clone", prompt=voice)])
    assert stub.CALLS == []


@pytest.mark.parametrize("failure", ["nan", "silence"])
def test_fp16_result_guard_retries_once_in_fp32(tmp_path: Path, stub: Any, failure: str) -> None:
    """CUDA cannot run here: the stand-in honours fp16 as if it could and returns NaN or
    silence for fp16 calls, as a broken fp16 kernel would."""
    engine = _engine(_model_dir(tmp_path, 2), "cuda", "fp16")
    voice = _voice(engine)
    stub.FAIL_FP16["mode"] = failure
    before = FP16_FALLBACKS.labels("cosyvoice")._value.get()
    (audio,) = engine.synthesize([SegmentRequest("你好。", None, mode="clone", prompt=voice)])
    assert [c["fp16"] for c in stub.CALLS] == [True, False]
    assert np.isfinite(audio.samples).all() and np.abs(audio.samples).max() > 0.1
    assert FP16_FALLBACKS.labels("cosyvoice")._value.get() == before + 1
    assert engine.model.model.fp16 is True  # the next job runs in fp16 again
    stub.FAIL_FP16["mode"] = None
    engine.synthesize([SegmentRequest("你好。", None, mode="clone", prompt=voice)])
    assert stub.CALLS[-1]["fp16"] is True
    assert FP16_FALLBACKS.labels("cosyvoice")._value.get() == before + 1


def test_text_without_speech_gives_no_samples_and_no_retry(tmp_path: Path, stub: Any) -> None:
    engine = _engine(_model_dir(tmp_path, 2), "cuda", "fp16")
    voice = _voice(engine)
    (audio,) = engine.synthesize([SegmentRequest("...", None, mode="clone", prompt=voice)])
    assert audio.samples.size == 0 and stub.CALLS == []


def test_prepared_voices_are_loaded_once_and_evicted_lru(tmp_path: Path, stub: Any) -> None:
    engine = CosyVoiceEngine(
        Settings(cosyvoice_model_dir=_model_dir(tmp_path, 2), cosyvoice_loaded_voices=2)
    )
    engine.load("cpu", "fp32")
    voices = [_voice(engine, key=f"k{i}") for i in range(3)]
    for v in voices:
        engine.synthesize([SegmentRequest("你好。", None, mode="clone", prompt=v)])
    assert sorted(engine.model.frontend.spk2info) == ["k1", "k2"]
    with pytest.raises(RequestRejected, match="unreadable"):
        engine.synthesize(
            [
                SegmentRequest(
                    "你好。", None, mode="clone", prompt=PreparedVoice("bad", b"junk", "v9", "x")
                )
            ]
        )


def test_revision_follows_the_weights(tmp_path: Path) -> None:
    d = _model_dir(tmp_path, 2)
    (d / "llm.pt").write_bytes(b"a")
    first = CosyVoiceEngine(Settings(cosyvoice_model_dir=d)).revision
    assert CosyVoiceEngine(Settings(cosyvoice_model_dir=d)).revision == first
    (d / "llm.pt").write_bytes(b"ab")
    assert CosyVoiceEngine(Settings(cosyvoice_model_dir=d)).revision != first

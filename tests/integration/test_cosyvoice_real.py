"""The CosyVoice engine on the official code (upstream @ace7c47) with tiny random CosyVoice2
and CosyVoice3 models (tests/fixtures/cosyvoice_models.py): clone, cross-lingual, instruct,
the default voice, CosyVoice 3's <|endofprompt|> rule, multi-segment output, the fp16 guard,
and the engine loaded from its settings in a process of its own.

What reaches the model is read with spies on the real objects: `model.llm.inference` (the token
ids the LLM gets as prompt and text) and `model.tts` (one call per text segment). The audio is
noise (random weights); its rate, length and finiteness are real.

Skips with the reason where VOICEFARM_COSYVOICE_SRC or the `cosyvoice` extra is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.settings import Settings
from tests.fixtures.cosyvoice_models import ROOT, cosyvoice_models  # noqa: F401
from workers.engines.base import PreparedVoice, RequestRejected, SegmentRequest, VoicePrompt
from workers.engines.cosyvoice import CosyVoiceEngine, strip_special_tokens
from workers.metrics import FP16_FALLBACKS

pytestmark = [
    # Upstream and its dependencies warn on import and in the LLM thread (torch.cuda.amp
    # deprecation, diffusers' LoRA notice); an error there would kill the thread mid-call.
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.timeout(600),
]

TRANSCRIPT = "希望你以后能够做的比我还好呦。"
LONG_TEXT = " ".join(
    f"This is sentence number {i} of a longer paragraph that must be split." for i in range(1, 13)
)


@pytest.fixture(scope="module")
def engines(cosyvoice_models: dict[int, Path]) -> dict[int, CosyVoiceEngine]:  # noqa: F811
    import torch

    torch.set_num_threads(1)
    out = {}
    for version, model_dir in cosyvoice_models.items():
        engine = CosyVoiceEngine(
            Settings(
                cosyvoice_model_dir=model_dir,
                cosyvoice_src=Path(os.environ["VOICEFARM_COSYVOICE_SRC"]),
                cosyvoice_threads=1,
            )
        )
        engine.load("cpu", "fp16")  # fp16 asked for, off without CUDA as upstream does
        out[version] = engine
    return out


@pytest.fixture(params=[2, 3], ids=["cv2", "cv3"])
def engine(request: pytest.FixtureRequest, engines: dict[int, CosyVoiceEngine]) -> CosyVoiceEngine:
    return engines[request.param]


def _prompt(transcript: str = TRANSCRIPT, rate: int = 16000) -> VoicePrompt:
    t = np.arange(int(3.2 * rate)) / rate
    rng = np.random.default_rng(0)
    samples = 0.3 * np.sin(2 * np.pi * (150 + 50 * t) * t) + 0.02 * rng.standard_normal(t.size)
    return VoicePrompt("voice-1", 1, transcript, "zh", "sha", samples.astype(np.float32), rate)


def _voice(engine: CosyVoiceEngine, key: str | None = None, rate: int = 16000) -> PreparedVoice:
    prompt = _prompt(rate=rate)
    key = key or f"cosyvoice:{engine.revision}:{rate}"
    return PreparedVoice(key, engine.prepare_voice(prompt), prompt.voice_id, prompt.transcript)


class Spy:
    """Records what the real LLM and model get, calling through to them."""

    def __init__(self, engine: CosyVoiceEngine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.llm: list[dict[str, list[int]]] = []
        self.tts = 0
        llm, model = engine.model.model.llm, engine.model.model
        real_inference, real_tts = llm.inference, model.tts

        def inference(**kw: Any) -> Any:
            self.llm.append(
                {
                    k: kw[k].flatten().tolist()
                    for k in ("prompt_text", "text", "prompt_speech_token")
                }
            )
            return real_inference(**kw)

        def tts(**kw: Any) -> Iterator[Any]:
            self.tts += 1
            return real_tts(**kw)  # type: ignore[no-any-return]

        monkeypatch.setattr(llm, "inference", inference)
        monkeypatch.setattr(model, "tts", tts)


def _ids(engine: CosyVoiceEngine, text: str) -> list[int]:
    frontend = engine.model.frontend
    return list(frontend.tokenizer.encode(text, allowed_special=frontend.allowed_special))


def _check_audio(engine: CosyVoiceEngine, samples: np.ndarray) -> None:
    assert engine.sample_rate == 24000
    assert samples.dtype == np.float32 and samples.size > 0 and np.isfinite(samples).all()


def test_a_fresh_model_has_no_speakers(engine: CosyVoiceEngine) -> None:
    assert engine.sft_speakers == []
    with pytest.raises(RequestRejected, match="needs a voice"):
        engine.synthesize([SegmentRequest("你好。", None)])


def test_clone_speaks_with_the_prompt_transcript(
    engine: CosyVoiceEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    voice = _voice(engine)
    spy = Spy(engine, monkeypatch)
    (audio,) = engine.synthesize([SegmentRequest("你好，世界。", None, mode="clone", prompt=voice)])
    _check_audio(engine, audio.samples)
    (call,) = spy.llm
    assert call["prompt_text"] == _ids(engine, engine.prompt_text(TRANSCRIPT))
    if engine.version == 3:
        assert call["prompt_text"][: len(_ids(engine, "You are a helpful assistant."))] == _ids(
            engine, "You are a helpful assistant."
        )
    assert len(call["prompt_speech_token"]) > 0  # the prompt's speech tokens reach the LLM


def test_prompt_audio_at_24k_is_accepted(engine: CosyVoiceEngine) -> None:
    voice = _voice(engine, rate=24000)
    (audio,) = engine.synthesize([SegmentRequest("你好。", None, mode="clone", prompt=voice)])
    _check_audio(engine, audio.samples)


def test_default_voice_preset_is_zero_shot_with_that_voice(
    engine: CosyVoiceEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job without a voice reaches the engine as `preset` with the farm's default voice."""
    voice = _voice(engine, key="default-voice")
    spy = Spy(engine, monkeypatch)
    (audio,) = engine.synthesize(
        [SegmentRequest("Hello there.", None, mode="preset", prompt=voice)]
    )
    _check_audio(engine, audio.samples)
    assert spy.llm[0]["prompt_text"] == _ids(engine, engine.prompt_text(TRANSCRIPT))


def test_cross_lingual_drops_the_prompt_from_the_llm(
    engine: CosyVoiceEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    voice = _voice(engine)
    spy = Spy(engine, monkeypatch)
    (audio,) = engine.synthesize(
        [SegmentRequest("Hello world, how are you?", None, mode="cross_lingual", prompt=voice)]
    )
    _check_audio(engine, audio.samples)
    (call,) = spy.llm
    assert call["prompt_text"] == [] and call["prompt_speech_token"] == []
    expected = "Hello world, how are you?"
    if engine.version == 3:
        expected = "You are a helpful assistant.<|endofprompt|>" + expected
    assert call["text"] == _ids(engine, expected)


def test_instruction_reaches_the_llm(
    engine: CosyVoiceEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    voice = _voice(engine)
    spy = Spy(engine, monkeypatch)
    (audio,) = engine.synthesize(
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
    _check_audio(engine, audio.samples)
    (call,) = spy.llm
    instruct = engine.instruct_text("用四川话说这句话")
    assert strip_special_tokens(instruct) in instruct and instruct.endswith("<|endofprompt|>")
    assert call["prompt_text"] == _ids(engine, instruct)
    assert call["prompt_speech_token"] == []  # as frontend_instruct2 composes it
    assert call["text"] == _ids(engine, "她[h][ào]干净。")  # markup untouched

    # Upstream's speaker-id path would have dropped the instruction (issue 1400):
    engine._use_voice(voice.key, voice.data)
    list(engine.model.inference_instruct2("你好。", instruct, "", zero_shot_spk_id=voice.key))
    assert spy.llm[-1]["prompt_text"] != _ids(engine, instruct)


def test_cosyvoice3_refuses_a_prompt_without_endofprompt_before_the_call(
    engines: dict[int, CosyVoiceEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    cv2, cv3 = engines[2], engines[3]
    voice = _voice(cv2, key="prepared-for-cv2")  # the transcript as is, no system line
    spy = Spy(cv3, monkeypatch)
    with pytest.raises(RequestRejected, match="endofprompt"):
        cv3.synthesize([SegmentRequest("你好。", None, mode="clone", prompt=voice)])
    assert spy.tts == 0 and spy.llm == []


def test_several_segments_are_joined_at_24k(
    engine: CosyVoiceEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    voice = _voice(engine)
    segments = engine.model.frontend.text_normalize(LONG_TEXT, split=True)
    assert len(segments) > 1
    lengths: list[int] = []
    real_tts = engine.model.model.tts

    def tts(**kw: Any) -> Iterator[Any]:
        for out in real_tts(**kw):
            lengths.append(out["tts_speech"].shape[1])
            yield out

    monkeypatch.setattr(engine.model.model, "tts", tts)
    for mode in ("clone", "cross_lingual", "instruct"):
        lengths.clear()
        (audio,) = engine.synthesize(
            [SegmentRequest(LONG_TEXT, None, mode=mode, prompt=voice, instruction="Speak slowly.")]
        )
        _check_audio(engine, audio.samples)
        assert len(lengths) == len(segments), mode
        assert audio.samples.size == sum(lengths)


def test_text_without_speech_gives_no_samples(engine: CosyVoiceEngine) -> None:
    voice = _voice(engine)
    (audio,) = engine.synthesize([SegmentRequest("...", None, mode="clone", prompt=voice)])
    assert audio.samples.size == 0


def test_fp16_guard_on_the_real_model(
    engines: dict[int, CosyVoiceEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """fp16 needs CUDA, which this machine lacks: a stand-in in front of the real `model.tts`
    returns NaN whenever upstream's fp16 switch (`model.fp16`, its autocast flag) is on, as a
    broken fp16 kernel would; the engine must run the segment again with it off."""
    engine = engines[2]
    voice = _voice(engine)
    inner, real_tts = engine.model.model, engine.model.model.tts
    seen: list[bool] = []

    def tts(**kw: Any) -> Iterator[Any]:
        import torch

        seen.append(inner.fp16)
        if inner.fp16:
            return iter([{"tts_speech": torch.full((1, 960), float("nan"))}])
        return real_tts(**kw)  # type: ignore[no-any-return]

    monkeypatch.setattr(inner, "tts", tts)
    monkeypatch.setattr(engine, "fp16", True)
    inner.fp16 = True
    try:
        before = FP16_FALLBACKS.labels("cosyvoice")._value.get()
        (audio,) = engine.synthesize([SegmentRequest("你好。", None, mode="clone", prompt=voice)])
    finally:
        inner.fp16 = False
    assert seen == [True, False]
    _check_audio(engine, audio.samples)
    assert FP16_FALLBACKS.labels("cosyvoice")._value.get() == before + 1


def test_the_engine_loads_from_settings_in_a_process_of_its_own(
    cosyvoice_models: dict[int, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    """Engine discovery by entry point, the snapshot put on sys.path from
    VOICEFARM_COSYVOICE_SRC (no PYTHONPATH), one process per model as the worker runs it."""
    script = """
import json, sys, time
import numpy as np
from core.settings import Settings
from workers.engines.registry import create_engine
from workers.engines.base import PreparedVoice, SegmentRequest, VoicePrompt
t0 = time.monotonic()
engine = create_engine("cosyvoice", Settings())
engine.load("cpu", "fp32")
load_s = time.monotonic() - t0
rate = 16000
t = np.arange(3 * rate) / rate
prompt = VoicePrompt("v", 1, "Hope you can do even better than me.", "en", "s",
                     (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), rate)
voice = PreparedVoice("k", engine.prepare_voice(prompt), "v", prompt.transcript)
out = {"load_s": load_s, "revision": engine.revision, "modes": {}}
for mode in ("clone", "cross_lingual", "instruct"):
    t0 = time.monotonic()
    (a,) = engine.synthesize([SegmentRequest(sys.argv[1], None, mode=mode, prompt=voice,
                                             instruction="Speak happily.")])
    out["modes"][mode] = [a.sample_rate, int(a.samples.size), time.monotonic() - t0]
print("RESULT " + json.dumps(out))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for version, model_dir in cosyvoice_models.items():
        env.update(
            VOICEFARM_COSYVOICE_MODEL_DIR=str(model_dir),
            VOICEFARM_COSYVOICE_THREADS="1",
            OMP_NUM_THREADS="1",
        )
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-c", script, "Hello world. Nice to meet you."],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
        result = json.loads(line.removeprefix("RESULT "))
        for mode, (rate, samples, _) in result["modes"].items():
            assert rate == 24000 and samples > 0, (version, mode)
        print(f"cv{version}: process {time.monotonic() - t0:.1f}s {result}")

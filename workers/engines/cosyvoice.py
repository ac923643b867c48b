"""CosyVoice 2/3: the production engine, over the official CosyVoice code and a local model
directory. The official code is not on PyPI: VOICEFARM_COSYVOICE_SRC names a snapshot of the
pinned commit (infra/dev/cosyvoice-src.sh), its inference dependencies are the `cosyvoice`
extra (`make install-cosyvoice`).

Upstream behaviours this adapter is built around (checked against the official code on tiny
models, tests/integration/test_cosyvoice_real.py):
- A CosyVoice 2/3 model ships no speakers. Every mode speaks with a prepared voice (the job's
  or the operator's default, resolved by the worker); `preset` without one works only for an
  SFT speaker that the model directory itself holds (spk2info.pt).
- `prepare_voice` runs upstream's zero-shot frontend once on the prompt (what
  `add_zero_shot_spk` computes); the features are loaded into `frontend.spk2info` under the
  prepared voice's key, so clone and cross-lingual calls take upstream's own
  `zero_shot_spk_id` path, which keeps the prompt transcript.
- `inference_instruct2` with `zero_shot_spk_id` drops the instruct text (upstream issue 1400):
  instruct calls are composed from the cached features the way `frontend_instruct2` composes
  them from a prompt recording, and run through `model.tts` as `inference_instruct2` does.
- CosyVoice 3 asserts `<|endofprompt|>` in the text or prompt (a streamed call hangs without
  it): every input is checked for the token before any model call.
- FP16 (upstream's autocast, switched by `model.fp16`) on CUDA only; a NaN, infinite or silent
  result is run again once in fp32 and counted.
Markup (`她[h][ào]干净`, `[M][AY0][N][UW1][T]`) reaches the model as written, with upstream's
text normaliser off for that text.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import sys
import tempfile
import threading
import wave
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from core.engines import BUILTIN
from core.errors import MarkupInvalid
from core.settings import Settings
from core.text import parse_markup
from workers.engines.base import Audio, EngineBase, RequestRejected, SegmentRequest, VoicePrompt
from workers.metrics import FP16_FALLBACKS

END_OF_PROMPT = "<|endofprompt|>"
# CosyVoice 3's system line, as upstream's examples write it before a prompt or spoken text.
CV3_SYSTEM = "You are a helpful assistant."
_SPECIAL_TOKEN = re.compile(r"<\|[^|>]*\|>")
# Below this peak a result counts as silence (fp16 underflow gives exact zeros).
SILENCE_PEAK = 1e-4
_MODEL_FILES = {".yaml", ".pt", ".onnx", ".json", ".safetensors", ".txt", ".model", ".tiktoken"}


def strip_special_tokens(text: str) -> str:
    """Client text must not steer the prompt with upstream's `<|...|>` control tokens."""
    return _SPECIAL_TOKEN.sub("", text).strip()


def _has_markup(text: str) -> bool:
    try:
        return bool(parse_markup(text))
    except MarkupInvalid:
        return False


def model_revision(model_dir: Path) -> str:
    """A stable hash of the model directory's config and weight files (names, sizes, mtimes).
    spk2info.pt is left out: prepared prompts do not depend on the SFT speakers."""
    lines = []
    for path in sorted(model_dir.rglob("*")):
        if path.is_file() and path.suffix in _MODEL_FILES and path.name != "spk2info.pt":
            st = path.stat()
            lines.append(f"{path.relative_to(model_dir)}\t{st.st_size}\t{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _import_upstream(src: Path | None) -> Any:
    """`cosyvoice.cli.cosyvoice.AutoModel`, with the snapshot on sys.path (at load, never at
    import: the API side imports nothing of this) and torchaudio made usable without FFmpeg."""
    if src is not None:
        for path in (src / "third_party" / "Matcha-TTS", src):
            if not path.is_dir():
                raise RuntimeError(f"VOICEFARM_COSYVOICE_SRC={src}: {path} is missing")
            if str(path) not in sys.path:
                sys.path.insert(0, str(path))
    _torchaudio_load_via_soundfile()
    import logging

    root_level = logging.getLogger().level
    from cosyvoice.cli.cosyvoice import AutoModel

    # Upstream calls logging.basicConfig(level=DEBUG) on import; keep the worker's level.
    logging.getLogger().setLevel(root_level)
    return AutoModel


def _torchaudio_load_via_soundfile() -> None:
    """torchaudio >= 2.9 sends `torchaudio.load` to torchcodec, which needs FFmpeg's shared
    libraries; where torchcodec is missing, read files with soundfile as torchaudio < 2.9 did
    (upstream's `load_wav` asks for backend='soundfile' anyway)."""
    try:
        import torchaudio
    except ImportError:
        return  # upstream's own import then says what is missing
    try:
        import torchcodec  # noqa: F401
    except Exception:
        if getattr(torchaudio.load, "__name__", "") != "_soundfile_load":
            torchaudio.load = _soundfile_load


def _soundfile_load(uri: Any, frame_offset: int = 0, num_frames: int = -1, **_: Any) -> Any:
    import soundfile
    import torch

    data, rate = soundfile.read(
        uri, dtype="float32", always_2d=True, start=frame_offset, frames=num_frames
    )
    return torch.from_numpy(np.ascontiguousarray(data.T)), rate


class CosyVoiceEngine(EngineBase):
    spec = BUILTIN["cosyvoice"]

    def __init__(self, settings: Settings) -> None:
        self.model_dir = settings.cosyvoice_model_dir
        self.src = settings.cosyvoice_src
        self.threads = settings.cosyvoice_threads
        self.max_loaded_voices = settings.cosyvoice_loaded_voices
        self.model: Any = None
        self.sample_rate = self.spec.sample_rate
        self.version = 0
        self.sft_speakers: list[str] = []
        self.fp16 = False
        self._revision: str | None = None
        self._eop_id: int | None = None
        # Prepared voices loaded into upstream's spk2info, least recently used first.
        self._loaded: OrderedDict[str, None] = OrderedDict()
        # Upstream's model is not thread-safe (per-instance token hop, caches): one call at a time.
        self._lock = threading.Lock()

    # -- loading ---------------------------------------------------------------------------

    def load(self, device: str, dtype: str) -> None:
        # A directory that does not exist makes upstream try a ModelScope download: refuse.
        if self.model_dir is None or not Path(self.model_dir).is_dir():
            raise RuntimeError(
                f"VOICEFARM_COSYVOICE_MODEL_DIR={self.model_dir} is not a model directory"
            )
        auto_model = _import_upstream(self.src)
        import torch

        threads = self.threads or (1 if (os.cpu_count() or 1) <= 4 else None)
        if threads:
            torch.set_num_threads(threads)
        fp16 = device == "cuda" and dtype == "fp16"
        self.model = auto_model(model_dir=str(self.model_dir), fp16=fp16)
        name = type(self.model).__name__
        if name not in ("CosyVoice2", "CosyVoice3"):
            raise RuntimeError(f"{self.model_dir} holds a {name} model; voicefarm serves 2 and 3")
        self.version = 3 if name == "CosyVoice3" else 2
        self.sample_rate = int(self.model.sample_rate)
        self.fp16 = bool(self.model.model.fp16)  # upstream turns it off without CUDA
        frontend = self.model.frontend
        ids = frontend.tokenizer.encode(END_OF_PROMPT, allowed_special=frontend.allowed_special)
        self._eop_id = ids[0] if len(ids) == 1 else None
        self.sft_speakers = [s for s, info in frontend.spk2info.items() if "embedding" in info]
        self._revision = model_revision(Path(self.model_dir))

    @property
    def revision(self) -> str:
        if self._revision is None:
            if self.model_dir is None or not Path(self.model_dir).is_dir():
                raise RuntimeError("CosyVoiceEngine has no model directory")
            self._revision = model_revision(Path(self.model_dir))
        return self._revision

    def _require_model(self) -> Any:
        if self.model is None:
            raise RuntimeError("CosyVoiceEngine.load() was not called")
        return self.model

    # -- voices ----------------------------------------------------------------------------

    def prompt_text(self, transcript: str) -> str:
        """The LLM prompt for a voice: its transcript, normalised as `inference_zero_shot`
        normalises a prompt; CosyVoice 3 wants the system line and `<|endofprompt|>` first."""
        model = self._require_model()
        text = strip_special_tokens(transcript)
        if not text:
            raise RequestRejected("the voice's transcript is empty")
        text = model.frontend.text_normalize(text, split=False, text_frontend=not _has_markup(text))
        return f"{CV3_SYSTEM}{END_OF_PROMPT}{text}" if self.version == 3 else text

    def prepare_voice(self, prompt: VoicePrompt) -> bytes:
        import torch

        model = self._require_model()
        if prompt.sample_rate < 16000:
            raise RequestRejected(f"prompt audio at {prompt.sample_rate} Hz; 16000 Hz or more")
        with self._lock, tempfile.TemporaryDirectory(prefix="voicefarm-prompt-") as tmp:
            text = self.prompt_text(prompt.transcript)
            # Upstream's frontend reads the prompt three times (16 kHz tokens and embedding,
            # 24 kHz features) through `load_wav`, which takes a file.
            wav = Path(tmp) / "prompt.wav"
            _write_wav(wav, prompt.samples, prompt.sample_rate)
            feats = model.frontend.frontend_zero_shot("", text, str(wav), self.sample_rate, "")
        feats.pop("text")
        feats.pop("text_len")
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in feats.items()}, buf)
        return buf.getvalue()

    def _use_voice(self, key: str, data: bytes) -> dict[str, Any]:
        """The voice's features in upstream's spk2info (once per key, LRU-bounded)."""
        import torch

        spk2info = self.model.frontend.spk2info
        if key in self._loaded and key in spk2info:
            self._loaded.move_to_end(key)
            return dict(spk2info[key])
        try:
            feats = torch.load(
                io.BytesIO(data), map_location=self.model.frontend.device, weights_only=True
            )
        except Exception as exc:
            raise RequestRejected(f"prepared voice {key!r} is unreadable: {exc}") from exc
        spk2info[key] = feats
        self._loaded[key] = None
        while len(self._loaded) > self.max_loaded_voices:
            old, _ = self._loaded.popitem(last=False)
            spk2info.pop(old, None)
        return dict(feats)

    # -- synthesis -------------------------------------------------------------------------

    def synthesize(self, batch: list[SegmentRequest]) -> list[Audio]:
        self._require_model()
        with self._lock:
            return [self._guarded(req) for req in batch]

    def _guarded(self, req: SegmentRequest) -> Audio:
        samples = self._run(req)
        if self.fp16 and _bad(samples):
            FP16_FALLBACKS.labels(self.name).inc()
            with self._fp32():
                samples = self._run(req)
        samples = np.nan_to_num(samples, nan=0.0, posinf=0.0, neginf=0.0)
        return Audio(np.clip(samples, -1.0, 1.0).astype(np.float32), self.sample_rate)

    @contextmanager
    def _fp32(self) -> Iterator[None]:
        # Upstream applies fp16 as autocast around the LLM and flow, switched by `model.fp16`
        # at every call (the weights stay fp32): turning it off runs the same weights in fp32.
        inner = self.model.model
        inner.fp16 = False
        try:
            yield
        finally:
            inner.fp16 = self.fp16

    def _run(self, req: SegmentRequest) -> np.ndarray:
        text = strip_special_tokens(req.text)
        if not text:
            return np.zeros(0, dtype=np.float32)
        frontend = _has_markup(text) is False
        kw: dict[str, Any] = {"stream": False, "speed": req.speed}
        m = self.model
        prompt = req.prompt
        if req.mode == "instruct":
            if prompt is None:
                raise RequestRejected("instruct on cosyvoice needs a voice to instruct")
            return _join(self._instruct(text, req.instruction or "", prompt.key, prompt.data, kw))
        if prompt is None:
            # A fresh CosyVoice 2/3 model has no speakers; only SFT speakers of the model dir.
            if req.mode == "preset" and req.voice in self.sft_speakers:
                return _join(self._sft(text, req.voice, frontend, kw))
            named = f"{req.voice!r} is not a speaker of this model; " if req.voice else ""
            raise RequestRejected(
                f"cosyvoice mode {req.mode!r} needs a voice: {named}give a voice_id, or set the "
                "farm's default voice; this model directory has "
                + (f"the SFT speakers {self.sft_speakers}" if self.sft_speakers else "no speakers")
            )
        feats = self._use_voice(prompt.key, prompt.data)
        if req.mode in ("preset", "clone"):
            # upstream's add_zero_shot_spk path: the prompt transcript stays the LLM prompt.
            self._check_endofprompt(feats["prompt_text"], text)
            return _join(
                m.inference_zero_shot(
                    text, "", "", zero_shot_spk_id=prompt.key, text_frontend=frontend, **kw
                )
            )
        if req.mode == "cross_lingual":
            return _join(self._cross_lingual(text, prompt.key, frontend, kw))
        raise RequestRejected(f"cosyvoice has no mode {req.mode!r}")

    def _segments(self, text: str, frontend: bool) -> list[str]:
        return list(self.model.frontend.text_normalize(text, split=True, text_frontend=frontend))

    def _spoken_segments(self, text: str, frontend: bool) -> list[str]:
        """CosyVoice 3 asserts `<|endofprompt|>` in the spoken text of cross-lingual and SFT
        calls: the system line goes before each normalised segment (text holding `<|...|>` is
        neither normalised nor split by upstream, so prefixing the whole text would make one
        unnormalised chunk). Checked for every segment before the first call."""
        segments = self._segments(text, frontend)
        if self.version == 3:
            segments = [f"{CV3_SYSTEM}{END_OF_PROMPT}{s}" for s in segments]
        for segment in segments:
            self._check_endofprompt(None, segment)
        return segments

    def _cross_lingual(
        self, text: str, key: str, frontend: bool, kw: dict[str, Any]
    ) -> Iterator[Any]:
        for spoken in self._spoken_segments(text, frontend):
            yield from self.model.inference_cross_lingual(
                spoken, "", zero_shot_spk_id=key, text_frontend=False, **kw
            )

    def _sft(self, text: str, speaker: str, frontend: bool, kw: dict[str, Any]) -> Iterator[Any]:
        for spoken in self._spoken_segments(text, frontend):
            yield from self.model.inference_sft(spoken, speaker, text_frontend=False, **kw)

    def instruct_text(self, instruction: str) -> str:
        """CosyVoice 2 wants `<instruction><|endofprompt|>`; CosyVoice 3 the system line too."""
        clean = strip_special_tokens(instruction)
        if not clean:
            raise RequestRejected("instruct mode needs an instruction")
        if self.version == 3:
            return f"{CV3_SYSTEM} {clean}{END_OF_PROMPT}"
        return f"{clean}{END_OF_PROMPT}"

    def _instruct(
        self, text: str, instruction: str, key: str, data: bytes, kw: dict[str, Any]
    ) -> Iterator[Any]:
        """`inference_instruct2` on the voice's cached features, without the speaker-id path
        that drops the instruction: the features stand in for the prompt recording, the
        instruction is the LLM prompt, and the LLM gets no prompt speech tokens."""
        frontend = self.model.frontend
        instruct = self.instruct_text(instruction)
        prompt_text, prompt_text_len = frontend._extract_text_token(instruct)
        feats = self._use_voice(key, data)
        feats.pop("llm_prompt_speech_token", None)
        feats.pop("llm_prompt_speech_token_len", None)
        plain = not _has_markup(text)
        inputs = []
        for segment in self._segments(text, plain):
            tokens, tokens_len = frontend._extract_text_token(segment)
            self._check_endofprompt(prompt_text, segment)
            inputs.append(
                {
                    **feats,
                    "prompt_text": prompt_text,
                    "prompt_text_len": prompt_text_len,
                    "text": tokens,
                    "text_len": tokens_len,
                }
            )
        for model_input in inputs:
            yield from self.model.model.tts(**model_input, **kw)

    def _check_endofprompt(self, prompt_tokens: Any, text: str) -> None:
        """CosyVoice 3 asserts `<|endofprompt|>` in the LLM input, inside a worker thread where
        a streamed call then hangs: refuse the request before any model call instead."""
        if self.version != 3:
            return
        in_prompt = prompt_tokens is not None and self._eop_id in prompt_tokens.flatten().tolist()
        if not (in_prompt or END_OF_PROMPT in text):
            raise RequestRejected(
                "CosyVoice 3 needs <|endofprompt|> in the prompt or the text; this voice was "
                "prepared without it (prepared for another model version?)"
            )


def _write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    pcm = np.clip(np.asarray(samples, dtype=np.float32).reshape(-1), -1.0, 1.0)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((pcm * 32767).astype("<i2").tobytes())


def _join(outputs: Iterable[dict[str, Any]]) -> np.ndarray:
    chunks = [o["tts_speech"].float().cpu().numpy().reshape(-1) for o in outputs]
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


def _bad(samples: np.ndarray) -> bool:
    """A broken fp16 result: NaN or infinite samples, or audio that is all silence."""
    if samples.size == 0:
        return False  # no speech asked for ('...'): the worker fails silent jobs itself
    return not np.isfinite(samples).all() or float(np.abs(samples).max()) < SILENCE_PEAK

"""The engine protocol every TTS engine implements, and the request/response it works with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from core.engines import EngineSpec
from core.errors import RequestRejected

__all__ = [
    "Audio",
    "Engine",
    "EngineBase",
    "PreparedVoice",
    "RequestRejected",
    "SegmentRequest",
    "VoicePrompt",
]


@dataclass(frozen=True)
class VoicePrompt:
    """A cloned voice as the worker hands it to `Engine.prepare_voice`: the prompt recording
    (mono float32, silence trimmed, at 16 kHz or more) and what it says."""

    voice_id: str
    revision: int
    transcript: str
    language: str | None
    audio_sha256: str
    samples: np.ndarray
    sample_rate: int


@dataclass(frozen=True)
class PreparedVoice:
    """What `Engine.prepare_voice` made of a VoicePrompt: opaque bytes the worker caches (Redis,
    then storage) under `key`, unique per (engine, model revision, audio sha256, transcript)."""

    key: str
    data: bytes
    voice_id: str
    transcript: str
    language: str | None = None


@dataclass(frozen=True)
class SegmentRequest:
    text: str
    # Preset modes: a voice name the engine resolves itself (Piper's voice, an SFT speaker).
    voice: str | None
    speed: float = 1.0
    # Engine-defined extras.
    options: dict[str, Any] | None = None
    # `preset`, `clone`, `cross_lingual` or `instruct` (see EngineSpec.modes).
    mode: str = "preset"
    # The cloned voice to speak with (clone, cross_lingual, and instruct on engines that need
    # a voice to instruct).
    prompt: PreparedVoice | None = None
    # A natural-language style instruction ("用四川话说这句话"), as the client wrote it.
    instruction: str | None = None
    # ISO 639-1 language of `text` where the client said so (cross-lingual cloning).
    language: str | None = None


@dataclass(frozen=True)
class Audio:
    """Mono float32 samples in [-1, 1]."""

    samples: np.ndarray
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


@runtime_checkable
class Engine(Protocol):
    spec: EngineSpec

    @property
    def name(self) -> str: ...

    def load(self, device: str, dtype: str) -> None:
        """Load weights onto `device` ("cpu", "cuda") in `dtype` ("fp32", "fp16")."""

    @property
    def revision(self) -> str:
        """Identifies the loaded model's weights: prepared prompts are cached per revision."""

    def prepare_voice(self, prompt: VoicePrompt) -> bytes:
        """Turn a voice's prompt into the engine's own serialized features (cloning engines).
        Runs once per (engine, revision, audio, transcript); the worker caches the bytes."""

    def synthesize(self, batch: list[SegmentRequest]) -> list[Audio]:
        """One Audio per request, same order."""


class EngineBase:
    """Shared defaults for engines that don't clone voices."""

    spec: EngineSpec
    # How many requests one `synthesize` call runs together (cross-job micro-batching,
    # tasks/batch.py); 1: the engine takes them one by one and the worker never batches it.
    # Engines without the attribute count as 1.
    max_batch: int = 1

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def revision(self) -> str:
        return "1"

    def prepare_voice(self, prompt: VoicePrompt) -> bytes:
        raise RequestRejected(f"engine {self.name!r} cannot clone voices")

"""The engine protocol every TTS engine implements, and the request/response it works with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from core.engines import EngineSpec
from core.errors import RequestRejected

__all__ = ["Audio", "Engine", "EngineBase", "RequestRejected", "SegmentRequest"]


@dataclass(frozen=True)
class SegmentRequest:
    text: str
    voice: str | None
    speed: float = 1.0
    # Mode-specific extras: prompt transcript, instruction, language... (engine-defined)
    options: dict[str, Any] | None = None


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

    def prepare_voice(self, audio: bytes, transcript: str | None) -> dict[str, Any]:
        """Turn reference audio into a serializable prompt (cloning engines)."""

    def synthesize(self, batch: list[SegmentRequest]) -> list[Audio]:
        """One Audio per request, same order."""


class EngineBase:
    """Shared defaults for engines that don't clone voices."""

    spec: EngineSpec

    @property
    def name(self) -> str:
        return self.spec.name

    def prepare_voice(self, audio: bytes, transcript: str | None) -> dict[str, Any]:
        raise NotImplementedError(f"engine {self.name!r} cannot clone voices")

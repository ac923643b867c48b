"""Speaker embeddings from resemblyzer's VoiceEncoder (weights shipped in the package, CPU), and
the cosine similarity of two of them. The encoder is loaded once per process, on first use."""

from __future__ import annotations

import threading
import warnings
from functools import cache
from typing import Any

import numpy as np

from workers.audio import resample
from workers.engines.base import Audio

ENCODER_RATE = 16_000
EMBEDDING_DIM = 256
_LOAD = threading.Lock()


@cache
def _encoder() -> Any:
    # resemblyzer imports deprecated scipy and pkg_resources names: quiet, not errors.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from resemblyzer import VoiceEncoder

        return VoiceEncoder("cpu", verbose=False)


def encoder() -> Any:
    # The ops worker runs tasks in threads: one load, whichever thread comes first.
    with _LOAD:
        return _encoder()


def _preprocess(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """16 kHz, volume normalised, long pauses shortened (resemblyzer's own preprocessing)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from resemblyzer.audio import normalize_volume, trim_long_silences
        from resemblyzer.hparams import audio_norm_target_dBFS

    wav = resample(Audio(np.asarray(samples, dtype=np.float32), sample_rate), ENCODER_RATE).samples
    wav = normalize_volume(wav, audio_norm_target_dBFS, increase_only=True)
    wav = np.clip(wav, -1.0, 1.0)
    trimmed = trim_long_silences(wav)
    # Voice activity detection may leave almost nothing of a short or noisy clip: keep it all.
    return np.asarray(trimmed if len(trimmed) >= ENCODER_RATE // 2 else wav, dtype=np.float32)


def embed(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """The L2-normalised 256-float speaker embedding of mono `samples`."""
    if len(samples) == 0:
        raise ValueError("no samples to embed")
    wav = _preprocess(samples, sample_rate)
    vector = np.asarray(encoder().embed_utterance(wav), dtype=np.float32)
    return _unit(vector)


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32).ravel()
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError("embedding has no direction")
    return vector / norm


def similarity(a: np.ndarray | list[float], b: np.ndarray | list[float]) -> float:
    """Cosine similarity of two embeddings (each L2-normalised here), in [-1, 1]."""
    va, vb = _unit(np.asarray(a)), _unit(np.asarray(b))
    if va.shape != vb.shape:
        raise ValueError(f"embeddings differ in size: {va.shape} and {vb.shape}")
    return float(np.clip(np.dot(va, vb), -1.0, 1.0))

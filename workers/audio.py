"""Audio post-processing: join segments, resample, encode WAV, describe the result."""

from __future__ import annotations

import hashlib
import io
import wave
from dataclasses import dataclass

import numpy as np

from workers.engines.base import Audio

SUPPORTED_SAMPLE_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
SEGMENT_GAP_S = 0.12


def join(parts: list[Audio], gap_s: float = SEGMENT_GAP_S) -> Audio:
    """Concatenate segment audio with a short pause between sentences."""
    if not parts:
        raise ValueError("nothing to join")
    rate = parts[0].sample_rate
    gap = np.zeros(int(rate * gap_s), dtype=np.float32)
    chunks: list[np.ndarray] = []
    for i, part in enumerate(parts):
        if part.sample_rate != rate:
            part = resample(part, rate)
        if i:
            chunks.append(gap)
        chunks.append(part.samples.astype(np.float32))
    return Audio(np.concatenate(chunks), rate)


def resample(audio: Audio, rate: int) -> Audio:
    """Band-limited resampling through the FFT: exact below both Nyquist limits, no aliasing."""
    if audio.sample_rate == rate or len(audio.samples) == 0:
        return Audio(audio.samples, rate)
    n_out = max(1, round(len(audio.samples) * rate / audio.sample_rate))
    spectrum = np.fft.rfft(audio.samples.astype(np.float64))
    keep = n_out // 2 + 1
    if keep <= len(spectrum):
        spectrum = spectrum[:keep]
    else:
        spectrum = np.concatenate([spectrum, np.zeros(keep - len(spectrum), dtype=complex)])
    out = np.fft.irfft(spectrum, n=n_out) * (n_out / len(audio.samples))
    return Audio(np.clip(out, -1.0, 1.0).astype(np.float32), rate)


def encode_wav(audio: Audio) -> bytes:
    """16-bit PCM mono WAV."""
    pcm = (np.clip(audio.samples, -1.0, 1.0) * 32767.0).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(audio.sample_rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


@dataclass(frozen=True)
class Encoded:
    data: bytes
    format: str
    content_type: str
    sample_rate: int
    duration_s: float
    sha256: str


def encode(audio: Audio, fmt: str) -> Encoded:
    if fmt != "wav":
        raise ValueError(f"format {fmt!r} is not supported")
    data = encode_wav(audio)
    return Encoded(
        data=data,
        format="wav",
        content_type="audio/wav",
        sample_rate=audio.sample_rate,
        duration_s=round(audio.duration_s, 3),
        sha256=hashlib.sha256(data).hexdigest(),
    )

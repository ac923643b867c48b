"""Audio post-processing: join segments, resample, encode WAV (in memory or streamed to a file),
describe the result."""

from __future__ import annotations

import hashlib
import io
import math
import os
import tempfile
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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


class Resampler:
    """Band-limited rational resampling (Kaiser-windowed sinc, polyphase) in fixed-size blocks.

    Memory is a few MiB whatever the length; an FFT of each segment would also cache one plan per
    distinct length inside numpy, which grows the process by tens of MiB on long jobs.
    """

    ZERO_CROSSINGS = 16
    ROLLOFF = 0.945  # cutoff, as a fraction of the lower Nyquist frequency
    KAISER_BETA = 8.6
    BLOCK = 8192  # output samples per step

    def __init__(self, rate_in: int, rate_out: int) -> None:
        g = math.gcd(rate_in, rate_out)
        self.up, self.down = rate_out // g, rate_in // g
        cutoff = self.ROLLOFF * min(1.0, self.up / self.down)  # of the input Nyquist
        self.half = math.ceil(self.ZERO_CROSSINGS / cutoff)  # taps each side, input samples
        self.offsets = np.arange(-self.half + 1, self.half + 1)
        # Output k sits at input time k*down/up; its fractional part repeats every `up` outputs.
        phases = (np.arange(self.up) * self.down % self.up) / self.up
        x = phases[:, None] - self.offsets[None, :]
        taper = np.sqrt(np.clip(1.0 - (x / self.half) ** 2, 0.0, None))
        table = cutoff * np.sinc(cutoff * x) * np.i0(self.KAISER_BETA * taper)
        self.table = (table / table.sum(axis=1, keepdims=True)).astype(np.float32)

    def output_length(self, n: int) -> int:
        return max(1, round(n * self.up / self.down)) if n else 0

    def blocks(self, samples: np.ndarray) -> Iterator[np.ndarray]:
        """The resampled signal, block by block (silence assumed before and after it)."""
        n_out = self.output_length(len(samples))
        pad = np.zeros(self.half + 1, dtype=np.float32)
        padded = np.concatenate([pad, samples.astype(np.float32, copy=False), pad])
        for start in range(0, n_out, self.BLOCK):
            k = np.arange(start, min(start + self.BLOCK, n_out))
            idx = ((k * self.down) // self.up + self.half + 1)[:, None] + self.offsets[None, :]
            yield np.einsum("ij,ij->i", padded[idx], self.table[k % self.up])


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


# Below -60 dBFS at its loudest, or -80 dBFS on average: nothing a listener would hear.
SILENCE_PEAK = 1e-3
SILENCE_RMS = 1e-4


@dataclass(frozen=True)
class EncodedFile:
    """A finished audio file on disk, described the way the job row records it."""

    path: Path
    format: str
    content_type: str
    sample_rate: int
    duration_s: float
    bytes: int
    sha256: str


class WavFileWriter:
    """16-bit PCM mono WAV written to disk part by part, so memory stays one segment deep.

    Each part is resampled on its own (`Resampler`, block by block) and separated from the
    previous one by a silent gap, as `join` does. Loudness is tracked as parts arrive, so a job
    whose audio is empty or silent is caught without reading the file back. The WAV header's
    sizes are patched when the file is finished.
    """

    def __init__(self, path: Path, sample_rate: int | None = None, gap_s: float = SEGMENT_GAP_S):
        self.path = path
        self.sample_rate = sample_rate  # None: the first part's rate
        self.gap_s = gap_s
        self.frames = 0
        self.parts = 0
        self.peak = 0.0
        self._sum_squares = 0.0
        self._file = path.open("wb")
        self._wav: wave.Wave_write | None = None
        self._resamplers: dict[int, Resampler] = {}

    @classmethod
    def temporary(cls, fmt: str, sample_rate: int | None = None) -> WavFileWriter:
        """A writer on a new file in the temporary folder ($TMPDIR); closing it removes it."""
        if fmt != "wav":
            raise ValueError(f"format {fmt!r} is not supported")
        fd, name = tempfile.mkstemp(prefix="voicefarm-", suffix=".wav")
        os.close(fd)
        return cls(Path(name), sample_rate)

    def __enter__(self) -> WavFileWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    def _open(self, rate: int) -> wave.Wave_write:
        if self._wav is None:
            self.sample_rate = rate
            self._wav = wave.open(self._file, "wb")  # noqa: SIM115 (closed in close())
            self._wav.setnchannels(1)
            self._wav.setsampwidth(2)
            self._wav.setframerate(rate)
        return self._wav

    def add(self, part: Audio) -> None:
        wav = self._open(self.sample_rate or part.sample_rate)
        rate = wav.getframerate()
        if self.parts:
            gap = int(rate * self.gap_s)
            wav.writeframesraw(bytes(2 * gap))
            self.frames += gap
        self.parts += 1
        samples = part.samples.astype(np.float32, copy=False)
        if part.sample_rate == rate:
            self._write(wav, samples)
        else:
            if part.sample_rate not in self._resamplers:
                self._resamplers[part.sample_rate] = Resampler(part.sample_rate, rate)
            for block in self._resamplers[part.sample_rate].blocks(samples):
                self._write(wav, block)

    def _write(self, wav: wave.Wave_write, samples: np.ndarray) -> None:
        if not len(samples):
            return
        self.peak = max(self.peak, float(np.max(np.abs(samples))))
        wide = samples.astype(np.float64)
        self._sum_squares += float(np.dot(wide, wide))
        # The same conversion as `encode_wav`, so both write identical bytes for the same audio.
        wav.writeframesraw((np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes())
        self.frames += len(samples)

    def add_all(self, parts: list[Audio]) -> None:
        for part in parts:
            self.add(part)

    @property
    def rms(self) -> float:
        return (self._sum_squares / self.frames) ** 0.5 if self.frames else 0.0

    def silence(self) -> str | None:
        """Why the audio so far is not worth storing (empty or silent), or None."""
        if not self.frames:
            return f"the engine returned no audio ({self.parts} parts, 0 samples)"
        if self.peak < SILENCE_PEAK or self.rms < SILENCE_RMS:
            return (
                f"the engine returned silence: {self.frames} samples, peak {self.peak:.2e}, "
                f"RMS {self.rms:.2e} (thresholds {SILENCE_PEAK:g} and {SILENCE_RMS:g})"
            )
        return None

    def close(self) -> None:
        try:
            if self._wav is not None:
                self._wav.close()  # patches the header's sizes
        finally:
            self._wav = None
            self._file.close()

    def finish(self) -> EncodedFile:
        """Close the file and describe it. Its hash needs the final header, so it is one
        streaming read of the finished file (from the page cache), never the file in memory."""
        if self._wav is None or self.sample_rate is None:
            raise ValueError("nothing to encode")
        rate = self.sample_rate
        self.close()
        digest = hashlib.sha256()
        size = 0
        with self.path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
                size += len(block)
        return EncodedFile(
            path=self.path,
            format="wav",
            content_type="audio/wav",
            sample_rate=rate,
            duration_s=round(self.frames / rate, 3),
            bytes=size,
            sha256=digest.hexdigest(),
        )

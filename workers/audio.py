"""Audio post-processing: join segments, resample, encode WAV in memory, or stream segments to a
temporary float WAV and transcode it block by block into the job's format, loudness normalised
and described."""

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
from typing import Any

import numpy as np

from core.engines import AUDIO_FORMATS, BIT_DEPTHS, DEFAULT_BIT_DEPTH, content_type, opus_rate
from workers.engines.base import Audio
from workers.loudness import CEILING_DBFS, LoudnessMeter, limiter_gains

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
# A sample this close to full scale counts as clipped (the engine's float output, before any gain).
CLIP_LEVEL = 0.999
# The silence ratio is the share of 20 ms frames quieter than -60 dBFS RMS.
SILENT_FRAME_S = 0.02
SILENT_FRAME_RMS = 1e-3
TRANSCODE_BLOCK = 1 << 16
# When the limiter takes loudness away, the gain is raised and the limit recomputed, at most this
# many times, until the output is within this much of the target.
LIMITER_PASSES = 4
LIMITER_TOLERANCE_LU = 0.2

# soundfile (libsndfile 1.2) container and subtype per format; wav and pcm are written directly.
_SOUNDFILE = {
    "flac": ("FLAC", None),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "ogg": ("OGG", "VORBIS"),
    "opus": ("OGG", "OPUS"),
}


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
    bit_depth: int | None = None


@dataclass(frozen=True)
class AudioStats:
    """What the writer measured while the audio streamed past (before any loudness gain)."""

    samples: int
    sample_rate: int
    peak: float
    rms: float
    nan_count: int
    clipped: int
    silent_frames: int
    frames_20ms: int
    loudness_lufs: float | None

    @property
    def duration_s(self) -> float:
        return self.samples / self.sample_rate if self.sample_rate else 0.0

    @property
    def silence_ratio(self) -> float:
        return self.silent_frames / self.frames_20ms if self.frames_20ms else 0.0

    @property
    def clipped_ratio(self) -> float:
        return self.clipped / self.samples if self.samples else 0.0


class _Frames:
    """One reduction (sum, max) per fixed-size frame of a stream, the remainder carried over."""

    def __init__(self, size: int, kind: str) -> None:
        self.size = max(1, size)
        self.kind = kind
        self._carry = np.zeros(0, dtype=np.float32)
        self._done: list[np.ndarray] = []

    def _reduce(self, x: np.ndarray) -> np.ndarray:
        out = x.max(axis=-1) if self.kind == "max" else x.sum(axis=-1)
        return np.asarray(out, dtype=np.float32)

    def add(self, x: np.ndarray) -> None:
        buf = np.concatenate([self._carry, x]) if len(self._carry) else x
        whole = len(buf) // self.size * self.size
        if whole:
            self._done.append(self._reduce(buf[:whole].reshape(-1, self.size)))
        self._carry = buf[whole:].copy()

    def values(self) -> np.ndarray:
        """Every frame's value, the last (partial) frame included."""
        tail = [self._reduce(self._carry)[None]] if len(self._carry) else []
        return np.concatenate([*self._done, *tail]) if self._done or tail else np.zeros(0)


class _Sink:
    """The output file of one format, fed float blocks in [-1, 1]."""

    def __init__(self, path: Path, fmt: str, rate: int, bit_depth: int | None) -> None:
        import soundfile

        self.fmt, self.bit_depth = fmt, bit_depth
        self._file = path.open("wb") if fmt in ("wav", "pcm") else None
        self._wav: wave.Wave_write | None = None
        self._sf: soundfile.SoundFile | None = None
        if fmt == "wav":
            assert self._file is not None
            self._wav = wave.open(self._file, "wb")  # noqa: SIM115 (closed in close())
            self._wav.setnchannels(1)
            self._wav.setsampwidth((bit_depth or DEFAULT_BIT_DEPTH) // 8)
            self._wav.setframerate(rate)
        elif fmt != "pcm":
            container, subtype = _SOUNDFILE[fmt]
            if fmt == "flac":
                subtype = f"PCM_{bit_depth or DEFAULT_BIT_DEPTH}"
            self._sf = soundfile.SoundFile(
                str(path), "w", samplerate=rate, channels=1, format=container, subtype=subtype
            )

    def write(self, y: np.ndarray) -> None:
        if self._sf is not None:
            if self.fmt == "flac":  # integers, so the rounding is ours (as for wav and pcm)
                pcm = _pcm(y, self.bit_depth or DEFAULT_BIT_DEPTH)
                self._sf.write(pcm.astype(np.int32) << 8 if pcm.dtype != np.int16 else pcm)
            else:
                self._sf.write(y)
            return
        raw = _pcm_bytes(y, self.bit_depth or DEFAULT_BIT_DEPTH)
        if self._wav is not None:
            self._wav.writeframesraw(raw)
        elif self._file is not None:
            self._file.write(raw)

    def close(self) -> None:
        try:
            if self._wav is not None:
                self._wav.close()  # patches the header's sizes
            if self._sf is not None:
                self._sf.close()
        finally:
            if self._file is not None:
                self._file.close()


def _pcm(y: np.ndarray, bit_depth: int) -> np.ndarray:
    """Signed integers of `bit_depth` bits (in int16 or int32), truncated as `encode_wav` does."""
    if bit_depth == 16:
        return (y * 32767.0).astype("<i2")
    return (y.astype(np.float64) * 8388607.0).astype("<i4")


def _pcm_bytes(y: np.ndarray, bit_depth: int) -> bytes:
    pcm = _pcm(y, bit_depth)
    if bit_depth == 16:
        return pcm.tobytes()
    return pcm.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()  # little-endian: low 3 bytes


class WavFileWriter:
    """The job's audio streamed to a temporary float WAV part by part, then transcoded block by
    block into the requested format, so memory stays one segment (or one block) deep.

    Each part is resampled on its own (`Resampler`, block by block) and separated from the
    previous one by a silent gap, as `join` does. Loudness, peaks, clipping, non-finite samples
    and silent frames are measured as parts arrive, so an empty, silent or broken result is
    caught without reading the file back. `finish` transcodes, normalising loudness to
    `loudness` LUFS first when asked (a gain, then a peak limiter holding -1 dBFS).
    """

    def __init__(
        self,
        path: Path,
        sample_rate: int | None = None,
        gap_s: float = SEGMENT_GAP_S,
        *,
        fmt: str = "wav",
        bit_depth: int | None = None,
        loudness: float | None = None,
    ):
        if fmt not in AUDIO_FORMATS:
            raise ValueError(f"format {fmt!r} is not supported")
        if bit_depth is not None and bit_depth not in BIT_DEPTHS.get(fmt, ()):
            raise ValueError(f"bit depth {bit_depth} is not offered for {fmt}")
        self.path = path
        self.fmt = fmt
        self.bit_depth = (bit_depth or DEFAULT_BIT_DEPTH) if fmt in BIT_DEPTHS else None
        self.loudness = loudness
        self.sample_rate = sample_rate  # None: the first part's rate
        self.gap_s = gap_s
        self.frames = 0
        self.parts = 0
        self.peak = 0.0
        self.nan_count = 0
        self.clipped = 0
        self.output: Path | None = None
        self.loudness_before: float | None = None
        self.loudness_after: float | None = None
        self.output_peak = 0.0
        self._sum_squares = 0.0
        self._sf: Any = None
        self._opened = False
        self._resamplers: dict[int, Resampler] = {}
        self._meter: LoudnessMeter | None = None
        self._power = _Frames(1, "sum")
        self._peaks = _Frames(1, "max")

    @classmethod
    def temporary(
        cls,
        fmt: str,
        sample_rate: int | None = None,
        *,
        bit_depth: int | None = None,
        loudness: float | None = None,
    ) -> WavFileWriter:
        """A writer on a new file in the temporary folder ($TMPDIR); closing it removes it and
        its output."""
        if fmt not in AUDIO_FORMATS:
            raise ValueError(f"format {fmt!r} is not supported")
        fd, name = tempfile.mkstemp(prefix="voicefarm-", suffix=".wav")
        os.close(fd)
        return cls(Path(name), sample_rate, fmt=fmt, bit_depth=bit_depth, loudness=loudness)

    def __enter__(self) -> WavFileWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
        if self.output is not None:
            self.output.unlink(missing_ok=True)

    def _open(self, rate: int) -> int:
        if not self._opened:
            import soundfile

            if self.fmt == "opus":
                rate = opus_rate(rate)
            self.sample_rate = rate
            self._sf = soundfile.SoundFile(
                str(self.path), "w", samplerate=rate, channels=1, format="WAV", subtype="FLOAT"
            )
            self._opened = True
            self._meter = LoudnessMeter(rate)
            self._power = _Frames(round(rate * SILENT_FRAME_S), "sum")
            self._peaks = _Frames(rate // 1000, "max")
        assert self.sample_rate is not None
        return self.sample_rate

    def add(self, part: Audio) -> None:
        rate = self._open(self.sample_rate or part.sample_rate)
        if self.parts:
            self._write(np.zeros(int(rate * self.gap_s), dtype=np.float32))
        self.parts += 1
        samples = part.samples.astype(np.float32, copy=False)
        if part.sample_rate == rate:
            self._write(samples)
        else:
            if part.sample_rate not in self._resamplers:
                self._resamplers[part.sample_rate] = Resampler(part.sample_rate, rate)
            for block in self._resamplers[part.sample_rate].blocks(samples):
                self._write(block.astype(np.float32))

    def _write(self, samples: np.ndarray) -> None:
        if not len(samples):
            return
        finite = np.isfinite(samples)
        if not finite.all():
            # NaN or infinite samples (an fp16 overflow): counted, then written as silence so
            # nothing downstream (peak, loudness, the file) is poisoned; the job fails on them.
            self.nan_count += int(len(samples) - np.count_nonzero(finite))
            samples = np.where(finite, samples, np.float32(0.0))
        magnitude = np.abs(samples)
        self.peak = max(self.peak, float(np.max(magnitude)))
        self.clipped += int(np.count_nonzero(magnitude >= CLIP_LEVEL))
        wide = samples.astype(np.float64)
        self._sum_squares += float(np.dot(wide, wide))
        assert self._meter is not None
        self._meter.add(samples)
        self._power.add(wide * wide)
        self._peaks.add(np.minimum(magnitude, 1.0))
        self._sf.write(samples)
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

    def stats(self) -> AudioStats:
        power = self._power.values()
        silent = int(np.count_nonzero(power / self._power.size < SILENT_FRAME_RMS**2))
        if self.loudness_before is None and self._meter is not None:
            self.loudness_before = self._meter.integrated()
        return AudioStats(
            samples=self.frames,
            sample_rate=self.sample_rate or 0,
            peak=self.peak,
            rms=self.rms,
            nan_count=self.nan_count,
            clipped=self.clipped,
            silent_frames=silent,
            frames_20ms=len(power),
            loudness_lufs=self.loudness_before,
        )

    def close(self) -> None:
        if self._sf is not None:
            self._sf.close()
            self._sf = None

    def finish(self) -> EncodedFile:
        """Close the temporary WAV and transcode it into the job's format (loudness normalised
        if asked), block by block, into a sibling file; describe that file. Its hash needs the
        final header, so it is one streaming read of the finished file (from the page cache)."""
        if not self._opened or self.sample_rate is None:
            raise ValueError("nothing to encode")
        rate = self.sample_rate
        self.close()
        before = self.stats().loudness_lufs
        peaks = self._peaks.values()
        edges = np.minimum(np.arange(len(peaks) + 1) * self._peaks.size, self.frames)
        gain, envelope = 1.0, None
        if self.loudness is not None and before is not None:
            gain = 10 ** ((self.loudness - before) / 20)
            for _ in range(LIMITER_PASSES):
                if not len(peaks) or float(peaks.max()) * gain <= 10 ** (CEILING_DBFS / 20):
                    envelope = None
                    break
                envelope = limiter_gains(peaks, gain, self._peaks.size, rate)
                # Limiting took loudness away: measure it (a read of the file, nothing
                # written) and make up the shortfall where the limiter leaves room.
                dry = LoudnessMeter(rate)
                self._transcode(rate, gain, edges, envelope, dry, write=False)
                short = self.loudness - (dry.integrated() or self.loudness)
                if short < LIMITER_TOLERANCE_LU:
                    break
                gain *= 10 ** (short / 20)
        self.output = self.path.with_name(f"{self.path.stem}-out.{self.fmt}")
        after = LoudnessMeter(rate)
        self._transcode(rate, gain, edges, envelope, after)
        self.loudness_after = after.integrated()
        digest = hashlib.sha256()
        size = 0
        with self.output.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
                size += len(block)
        return EncodedFile(
            path=self.output,
            format=self.fmt,
            content_type=content_type(self.fmt),
            sample_rate=rate,
            duration_s=round(self.frames / rate, 3),
            bytes=size,
            sha256=digest.hexdigest(),
            bit_depth=self.bit_depth,
        )

    def _transcode(
        self,
        rate: int,
        gain: float,
        edges: np.ndarray,
        envelope: np.ndarray | None,
        meter: LoudnessMeter,
        *,
        write: bool = True,
    ) -> None:
        import soundfile

        sink = None
        if write:
            assert self.output is not None
            sink = _Sink(self.output, self.fmt, rate, self.bit_depth)
        try:
            with soundfile.SoundFile(str(self.path), "r") as src:
                pos = 0
                for block in src.blocks(blocksize=TRANSCODE_BLOCK, dtype="float32"):
                    y = np.clip(block, -1.0, 1.0)
                    if gain != 1.0:
                        y = y * np.float32(gain)
                    if envelope is not None:
                        where = np.arange(pos, pos + len(y))
                        y = y * np.interp(where, edges, envelope).astype(np.float32)
                    pos += len(y)
                    meter.add(y)
                    if sink is None:
                        continue
                    if gain != 1.0:
                        self.output_peak = max(self.output_peak, float(np.max(np.abs(y))))
                    sink.write(np.clip(y, -1.0, 1.0))
        finally:
            if sink is not None:
                sink.close()
        if gain == 1.0 and write:
            self.output_peak = min(self.peak, 1.0)

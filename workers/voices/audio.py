"""Turn an uploaded recording into a voice prompt, or say exactly why not.

Decode (WAV, FLAC, Ogg), mix to mono, refuse what cannot make a good prompt, trim leading and
trailing silence (energy-based, 20 ms frames), and check the length of what remains."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from core.enums import VoiceErrorCode
from workers.audio import resample
from workers.engines.base import Audio

FORMATS = frozenset({"WAV", "WAVEX", "RF64", "FLAC", "OGG"})
MIN_SAMPLE_RATE = 16_000
MAX_SAMPLE_RATE = 48_000  # prompts above are resampled to this
# Longer input is refused before decoding: a few MB of compressed silence can decode to hours.
MAX_INPUT_SECONDS = 600.0
FRAME_S = 0.02
QUIET_DBFS = -40.0  # the loudest 20 ms of a usable recording is louder than this
SPEECH_BELOW_PEAK_DB = 40.0  # frames this far below the loudest one are silence
SILENCE_FLOOR_DBFS = -60.0
PAD_S = 0.1  # kept around the speech when trimming
CLIP_LEVEL = 0.999
CLIP_FRACTION = 0.01


class VoiceRejected(Exception):
    """The recording cannot make a prompt: a code (VoiceErrorCode) and a message for a person."""

    def __init__(self, code: VoiceErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Limits:
    min_seconds: float = 3.0
    max_seconds: float = 15.0


def decode(data: bytes) -> Audio:
    """Mono float32 samples and their rate; `audio_undecodable` for anything else."""
    try:
        info = sf.info(io.BytesIO(data))
    except Exception as exc:  # libsndfile's errors, RuntimeError, TypeError: all undecodable
        raise VoiceRejected(
            VoiceErrorCode.audio_undecodable,
            "the recording is not audio this farm can decode: send WAV, FLAC or Ogg",
        ) from exc
    if info.format not in FORMATS:
        raise VoiceRejected(
            VoiceErrorCode.audio_undecodable,
            f"{info.format_info or info.format} recordings are not accepted: send WAV, FLAC or Ogg",
        )
    if info.samplerate <= 0 or info.frames / info.samplerate > MAX_INPUT_SECONDS:
        raise VoiceRejected(
            VoiceErrorCode.too_long,
            f"the recording lasts {info.duration:.0f} s; a voice prompt is 3-15 s of speech",
        )
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:
        raise VoiceRejected(
            VoiceErrorCode.audio_undecodable, "the recording is damaged and cannot be decoded"
        ) from exc
    mono = samples.mean(axis=1, dtype=np.float32) if samples.size else np.zeros(0, np.float32)
    if not np.isfinite(mono).all():
        raise VoiceRejected(VoiceErrorCode.audio_undecodable, "the recording holds invalid samples")
    return Audio(mono, int(rate))


def frame_dbfs(samples: np.ndarray, rate: int) -> np.ndarray:
    """RMS level of each 20 ms frame, in dBFS (-inf for digital silence)."""
    n = max(1, int(rate * FRAME_S))
    frames = len(samples) // n
    if frames == 0:
        return np.full(1, -np.inf)
    blocks = samples[: frames * n].astype(np.float64).reshape(frames, n)
    rms = np.sqrt((blocks**2).mean(axis=1))
    with np.errstate(divide="ignore"):
        return np.asarray(20 * np.log10(rms))


def speech_bounds(samples: np.ndarray, rate: int) -> tuple[int, int, float]:
    """(start, end) sample indices of the speech, padded, and the loudest frame's level."""
    levels = frame_dbfs(samples, rate)
    loudest = float(levels.max())
    if loudest < QUIET_DBFS:
        return 0, 0, loudest
    threshold = max(loudest - SPEECH_BELOW_PEAK_DB, SILENCE_FLOOR_DBFS)
    voiced = np.flatnonzero(levels > threshold)
    n = max(1, int(rate * FRAME_S))
    pad = int(PAD_S * rate)
    start = max(0, int(voiced[0]) * n - pad)
    end = min(len(samples), (int(voiced[-1]) + 1) * n + pad)
    return start, end, loudest


def clipped_fraction(samples: np.ndarray) -> float:
    if len(samples) == 0:
        return 0.0
    return float((np.abs(samples) >= CLIP_LEVEL).mean())


def make_prompt(data: bytes, limits: Limits) -> Audio:
    """The prompt made from an uploaded recording, or VoiceRejected with the reason."""
    audio = decode(data)
    if audio.sample_rate < MIN_SAMPLE_RATE:
        raise VoiceRejected(
            VoiceErrorCode.sample_rate_too_low,
            f"the recording is sampled at {audio.sample_rate} Hz; record at 16 kHz or more",
        )
    start, end, loudest = speech_bounds(audio.samples, audio.sample_rate)
    if end <= start:
        shown = "silent" if not np.isfinite(loudest) else f"at most {loudest:.0f} dBFS"
        raise VoiceRejected(
            VoiceErrorCode.too_quiet,
            f"the recording is silent or too quiet ({shown}); speak closer to the microphone",
        )
    speech = audio.samples[start:end]
    fraction = clipped_fraction(speech)
    if fraction > CLIP_FRACTION:
        raise VoiceRejected(
            VoiceErrorCode.clipped,
            f"{fraction:.1%} of the speech is clipped at full scale; lower the recording gain",
        )
    seconds = len(speech) / audio.sample_rate
    if seconds < limits.min_seconds:
        raise VoiceRejected(
            VoiceErrorCode.too_short,
            f"the recording holds {seconds:.1f} s of speech after trimming silence; at least "
            f"{limits.min_seconds:g} s are needed",
        )
    if seconds > limits.max_seconds:
        raise VoiceRejected(
            VoiceErrorCode.too_long,
            f"the recording holds {seconds:.1f} s of speech after trimming silence; at most "
            f"{limits.max_seconds:g} s: upload a shorter excerpt with its own transcript",
        )
    prompt = Audio(np.ascontiguousarray(speech, dtype=np.float32), audio.sample_rate)
    if prompt.sample_rate > MAX_SAMPLE_RATE:
        prompt = resample(prompt, MAX_SAMPLE_RATE)
    return prompt

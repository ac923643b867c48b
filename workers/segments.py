"""Finished segments kept in storage while a job runs, so a later attempt resumes.

Each segment's audio is stored as 16-bit PCM WAV at the engine's rate under
`jobs/<tenant>/<job>/segments/<index>-<digest>.wav`. The digest covers the segment text and
every synthesis input of the job (engine, voice, mode, instruction, speed, language, cloned
voice), so a kept segment is reused only for exactly the audio it would be synthesized as.
Keeping is best effort: a segment that cannot be stored or read back is synthesized again.

The segment timings (`segments.json`) are counted here too, from the frames the job's
`WavFileWriter` actually wrote, so they match the final audio to the sample.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from core.storage import Storage, job_segments_prefix
from workers.audio import join
from workers.engines.base import Audio

if TYPE_CHECKING:
    from workers.audio import WavFileWriter

log = logging.getLogger("voicefarm.segments")


@dataclass(frozen=True)
class SynthesisInputs:
    """What, besides the text, decides a segment's audio."""

    engine: str
    voice: str | None
    mode: str
    instruction: str | None
    speed: float
    language: str | None
    voice_id: uuid.UUID | None

    def digest(self, text: str) -> str:
        raw = json.dumps(
            [
                text,
                self.engine,
                self.voice,
                self.mode,
                self.instruction,
                self.speed,
                self.language,
                None if self.voice_id is None else str(self.voice_id),
            ],
            ensure_ascii=False,
        )
        return hashlib.sha256(raw.encode()).hexdigest()[:24]


class SegmentStore:
    def __init__(
        self, storage: Storage, tenant_id: uuid.UUID, job_id: uuid.UUID, inputs: SynthesisInputs
    ) -> None:
        self.storage = storage
        self.prefix = job_segments_prefix(str(tenant_id), str(job_id))
        self.inputs = inputs

    def key(self, index: int, text: str) -> str:
        return f"{self.prefix}{index:05d}-{self.inputs.digest(text)}.wav"

    def kept(self, segments: list[str]) -> set[int]:
        """Indexes of the segments an earlier attempt stored for exactly these inputs."""
        try:
            present = {obj.key for obj in self.storage.list_keys(self.prefix)}
        except Exception:
            log.warning("event=jobs.segments_list_failed prefix=%s", self.prefix, exc_info=True)
            return set()
        return {i for i, text in enumerate(segments) if self.key(i, text) in present}

    def save(self, index: int, text: str, parts: list[Audio]) -> Audio | None:
        """The segment as one piece of audio (parts joined as the writer would), stored; None
        when the engine returned no parts at all."""
        if not parts:
            return None
        audio = parts[0] if len(parts) == 1 else join(parts)
        if not np.isfinite(audio.samples).all():
            # Not kept: a resumed attempt must meet the same NaN and fail the same way.
            return audio
        try:
            self.storage.put(self.key(index, text), encode_segment(audio), "audio/wav")
        except Exception:
            log.warning("event=jobs.segment_keep_failed index=%d", index, exc_info=True)
        return audio

    def load(self, index: int, text: str) -> Audio | None:
        try:
            return decode_segment(b"".join(self.storage.iter_bytes(self.key(index, text))))
        except Exception:
            log.warning("event=jobs.segment_read_failed index=%d", index, exc_info=True)
            return None

    def drop(self) -> int:
        """Remove every kept segment of the job (it ended); returns how many were removed."""
        removed = 0
        for obj in list(self.storage.list_keys(self.prefix)):
            self.storage.delete(obj.key)
            removed += 1
        return removed


def encode_segment(audio: Audio) -> bytes:
    """Float32 WAV: a kept segment comes back exactly as the engine made it, whatever the job's
    final bit depth or loudness processing."""
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, audio.samples.astype(np.float32), audio.sample_rate, "FLOAT", format="WAV")
    return buf.getvalue()


def decode_segment(data: bytes) -> Audio:
    import soundfile

    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    if samples.shape[1] != 1:
        raise ValueError("a kept segment is not mono")
    return Audio(np.ascontiguousarray(samples[:, 0]), int(rate))


@dataclass(frozen=True)
class Timing:
    index: int
    text: str
    start: float
    end: float


def add_timed(writer: WavFileWriter, index: int, text: str, audio: Audio | None) -> Timing:
    """Write one segment and say where it lies in the output: after the writer's gap, for as
    many frames as it wrote (resampled or not)."""
    before, had_parts = writer.frames, writer.parts > 0
    if audio is None:
        at = before / writer.sample_rate if writer.sample_rate else 0.0
        return Timing(index, text, at, at)
    writer.add(audio)
    rate = writer.sample_rate or audio.sample_rate
    gap = int(rate * writer.gap_s) if had_parts else 0
    return Timing(index, text, (before + gap) / rate, writer.frames / rate)


def timings_json(timings: list[Timing]) -> bytes:
    rows = [
        {"index": t.index, "text": t.text, "start": round(t.start, 6), "end": round(t.end, 6)}
        for t in timings
    ]
    return json.dumps(rows, ensure_ascii=False, indent=1).encode()

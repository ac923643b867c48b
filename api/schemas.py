"""Request and response bodies (they become the OpenAPI schema at /docs)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.enums import JobMode, JobStatus, Priority, VoiceStatus

MAX_METADATA_DEPTH = 32


def _depth(value: Any) -> int:
    """How deeply JSON objects and arrays nest in `value` (a scalar is 0), iteratively: the
    value may be nested deeper than Python's recursion limit."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level + 1)
            stack.extend((child, level + 1) for child in item)
    return deepest


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(
        ...,
        min_length=1,
        description="Text to speak. ARPAbet markup like `[M][AY0][N][UW1][T]` fixes English "
        "pronunciation; pinyin like `她[h][ào]干净` fixes Chinese polyphones (engines that "
        "support it).",
        examples=["Hello from voicefarm."],
    )
    engine: str | None = Field(None, description="Engine name; default from settings.")
    voice: str | None = Field(
        None, max_length=128, description="Voice name; default is the engine's default."
    )
    instruction: str | None = Field(
        None,
        description="Natural-language style instruction, e.g. `用兴奋的语气说这句话` or "
        "`用四川话说这句话` (engines with the `instruct` mode).",
    )
    format: str = Field(
        "wav",
        description="`wav`, `flac`, `mp3`, `ogg` (Vorbis), `opus` (Ogg Opus) or `pcm` (raw "
        "little-endian signed mono samples, no header). `GET /v1/engines` lists each engine's.",
    )
    sample_rate: int | None = Field(
        None,
        description="Resample the result to this rate (Hz). Opus takes 8000, 16000, 24000 or "
        "48000; without one it gets the engine's rate or the next Opus rate up.",
    )
    bit_depth: int | None = Field(
        None, description="16 (default) or 24, for `wav`, `flac` and `pcm` only."
    )
    loudness: float | None = Field(
        None,
        description="Normalise to this integrated loudness (LUFS, ITU-R BS.1770; -40 to -5, "
        "e.g. -16 for streaming, -23 for EBU R128 broadcast); peaks are then held at -1 dBFS. "
        "Measured loudness is recorded in `quality` either way.",
    )
    speed: float = Field(1.0, description="Speaking rate multiplier.")
    webhook_url: str | None = Field(
        None, description="Receives signed Standard Webhooks events for this job."
    )
    mode: JobMode | None = Field(
        None,
        description="`preset` (the engine's voice, or the farm's default voice), `clone` "
        "(speak with `voice_id`), `cross_lingual` (`voice_id` speaking another language), "
        "`instruct` (follow `instruction`). Default: `instruct` with an instruction, `clone` "
        "with a `voice_id`, else `preset`. `GET /v1/engines` lists each engine's modes.",
    )
    voice_id: uuid.UUID | None = Field(
        None, description="A cloned voice (`POST /v1/voices`) in status `ready`."
    )
    language: str | None = Field(
        None,
        max_length=16,
        pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$",
        description="Language of `text` (ISO 639-1, e.g. `en`, `zh`, `yue`), for cross-lingual "
        "cloning and engines that need it.",
    )
    priority: Priority = Priority.interactive
    metadata: dict[str, Any] | None = Field(
        None, description=f"Opaque, echoed back; at most {MAX_METADATA_DEPTH} levels deep."
    )
    subtitles: Literal["srt", "vtt"] | None = Field(
        None,
        description="Also store a subtitle file (SubRip or WebVTT) built from the segment "
        "timings: `GET /v1/jobs/{id}/subtitles`. Every job's timings are at `.../timings`.",
    )

    @field_validator("metadata")
    @classmethod
    def _shallow_enough(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # pydantic refuses to serialise past a few hundred levels: a deeper value would pass
        # validation and then fail as a 500 when the request is hashed or stored.
        if value is not None and _depth(value) > MAX_METADATA_DEPTH:
            raise ValueError(f"metadata is nested more than {MAX_METADATA_DEPTH} levels deep")
        return value


class Progress(BaseModel):
    segments_done: int
    segments_total: int | None


class JobError(BaseModel):
    code: str
    message: str


class JobResult(BaseModel):
    url: str
    format: str
    content_type: str | None = Field(None, description="As served by `GET .../audio`.")
    bit_depth: int | None = Field(None, description="`wav`, `flac` and `pcm`: 16 or 24.")
    sample_rate: int
    duration_s: float
    bytes: int
    sha256: str


class JobLinks(BaseModel):
    self: str
    cancel: str
    audio: str
    timings: str | None = Field(None, description="Segment timings, once the job succeeded.")
    subtitles: str | None = Field(None, description="The subtitle file, when requested.")


class JobOut(BaseModel):
    id: str
    tenant_id: str = Field(
        description="The tenant the job belongs to (an admin key sees every tenant's jobs)."
    )
    status: JobStatus
    engine: str
    voice: str | None
    mode: JobMode
    voice_id: str | None
    language: str | None
    instruction: str | None
    format: str
    priority: str
    metadata: dict[str, Any]
    attempts: int
    max_attempts: int
    progress: Progress
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: JobError | None
    result: JobResult | None
    quality: dict[str, float] | None = Field(
        None,
        description="Measured on every result (also on one that failed a quality check): "
        "`duration_s`, `chars_per_second` (letters, digits and CJK characters), "
        "`silence_ratio`, `clipped_ratio`, `peak`, `nan_count`, `loudness_input_lufs` (the "
        "engine's output) and `loudness_lufs` and `output_peak` (the delivered file); "
        "`speaker_similarity` (clone modes, -1..1).",
    )
    links: JobLinks


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class WebhookAttemptOut(BaseModel):
    attempt: int
    attempted_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None
    succeeded: bool


class WebhookDeliveryOut(BaseModel):
    id: str
    event: str
    url: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    history: list[WebhookAttemptOut]


class EngineOut(BaseModel):
    name: str
    default: bool
    modes: list[str]
    voice_modes: list[str] = Field(
        description="Modes that speak with a cloned voice: `voice_id`, or the default voice"
    )
    markup: list[str]
    languages: list[str]
    sample_rate: int
    default_voice: str | None
    voices: list[str] | None = Field(description="null: the engine resolves any voice name")
    formats: list[str]
    speed_range: tuple[float, float]


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]


class VoiceError(BaseModel):
    code: str
    message: str


class VoiceLinks(BaseModel):
    self: str


class VoiceOut(BaseModel):
    id: str
    name: str
    transcript: str = Field(description="What the recording says (the prompt text).")
    language: str | None
    status: VoiceStatus
    revision: int = Field(
        description="Grows with every transcript change; prompts prepared from an older "
        "transcript are never reused."
    )
    attempts: int
    error: VoiceError | None
    sample_rate: int | None = Field(description="Of the prepared prompt (16 kHz or more).")
    duration_s: float | None = Field(description="Of the prepared prompt, silence trimmed.")
    audio_sha256: str | None = Field(description="Of the prepared prompt WAV.")
    upload_bytes: int | None
    embedding_dim: int | None = Field(description="Length of the speaker embedding once ready.")
    created_at: datetime
    updated_at: datetime
    links: VoiceLinks


class VoiceList(BaseModel):
    items: list[VoiceOut]
    next_cursor: str | None


class VoicePatch(BaseModel):
    """Fields to change; a new transcript bumps the voice's revision."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="1-128 characters.")
    transcript: str | None = Field(
        None, description="The corrected prompt text: exactly what the recording says."
    )
    language: str | None = Field(None, description="ISO 639-1 code, e.g. `zh`, `en-US`.")


class TextPreviewIn(BaseModel):
    text: str = Field(description="Text as a job would send it, markup included.")
    engine: str | None = Field(None, description="Default: the farm's default engine.")
    language: str | None = Field(None, description="ISO 639-1 code; default: per run of script.")


class SegmentOut(BaseModel):
    text: str
    chars: int


class MarkupOut(BaseModel):
    kind: str = Field(description="`pinyin`, `arpabet` or `tag`.")
    start: int = Field(description="Character offset in `normalized`.")
    end: int
    text: str


class TextPreviewOut(BaseModel):
    normalized: str = Field(description="The text as the engine is given it.")
    segments: list[SegmentOut]
    markup: list[MarkupOut]


class SpeechCreate(BaseModel):
    """`POST /v1/audio/speech`, OpenAI's shape (api/routes/openai_speech.py)."""

    # Fields newer OpenAI clients send that voicefarm has no use for are ignored, not refused.
    model_config = ConfigDict(extra="ignore")

    model: str = Field(
        ...,
        min_length=1,
        description="An engine name; `tts-1`, `tts-1-hd` and `gpt-4o-mini-tts` mean the default "
        "engine.",
    )
    input: str = Field(..., min_length=1, description="The text to speak.")
    voice: str | dict[str, str] = Field(
        ...,
        description="An engine's voice, a cloned voice's id (UUID, or `{\"id\": ...}`), or an "
        "OpenAI voice name (`alloy`, `nova`, ...), which means the engine's default voice.",
    )
    response_format: str = Field(
        "mp3", description="`mp3`, `opus`, `wav`, `flac` or `pcm` (24 kHz); `aac` is refused."
    )
    speed: float = Field(1.0, description="Speaking rate; the engine's range applies.")
    instructions: str | None = Field(
        None, description="A style instruction: instruct mode on engines that have it."
    )

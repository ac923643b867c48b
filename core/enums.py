"""Statuses, queues, task names and event names: one spelling each, shared by every side."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    def is_terminal(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)


class JobMode(StrEnum):
    """How a job speaks. `preset`: the engine's own voice, or the farm's default voice on
    engines that only speak with cloned voices; `clone`: a cloned voice (3-second cloning);
    `cross_lingual`: a cloned voice speaking another language; `instruct`: a natural-language
    style or dialect instruction ("用四川话说这句话")."""

    preset = "preset"
    clone = "clone"
    cross_lingual = "cross_lingual"
    instruct = "instruct"


class VoiceStatus(StrEnum):
    """A cloned voice: `processing` until a worker has validated its recording and computed its
    speaker embedding, then `ready`, or `failed` with a code (VoiceErrorCode)."""

    processing = "processing"
    ready = "ready"
    failed = "failed"


class VoiceErrorCode(StrEnum):
    """Why a voice failed, recorded on the voice (a failed voice is data, not an HTTP error)."""

    audio_undecodable = "audio_undecodable"
    sample_rate_too_low = "sample_rate_too_low"
    clipped = "clipped"
    too_quiet = "too_quiet"
    too_short = "too_short"
    too_long = "too_long"
    storage_error = "storage_error"
    max_attempts = "max_attempts_exceeded"


class Priority(StrEnum):
    """Interactive and batch work go to separate queues: Redis priorities are approximate."""

    interactive = "interactive"
    batch = "batch"


class TaskName(StrEnum):
    synthesize = "jobs.synthesize"
    deliver_webhook = "webhooks.deliver"
    reconcile = "maintenance.reconcile"
    retention = "maintenance.retention"
    sweep_orphans = "maintenance.sweep_orphans"
    prepare_voice = "voices.prepare"
    forget_voice = "voices.forget"
    concatenate_batch = "batches.concatenate"


class Queue(StrEnum):
    webhooks = "webhooks"
    maintenance = "maintenance"
    # Voice preparation (decode, validate, speaker embedding): CPU work for the ops worker.
    voices = "voices"


DEFAULT_POOL = "default"
# A pool name becomes part of queue names and worker hostnames: no dots, commas or `@`.
POOL_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"


def synth_queue(
    engine: str, priority: Priority = Priority.interactive, pool: str = DEFAULT_POOL
) -> str:
    """`synth.<engine>` for interactive work and `synth.<engine>.batch` for batch work in the
    default pool; `synth.<pool>.<engine>[.batch]` in another pool (workers started with
    `voicefarm workers --pool <pool>` consume only those)."""
    base = f"synth.{engine}" if pool == DEFAULT_POOL else f"synth.{pool}.{engine}"
    return base if priority == Priority.interactive else f"{base}.batch"


class WebhookEvent(StrEnum):
    queued = "job.queued"
    started = "job.started"
    progress = "job.progress"
    succeeded = "job.succeeded"
    failed = "job.failed"
    canceled = "job.canceled"
    batch_completed = "batch.completed"


class DeliveryStatus(StrEnum):
    pending = "pending"
    sending = "sending"
    delivered = "delivered"
    failed = "failed"  # retries exhausted
    disabled = "disabled"  # receiver answered 410 Gone


class ErrorCode(StrEnum):
    """Codes recorded on a failed job."""

    max_attempts = "max_attempts_exceeded"
    engine_error = "engine_error"
    engine_unavailable = "engine_unavailable"
    storage_error = "storage_error"
    out_of_memory = "out_of_memory"
    deadline_exceeded = "deadline_exceeded"
    invalid_input = "invalid_input"
    # The engine produced no samples, or only silence: nothing worth storing.
    empty_audio = "empty_audio"
    # The audio failed a quality check (NaN samples, clipping, mostly silent, a duration
    # implausible for the text): the message names the figure and the threshold.
    quality_check_failed = "quality_check_failed"

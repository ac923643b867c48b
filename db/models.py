"""Tables. The schema only changes through a migration in `migrations/versions`."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy import (
    text as sql_text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _now() -> Any:
    return func.now()


# The tenant every job and voice belongs to when authentication is off (local work, `make run`)
# and the owner of rows that predate tenants (migration 0005 creates it).
DEFAULT_TENANT_ID = uuid.UUID("00000000-0000-0000-0000-000000000001")


class Tenant(Base):
    """A customer of the farm: owns jobs, voices and API keys; has limits and a pool."""

    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # Worker pool (queue family) this tenant's jobs go to (the seed's sharding by tenant).
    pool: Mapped[str] = mapped_column(String(64), default="default", server_default="default")
    # Limits; None: the farm's default (VOICEFARM_TENANT_*).
    max_running: Mapped[int | None] = mapped_column(Integer)
    jobs_per_minute: Mapped[int | None] = mapped_column(Integer)
    chars_per_day: Mapped[int | None] = mapped_column(BigInteger)
    max_voices: Mapped[int | None] = mapped_column(Integer)
    # Share of the workers when tenants compete (fair share), relative to other tenants.
    weight: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # This tenant's Standard Webhooks signing secret (`whsec_...`), so one tenant cannot sign
    # events another tenant's receiver trusts. None: the farm's VOICEFARM_WEBHOOK_SECRET (the
    # default tenant). It must be readable to sign with, so it is stored as is.
    webhook_secret: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class ApiKey(Base):
    """An API key. Only its hash is stored; `prefix` (shown in lists) identifies it."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    # None for an operator (admin) key, which sees every tenant.
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    scope: Mapped[str] = mapped_column(String(16), default="tenant")  # tenant | admin
    name: Mapped[str | None] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    engine: Mapped[str] = mapped_column(String(64))
    voice: Mapped[str | None] = mapped_column(String(128))
    instruction: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(8), default="wav")
    sample_rate: Mapped[int | None] = mapped_column(Integer)
    speed: Mapped[float] = mapped_column(Float, default=1.0)
    priority: Mapped[str] = mapped_column(String(16), default="interactive")
    webhook_url: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    # Who owns the job. Every read and write is scoped by it; unique per tenant, not globally.
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey("tenants.id", ondelete="RESTRICT"),
        default=lambda: DEFAULT_TENANT_ID,
    )
    # The worker pool (queue family) the job was routed to at admission.
    pool: Mapped[str] = mapped_column(String(64), default="default", server_default="default")
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))

    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    worker_id: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    segments_done: Mapped[int] = mapped_column(Integer, default=0)
    segments_total: Mapped[int | None] = mapped_column(Integer)

    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now(), onupdate=_now()
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)

    # How to speak: `preset` (the engine's own or default voice), `clone`, `cross_lingual`,
    # `instruct`. A job that uses a cloned voice names it; the voice cannot be deleted while
    # queued or running jobs use it, and finished jobs keep their audio when it goes.
    mode: Mapped[str] = mapped_column(String(16), default="preset", server_default="preset")
    voice_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("voices.id", ondelete="SET NULL"), index=True
    )
    language: Mapped[str | None] = mapped_column(String(16))
    # Measured on the result, e.g. {"speaker_similarity": 0.83} for clone jobs.
    quality: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    result_key: Mapped[str | None] = mapped_column(Text)
    # Output options (issue "text in, audio out"): PCM bit depth for wav/flac/pcm, a loudness
    # target in LUFS, a subtitle format (srt | vtt).
    bit_depth: Mapped[int | None] = mapped_column(Integer)
    loudness_target: Mapped[float | None] = mapped_column(Float)
    subtitles: Mapped[str | None] = mapped_column(String(8))
    # Storage keys of the segment timings (`segments.json`) and the subtitle file, once done.
    timings_key: Mapped[str | None] = mapped_column(Text)
    subtitles_key: Mapped[str | None] = mapped_column(Text)
    result_format: Mapped[str | None] = mapped_column(String(8))
    result_sample_rate: Mapped[int | None] = mapped_column(Integer)
    result_duration_s: Mapped[float | None] = mapped_column(Float)
    result_bytes: Mapped[int | None] = mapped_column(BigInteger)
    result_sha256: Mapped[str | None] = mapped_column(String(64))
    # The batch the job is item `batch_index` of (POST /v1/batches); None for a single job.
    batch_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("batches.id", ondelete="SET NULL")
    )
    batch_index: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_id_idempotency_key"),
        Index("ix_jobs_tenant_id_created_at_id", "tenant_id", "created_at", "id"),
        Index("ix_jobs_created_at_id", "created_at", "id"),
        Index("ix_jobs_status_created_at", "status", "created_at"),
        Index(
            "ix_jobs_active",
            "status",
            "dispatched_at",
            postgresql_where=sql_text("status IN ('queued', 'running')"),
        ),
        # Fair-share dispatch (db/dispatch.py) and quotas (api/quotas.py); migration 0006.
        Index(
            "ix_jobs_undispatched",
            "engine",
            "pool",
            "priority",
            "tenant_id",
            "created_at",
            postgresql_where=sql_text("status = 'queued' AND dispatched_at IS NULL"),
        ),
        Index(
            "ix_jobs_tenant_active",
            "tenant_id",
            "status",
            postgresql_where=sql_text("status IN ('queued', 'running')"),
        ),
        # A batch's items in input order (GET /v1/batches/{id}/items); migration 0009.
        Index(
            "ix_jobs_batch_id_batch_index",
            "batch_id",
            "batch_index",
            postgresql_where=sql_text("batch_id IS NOT NULL"),
        ),
    )


class Batch(Base):
    """Up to 10,000 jobs submitted together (POST /v1/batches); items are jobs with `batch_id`.

    `completed_at` is set once, by whoever sees the last item reach a terminal state (fenced:
    `WHERE completed_at IS NULL AND no active items`), together with the `batch.completed` event.
    """

    __tablename__ = "batches"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="RESTRICT")
    )
    items: Mapped[int] = mapped_column(Integer)
    total_chars: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    webhook_url: Mapped[str | None] = mapped_column(Text)
    concatenate: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=sql_text("false")
    )
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, default=dict, server_default="{}"
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    canceled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The concatenated audio (`concatenate: true`): pending | running | ready | failed.
    audio_key: Mapped[str | None] = mapped_column(Text)
    audio_status: Mapped[str | None] = mapped_column(String(16))
    audio_error: Mapped[str | None] = mapped_column(Text)
    audio_duration_s: Mapped[float | None] = mapped_column(Float)
    # POST /v1/batches with an Idempotency-Key: the same key and body answer this batch again.
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        UniqueConstraint(
            "tenant_id", "idempotency_key", name="uq_batches_tenant_id_idempotency_key"
        ),
        Index("ix_batches_tenant_id_created_at_id", "tenant_id", "created_at", "id"),
        Index("ix_batches_open", "created_at", postgresql_where=sql_text("completed_at IS NULL")),
    )


class WebhookDelivery(Base):
    """One event for one job's webhook_url; its id is the `webhook-id` on every retry."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # None for a batch's own events (`batch.completed`), which name `batch_id` instead.
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    batch_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("batches.id", ondelete="CASCADE"), index=True
    )
    url: Mapped[str] = mapped_column(Text)
    event: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now()
    )
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=sql_text("status IN ('pending', 'sending')"),
        ),
    )


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    attempt: Mapped[int] = mapped_column(Integer)
    attempted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    duration_ms: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    succeeded: Mapped[bool] = mapped_column(Boolean, default=False)


class Voice(Base):
    """A cloned voice: an uploaded 3-15 s recording of one speaker plus what it says.

    `processing` until a worker has validated the recording and computed its speaker embedding,
    then `ready` (or `failed` with a code). `revision` grows with every transcript change, so
    prompts prepared from an older transcript are never reused."""

    __tablename__ = "voices"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey("tenants.id", ondelete="RESTRICT"),
        default=lambda: DEFAULT_TENANT_ID,
    )
    # Pin every job with this voice to a worker pool (the seed's sharding by voice); None: the
    # tenant's pool.
    pool: Mapped[str | None] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    transcript: Mapped[str] = mapped_column(Text)
    language: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="processing")
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    revision: Mapped[int] = mapped_column(Integer, default=1)

    # The upload as received (kept for reprocessing), and the prompt made from it: mono,
    # silence trimmed, 3-15 s, WAV at `sample_rate` (16 kHz or more).
    upload_key: Mapped[str | None] = mapped_column(Text)
    upload_sha256: Mapped[str | None] = mapped_column(String(64))
    upload_bytes: Mapped[int | None] = mapped_column(BigInteger)
    prompt_key: Mapped[str | None] = mapped_column(Text)
    audio_sha256: Mapped[str | None] = mapped_column(String(64))
    sample_rate: Mapped[int | None] = mapped_column(Integer)
    duration_s: Mapped[float | None] = mapped_column(Float)
    # Speaker embedding (resemblyzer, 256 floats, L2-normalised).
    embedding: Mapped[list[float] | None] = mapped_column(JSONB)

    attempts: Mapped[int] = mapped_column(Integer, default=0)
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now(), onupdate=_now()
    )

    __table_args__ = (
        Index("ix_voices_created_at_id", "created_at", "id"),
        Index("ix_voices_tenant_id_created_at_id", "tenant_id", "created_at", "id"),
    )


class EngineRegistration(Base):
    """The capabilities a worker's engine class declares, recorded when the worker starts, so
    admission checks jobs against what the code says rather than a hand-kept copy."""

    __tablename__ = "engine_registrations"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONB)
    worker_id: Mapped[str] = mapped_column(String(255))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now(), onupdate=_now()
    )

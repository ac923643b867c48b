"""The queries that read and change voices. Each only flushes; the caller's scope commits.

A worker's writes after its claim are fenced by the attempt number (`WHERE status =
'processing' AND attempts = :attempt`), as for jobs: a preparation that was taken over by a newer
attempt (its worker seemed dead) can no longer record anything."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import ColumnElement, and_, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session

from core.enums import JobStatus, VoiceErrorCode, VoiceStatus
from core.errors import VoiceInUse, VoiceNotFound
from db.jobs import decode_cursor, encode_cursor
from db.models import Job, Voice


@dataclass(frozen=True)
class VoiceClaim:
    voice_id: uuid.UUID
    attempt: int
    upload_key: str


@dataclass(frozen=True)
class PreparedPrompt:
    prompt_key: str
    audio_sha256: str
    sample_rate: int
    duration_s: float
    embedding: list[float]


def get_voice(
    session: Session,
    voice_id: uuid.UUID,
    *,
    lock: bool = False,
    tenant_id: uuid.UUID | None = None,
) -> Voice:
    """The voice; with `tenant_id`, only that tenant's (another tenant's id is a 404)."""
    stmt = select(Voice).where(Voice.id == voice_id)
    if tenant_id is not None:
        stmt = stmt.where(Voice.tenant_id == tenant_id)
    if lock:
        stmt = stmt.with_for_update()
    voice = session.scalar(stmt.execution_options(populate_existing=True))
    if voice is None:
        raise VoiceNotFound(f"no voice with id {voice_id}")
    return voice


def create_voice(session: Session, voice: Voice) -> Voice:
    """Insert a voice in `processing`, dispatched now (its message is sent after commit)."""
    voice.status = VoiceStatus.processing.value
    voice.dispatched_at = func.now()  # type: ignore[assignment]
    session.add(voice)
    session.flush()
    session.refresh(voice)
    return voice


def list_voices(
    session: Session,
    *,
    status: VoiceStatus | None,
    limit: int,
    cursor: str | None,
    tenant_id: uuid.UUID | None = None,
) -> tuple[list[Voice], str | None]:
    """Newest first, keyset-paginated on (created_at, id) like jobs; `tenant_id`'s only when
    given (a foreign cursor just pages this tenant's rows)."""
    stmt = select(Voice).order_by(Voice.created_at.desc(), Voice.id.desc()).limit(limit + 1)
    if tenant_id is not None:
        stmt = stmt.where(Voice.tenant_id == tenant_id)
    if status is not None:
        stmt = stmt.where(Voice.status == status.value)
    if cursor:
        ts, vid = decode_cursor(cursor)
        stmt = stmt.where(or_(Voice.created_at < ts, and_(Voice.created_at == ts, Voice.id < vid)))
    rows = list(session.scalars(stmt))
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id)
    return rows, next_cursor


def update_voice(
    session: Session,
    voice_id: uuid.UUID,
    *,
    name: str | None = None,
    transcript: str | None = None,
    language: str | None = None,
    clear_language: bool = False,
    tenant_id: uuid.UUID | None = None,
) -> Voice:
    """Change what the client may change. A different transcript bumps `revision`: prompts
    prepared for the old one (keyed by revision and transcript) are never used again. The
    embedding stays: the recording did not change."""
    voice = get_voice(session, voice_id, lock=True, tenant_id=tenant_id)
    if name is not None:
        voice.name = name
    if transcript is not None and transcript != voice.transcript:
        voice.transcript = transcript
        voice.revision = voice.revision + 1
    if language is not None or clear_language:
        voice.language = language
    session.flush()
    session.refresh(voice)
    return voice


def _active_jobs(voice_id: uuid.UUID) -> ColumnElement[bool]:
    return exists().where(
        Job.voice_id == voice_id,
        Job.status.in_([JobStatus.queued.value, JobStatus.running.value]),
    )


def delete_voice(
    session: Session, voice_id: uuid.UUID, *, tenant_id: uuid.UUID | None = None
) -> Voice:
    """Delete a voice no queued or running job uses; finished jobs keep their audio (their
    voice_id becomes NULL).

    The row lock serialises this with job admission: inserting a job that references the voice
    takes a key-share lock on it, so a job committed first is seen here (409), and one inserted
    after waits for this delete and then fails its foreign key."""
    voice = get_voice(session, voice_id, lock=True, tenant_id=tenant_id)
    if session.scalar(select(_active_jobs(voice_id))):
        raise VoiceInUse(
            f"voice {voice_id} is used by queued or running jobs; cancel them or wait until "
            "they finish, then delete it"
        )
    session.execute(delete(Voice).where(Voice.id == voice_id))
    return voice


# --- worker side ----------------------------------------------------------------------------


def claim_voice(session: Session, voice_id: uuid.UUID, max_attempts: int) -> VoiceClaim | None:
    """Start an attempt at preparing a `processing` voice: attempts + 1, dispatched now (the
    reconciler's clock restarts). None: the voice is gone, already prepared or failed, or out of
    attempts (the reconciler fails it)."""
    row = session.execute(
        update(Voice)
        .where(
            Voice.id == voice_id,
            Voice.status == VoiceStatus.processing.value,
            Voice.attempts < max_attempts,
        )
        .values(attempts=Voice.attempts + 1, dispatched_at=func.now())
        .returning(Voice.attempts, Voice.upload_key)
    ).one_or_none()
    if row is None or row.upload_key is None:
        return None
    return VoiceClaim(voice_id, row.attempts, row.upload_key)


def _fenced(claim: VoiceClaim) -> ColumnElement[bool]:
    return and_(
        Voice.id == claim.voice_id,
        Voice.status == VoiceStatus.processing.value,
        Voice.attempts == claim.attempt,
    )


def finish_ready(session: Session, claim: VoiceClaim, prompt: PreparedPrompt) -> bool:
    """processing -> ready with the prompt and embedding; False if the fence failed."""
    res = session.execute(
        update(Voice)
        .where(_fenced(claim))
        .values(
            status=VoiceStatus.ready.value,
            prompt_key=prompt.prompt_key,
            audio_sha256=prompt.audio_sha256,
            sample_rate=prompt.sample_rate,
            duration_s=prompt.duration_s,
            embedding=prompt.embedding,
            error_code=None,
            error_message=None,
        )
        .returning(Voice.id)
    )
    return res.scalar_one_or_none() is not None


def finish_failed(session: Session, claim: VoiceClaim, code: str, message: str) -> bool:
    res = session.execute(
        update(Voice)
        .where(_fenced(claim))
        .values(status=VoiceStatus.failed.value, error_code=code, error_message=message)
        .returning(Voice.id)
    )
    return res.scalar_one_or_none() is not None


# --- reconciler and sweep -------------------------------------------------------------------


def stale_processing(
    session: Session, timeout_seconds: float, max_attempts: int, limit: int = 200
) -> tuple[list[uuid.UUID], int]:
    """Voices `processing` past the timeout since their last dispatch or claim (message lost,
    worker killed mid-preparation): those with attempts left are marked dispatched now and
    returned for publishing after commit; the rest fail with `max_attempts_exceeded`."""
    cutoff = func.now() - timedelta(seconds=timeout_seconds)
    rows = session.execute(
        select(Voice.id, Voice.attempts)
        .where(
            Voice.status == VoiceStatus.processing.value,
            or_(Voice.dispatched_at.is_(None), Voice.dispatched_at < cutoff),
        )
        .order_by(Voice.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    again = [r.id for r in rows if r.attempts < max_attempts]
    spent = [r.id for r in rows if r.attempts >= max_attempts]
    if again:
        session.execute(update(Voice).where(Voice.id.in_(again)).values(dispatched_at=func.now()))
    if spent:
        session.execute(
            update(Voice)
            .where(Voice.id.in_(spent))
            .values(
                status=VoiceStatus.failed.value,
                error_code=VoiceErrorCode.max_attempts.value,
                error_message=f"preparation did not finish in {max_attempts} attempts",
            )
        )
    return again, len(spent)


def undispatch(session: Session, voice_ids: list[uuid.UUID]) -> None:
    """Publishing failed: the next reconcile picks these voices up at once."""
    if voice_ids:
        session.execute(
            update(Voice)
            .where(Voice.id.in_(voice_ids), Voice.status == VoiceStatus.processing.value)
            .values(dispatched_at=None)
        )


def existing_ids(session: Session, voice_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    if not voice_ids:
        return set()
    return set(session.scalars(select(Voice.id).where(Voice.id.in_(voice_ids))))

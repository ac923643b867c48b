"""The queries that change a job's state. Each only flushes; the caller's scope commits.

Every write a worker makes after its claim is fenced by the attempt number: `WHERE status =
'running' AND attempts = :attempt`. A worker whose lease expired (and whose job was claimed again)
matches no row, so it can never overwrite a newer attempt or finish a job twice.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Table,
    Update,
    and_,
    func,
    insert,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from core.enums import ErrorCode, JobStatus, Priority, WebhookEvent
from core.errors import InvalidCursor, JobNotCancelable, JobNotFound
from db.models import Job
from db.webhooks import add_event


@dataclass(frozen=True)
class Claim:
    job_id: uuid.UUID
    attempt: int
    worker_id: str


@dataclass(frozen=True)
class AudioResult:
    key: str
    format: str
    sample_rate: int
    duration_s: float
    bytes: int
    sha256: str
    quality: dict[str, float] | None = None
    # segments.json and the subtitle file stored beside the audio (tasks/synthesize.py).
    timings_key: str | None = None
    subtitles_key: str | None = None


def get_job(
    session: Session, job_id: uuid.UUID, *, lock: bool = False, tenant_id: uuid.UUID | None = None
) -> Job:
    """The job; with `tenant_id`, only that tenant's (another tenant's id is as missing: 404).
    Without it (workers, maintenance, admin callers) any job."""
    stmt = select(Job).where(Job.id == job_id)
    if tenant_id is not None:
        stmt = stmt.where(Job.tenant_id == tenant_id)
    if lock:
        stmt = stmt.with_for_update()
    job = session.scalar(stmt.execution_options(populate_existing=True))
    if job is None:
        raise JobNotFound(f"no job with id {job_id}")
    return job


def find_by_idempotency_key(session: Session, tenant_id: uuid.UUID, key: str) -> Job | None:
    """Keys are scoped per tenant: another tenant's use of the same key is not seen."""
    return session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))


# Every column of a job, by mapped attribute (`metadata_`) and column name (`metadata`), in
# table order (db/admission.py and api/batch_submit.py build their rows from it too).
JOB_COLUMNS = [(a.key, a.columns[0]) for a in inspect(Job).column_attrs]
_INSERT_JOB = insert(cast(Table, Job.__table__)).returning(*(column for _, column in JOB_COLUMNS))


def create_job(session: Session, job: Job, base_url: str) -> list[str]:
    """Insert `job` (new, from admission) as a queued job and its `job.queued` event; returns
    delivery ids to send after commit. `job` ends as add + flush + refresh would leave it: in
    the session, every column loaded as the row was written.

    One Core INSERT ... RETURNING every column, instead of the ORM's unit of work and a SELECT
    for the refresh (about 1 ms of CPU per job; docs/BENCHMARKS.md, Admission). Row defaults
    are the same: what admission left unset is left out, so the column's Python default (Core
    applies it) or server default (returned) fills it, as in a flush.

    The job is not dispatched yet: tasks/dispatch.py publishes it when its queue has room."""
    job.status = JobStatus.queued.value
    job.dispatched_at = None
    given = job.__dict__
    row = session.execute(
        _INSERT_JOB, {column.name: given[key] for key, column in JOB_COLUMNS if key in given}
    ).one()
    for (key, _), value in zip(JOB_COLUMNS, row, strict=True):
        set_committed_value(job, key, value)
    make_transient_to_detached(job)
    session.add(job)  # persistent: no SQL, no pending change
    delivery = add_event(session, job, WebhookEvent.queued, base_url)
    return [delivery] if delivery else []


def _fenced(claim: Claim) -> ColumnElement[bool]:
    return and_(
        Job.id == claim.job_id,
        Job.status == JobStatus.running.value,
        Job.attempts == claim.attempt,
    )


def _claiming(worker_id: str, lease_seconds: float) -> Update:
    """The UPDATE every claim makes (one job, the next in flight, a batch's mates): running,
    one more attempt, this worker's lease; `started_at` is the first attempt's."""
    return update(Job).values(
        status=JobStatus.running.value,
        attempts=Job.attempts + 1,
        worker_id=worker_id,
        lease_expires_at=func.now() + timedelta(seconds=lease_seconds),
        started_at=func.coalesce(Job.started_at, func.now()),
    )


def claim_job(
    session: Session, job_id: uuid.UUID, worker_id: str, lease_seconds: float
) -> Claim | None:
    """queued -> running, atomically. None when the job is not queued (duplicate delivery).

    `segments_done` is kept: an attempt after a worker's death resumes from the segments the
    earlier one stored, and clients must never see progress go backwards."""
    attempt = session.execute(
        _claiming(worker_id, lease_seconds)
        .where(Job.id == job_id, Job.status == JobStatus.queued.value)
        .returning(Job.attempts)
    ).scalar_one_or_none()
    return None if attempt is None else Claim(job_id, attempt, worker_id)


def claim_next(
    session: Session, engines: list[str], pool: str, worker_id: str, lease_seconds: float
) -> Claim | None:
    """Claim a worker's next job ahead of its message (prefetch, tasks/prefetch.py): the oldest
    in-flight job (dispatched, so fair share already chose it) on one of `engines` in `pool`,
    interactive before batch, skipping rows another worker is claiming. Its message, when it
    comes, claims nothing. None when nothing is in flight."""
    nxt = (
        select(Job.id)
        .where(
            Job.status == JobStatus.queued.value,
            Job.dispatched_at.is_not(None),
            Job.engine.in_(engines),
            Job.pool == pool,
        )
        .order_by(Job.priority != Priority.interactive.value, Job.dispatched_at)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    row = session.execute(
        _claiming(worker_id, lease_seconds)
        .where(Job.id == nxt, Job.status == JobStatus.queued.value)
        .returning(Job.id, Job.attempts)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    return None if row is None else Claim(row.id, row.attempts, worker_id)


def claim_mates(
    session: Session, like: Job, worker_id: str, lease_seconds: float, limit: int
) -> list[Claim]:
    """Claim up to `limit` more jobs that one engine call can run with `like` (micro-batching,
    tasks/batch.py): same engine, pool, preset voice, speed and mode, no cloned voice or
    instruction. Only in-flight jobs (dispatched, so fair share already chose them), oldest
    dispatch first, skipping rows another worker is claiming; their messages then claim nothing.
    """
    if limit <= 0:
        return []
    mates = (
        select(Job.id)
        .where(
            Job.status == JobStatus.queued.value,
            Job.dispatched_at.is_not(None),
            Job.engine == like.engine,
            Job.pool == like.pool,
            Job.voice.is_not_distinct_from(like.voice),
            Job.speed == like.speed,
            Job.mode == like.mode,
            Job.voice_id.is_(None),
            Job.instruction.is_(None),
            Job.id != like.id,
        )
        .order_by(Job.dispatched_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    rows = session.execute(
        _claiming(worker_id, lease_seconds)
        .where(Job.id.in_(mates), Job.status == JobStatus.queued.value)
        .returning(Job.id, Job.attempts)
        .execution_options(synchronize_session=False)
    ).all()
    return [Claim(r.id, r.attempts, worker_id) for r in rows]


def heartbeat(
    session: Session,
    claim: Claim,
    lease_seconds: float,
    *,
    segments_done: int | None = None,
    segments_total: int | None = None,
) -> bool:
    """Extend the lease and record progress. False: the job was canceled or taken from us.

    Progress only ever rises: a resumed attempt reports its kept segments, never fewer."""
    values: dict[str, Any] = {"lease_expires_at": func.now() + timedelta(seconds=lease_seconds)}
    if segments_done is not None:
        values["segments_done"] = func.greatest(Job.segments_done, segments_done)
    if segments_total is not None:
        values["segments_total"] = segments_total
    res = session.execute(update(Job).where(_fenced(claim)).values(**values).returning(Job.id))
    return res.scalar_one_or_none() is not None


def _finish(
    session: Session, claim: Claim, event: WebhookEvent, base_url: str, **values: Any
) -> list[str] | None:
    """Fenced transition to a terminal state plus its webhook event; None if the fence failed."""
    row = session.execute(
        update(Job)
        .where(_fenced(claim))
        .values(finished_at=func.now(), lease_expires_at=None, **values)
        .returning(Job.id, Job.batch_id)
    ).first()
    if row is None:
        return None
    if row.batch_id is not None:
        # A batch item: no event of its own; the last one to end completes the batch.
        from db.batches import try_complete

        try_complete(session, row.batch_id, base_url)
        return []
    return _event(session, row.id, event, base_url)


def finish_success(
    session: Session,
    claim: Claim,
    result: AudioResult,
    base_url: str,
    *,
    segments_total: int | None = None,
) -> list[str] | None:
    """running -> succeeded; None if the fence failed (the caller should delete its upload).
    `segments_total`: the job's segment count, for a job whose progress was never written."""
    done: Any = func.coalesce(Job.segments_total, Job.segments_done)
    extra: dict[str, Any] = {}
    if segments_total is not None:
        done = extra["segments_total"] = segments_total
    return _finish(
        session,
        claim,
        WebhookEvent.succeeded,
        base_url,
        status=JobStatus.succeeded.value,
        segments_done=done,
        **extra,
        error_code=None,
        error_message=None,
        result_key=result.key,
        result_format=result.format,
        result_sample_rate=result.sample_rate,
        result_duration_s=result.duration_s,
        result_bytes=result.bytes,
        result_sha256=result.sha256,
        quality=result.quality,
        timings_key=result.timings_key,
        subtitles_key=result.subtitles_key,
    )


def finish_failure(
    session: Session,
    claim: Claim,
    code: str,
    message: str,
    base_url: str,
    *,
    quality: dict[str, float] | None = None,
) -> list[str] | None:
    """running -> failed; `quality` records what was measured on audio that failed a check."""
    extra = {} if quality is None else {"quality": quality}
    return _finish(
        session,
        claim,
        WebhookEvent.failed,
        base_url,
        status=JobStatus.failed.value,
        error_code=code,
        error_message=message[:2000],
        **extra,
    )


def release(
    session: Session, claim: Claim, code: str, message: str, base_url: str
) -> list[str] | None:
    """Give a running job back to the queue (transient failure), or fail it when out of attempts.

    Returns delivery ids. A job queued again is undispatched: the caller runs the dispatcher
    (tasks/dispatch.py), which publishes it in its tenant's turn, ahead of its tenant's newer jobs.
    """
    job = session.scalar(select(Job).where(_fenced(claim)).with_for_update())
    if job is None:
        return None
    if job.attempts >= job.max_attempts:
        return finish_failure(
            session,
            claim,
            ErrorCode.max_attempts.value,
            f"gave up after {job.attempts} attempts; last error ({code}): {message}",
            base_url,
        )
    job.status = JobStatus.queued.value
    job.worker_id = None
    job.lease_expires_at = None
    job.dispatched_at = None
    job.error_code = code
    job.error_message = message[:2000]
    session.flush()
    return []


def cancel_job(
    session: Session, job_id: uuid.UUID, base_url: str, *, tenant_id: uuid.UUID | None = None
) -> tuple[Job, list[str]]:
    """Cancel a queued or running job (of `tenant_id` when given). A running worker notices at
    its next heartbeat."""
    job = get_job(session, job_id, lock=True, tenant_id=tenant_id)
    if JobStatus(job.status).is_terminal():
        raise JobNotCancelable(
            f"job {job_id} is already {job.status}; only queued or running jobs can be canceled"
        )
    job.status = JobStatus.canceled.value
    job.finished_at = func.now()  # type: ignore[assignment]
    job.lease_expires_at = None
    job.error_code = None
    job.error_message = None
    session.flush()
    session.refresh(job)
    if job.batch_id is not None:
        from db.batches import try_complete

        try_complete(session, job.batch_id, base_url)
        return job, []
    return job, _event(session, job.id, WebhookEvent.canceled, base_url)


def _event(session: Session, job_id: uuid.UUID, event: WebhookEvent, base_url: str) -> list[str]:
    job = get_job(session, job_id)
    delivery = add_event(session, job, event, base_url)
    return [delivery] if delivery else []


def started_event(session: Session, claim: Claim, base_url: str) -> list[str]:
    return _event(session, claim.job_id, WebhookEvent.started, base_url)


def progress_event(session: Session, claim: Claim, base_url: str) -> list[str]:
    return _event(session, claim.job_id, WebhookEvent.progress, base_url)


def expired_jobs(session: Session, older_than_days: float, limit: int = 500) -> list[Job]:
    """Finished jobs past retention, oldest first, locked for deletion."""
    cutoff = func.now() - timedelta(days=older_than_days)
    return list(
        session.scalars(
            select(Job)
            .where(
                Job.status.in_([s.value for s in JobStatus if s.is_terminal()]),
                Job.finished_at < cutoff,
            )
            .order_by(Job.finished_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )


# --- reconciler -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Redispatch:
    job_id: uuid.UUID
    engine: str
    priority: str
    pool: str = "default"


def requeue_expired_leases(session: Session, base_url: str) -> tuple[list[Redispatch], list[str]]:
    """running jobs whose lease ran out (worker killed or hung) -> queued (undispatched: the
    caller runs the dispatcher), or failed when spent. Returns the jobs queued again."""
    rows = session.scalars(
        select(Job)
        .where(Job.status == JobStatus.running.value, Job.lease_expires_at < func.now())
        .with_for_update(skip_locked=True)
        .limit(200)
    ).all()
    again: list[Redispatch] = []
    deliveries: list[str] = []
    for job in rows:
        claim = Claim(job.id, job.attempts, job.worker_id or "")
        msg = f"worker {job.worker_id} stopped renewing its lease during attempt {job.attempts}"
        out = release(session, claim, "lease_expired", msg, base_url)
        deliveries.extend(out or [])
        if job.status == JobStatus.queued.value:
            again.append(Redispatch(job.id, job.engine, job.priority, job.pool))
    return again, deliveries


def _stale(grace_seconds: float) -> ColumnElement[bool]:
    cutoff = func.now() - timedelta(seconds=grace_seconds)
    return and_(Job.status == JobStatus.queued.value, Job.dispatched_at < cutoff)


def stale_queued(session: Session, grace_seconds: float, limit: int = 500) -> list[Redispatch]:
    """Dispatched jobs nobody claimed within the grace period (the message was lost, or Redis
    restarted empty), oldest first, at most `limit`, marked dispatched now so each is
    re-published at most once per grace period. A duplicate message claims nothing.

    Undispatched jobs are not stale: they wait for their turn in the dispatcher (fair share),
    so a backlog held in PostgreSQL is never flooded into the broker from here.
    The caller publishes after commit.
    """
    rows = session.execute(
        select(Job.id, Job.engine, Job.priority, Job.pool)
        .where(_stale(grace_seconds))
        .order_by(Job.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    ids = [r.id for r in rows]
    if ids:
        session.execute(update(Job).where(Job.id.in_(ids)).values(dispatched_at=func.now()))
    return [Redispatch(r.id, r.engine, r.priority, r.pool) for r in rows]


@dataclass(frozen=True)
class StoredResult:
    status: str
    attempts: int
    result_key: str | None
    timings_key: str | None = None
    subtitles_key: str | None = None

    def names(self, key: str) -> bool:
        """Whether the row points at the object `key` (its audio, timings or subtitles)."""
        return key in (self.result_key, self.timings_key, self.subtitles_key)


def stored_results(session: Session, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, StoredResult]:
    """What each job row says about its audio (the orphan sweep); rows that are gone are absent."""
    if not job_ids:
        return {}
    rows = session.execute(
        select(
            Job.id, Job.status, Job.attempts, Job.result_key, Job.timings_key, Job.subtitles_key
        ).where(Job.id.in_(job_ids))
    ).all()
    return {
        r.id: StoredResult(r.status, r.attempts, r.result_key, r.timings_key, r.subtitles_key)
        for r in rows
    }


def undispatch(session: Session, job_ids: list[uuid.UUID]) -> None:
    """Publishing failed: mark still-queued jobs as never dispatched, so the next reconcile
    picks them up at once instead of a grace period later."""
    if job_ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(job_ids), Job.status == JobStatus.queued.value)
            .values(dispatched_at=None)
        )


# --- listing --------------------------------------------------------------------------------


def encode_cursor(created_at: datetime, job_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The position a cursor names, as an aware UTC time: a hand-made cursor with no offset or
    one PostgreSQL cannot read (`+23:00`) is refused or normalised here, never sent to SQL."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ts, _, jid = raw.partition("|")
        when = datetime.fromisoformat(ts)
        if when.tzinfo is None:
            raise ValueError("cursor time has no offset")
        return when.astimezone(UTC), uuid.UUID(jid)
    except (ValueError, UnicodeDecodeError, OverflowError) as exc:
        raise InvalidCursor("cursor is not one this API returned") from exc


def list_jobs(
    session: Session,
    *,
    status: JobStatus | None,
    limit: int,
    cursor: str | None,
    tenant_id: uuid.UUID | None = None,
) -> tuple[list[Job], str | None]:
    """Newest first, keyset-paginated on (created_at, id); only `tenant_id`'s jobs when given.

    A cursor is only a position: another tenant's cursor pages this tenant's own rows from
    that point and reveals nothing else."""
    stmt = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    if tenant_id is not None:
        stmt = stmt.where(Job.tenant_id == tenant_id)
    if status is not None:
        stmt = stmt.where(Job.status == status.value)
    if cursor:
        ts, jid = decode_cursor(cursor)
        stmt = stmt.where(or_(Job.created_at < ts, and_(Job.created_at == ts, Job.id < jid)))
    rows = list(session.scalars(stmt))
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = encode_cursor(last.created_at, last.id)
    return rows, next_cursor


def queue_depth(session: Session) -> dict[tuple[str, str], int]:
    rows = session.execute(
        select(Job.engine, Job.status, func.count())
        .where(Job.status.in_([JobStatus.queued.value, JobStatus.running.value]))
        .group_by(Job.engine, Job.status)
    ).all()
    return {(r[0], r[1]): r[2] for r in rows}


def oldest_queued_age(session: Session) -> dict[tuple[str, str], float]:
    """(engine, priority) -> seconds the oldest queued job has waited (the queue-age metric)."""
    rows = session.execute(
        select(
            Job.engine,
            Job.priority,
            func.extract("epoch", func.now() - func.min(Job.created_at)),
        )
        .where(Job.status == JobStatus.queued.value)
        .group_by(Job.engine, Job.priority)
    ).all()
    return {(r[0], r[1]): float(r[2]) for r in rows}

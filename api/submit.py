"""Submitting a job: admission, idempotency, insert, commit, then publish. Shared by the jobs
route and the Gradio-style compat shim."""

from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import quotas
from api.admission import admit, check_storable, request_hash
from api.auth import Caller
from api.errors import database_unavailable
from api.metrics import JOBS_SUBMITTED
from api.modes import NeedsDatabase
from api.schemas import JobCreate
from core.errors import IdempotencyConflict, VoicefarmError
from core.settings import Settings
from core.webhooks import check_webhook_url
from db import admission as lane
from db import jobs as q
from db.dispatch import QueueKey
from db.models import Job, Tenant
from db.session import after_commit, rollback
from tasks.dispatch import dispatch_after_admission, dispatch_in_background
from tasks.send import send_webhooks

# Built once: session.get() builds its SELECT and that statement's cache key on every call, a
# third of the read's CPU.
_TENANT = select(Tenant).where(Tenant.id == bindparam("id"))


async def submit_plain(
    settings: Settings, body: JobCreate, caller: Caller, idempotency_key: str | None
) -> Job | None:
    """Admit a plain job in the event loop, with no thread and one statement (db/admission.py);
    None when it is not plain, and `submit` must admit it.

    Plain: no webhook (its host is resolved, its `job.queued` delivery written and sent), no
    cloned voice and registered engines this process has read lately (admit() raises
    NeedsDatabase otherwise), a tenant without limits and an Idempotency-Key not used before
    (the statement inserts nothing otherwise). A refusal is decided by `submit` too, with a
    session (on fresh engine specs), so every 4xx of admission comes from one place.

    The row is committed when this returns, and only then is its queue filled, on this
    process's dispatch thread (house rule 2): the request does not wait for the publish."""
    if body.webhook_url is not None:
        return None
    try:
        job = admit(None, body, settings, caller.tenant_id)
    except (NeedsDatabase, VoicefarmError):
        return None
    job.idempotency_key = idempotency_key
    job.request_hash = request_hash(body)
    limits = (
        settings.tenant_max_active_jobs or 0,
        settings.tenant_jobs_per_minute or 0,
        settings.tenant_chars_per_day or 0,
    )
    try:
        written = await lane.insert_plain(settings.database_url, job, limits)
    except lane.LaneRefused:
        return None  # nothing was written; the usual path answers (or fails) as it would
    except lane.DatabaseUnavailable as exc:
        raise database_unavailable() from exc
    if written is None:
        return None
    dispatch_in_background(
        settings.database_url,
        QueueKey(written.engine, written.pool, written.priority),
        settings.dispatch_ahead,
    )
    JOBS_SUBMITTED.labels(written.engine, caller.tenant_name).inc()
    return written


def submit(
    session: Session,
    settings: Settings,
    body: JobCreate,
    caller: Caller,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """(job, replayed): a job of the caller's tenant. Only flushes: the request boundary
    commits, and the message is sent after that commit (house rule 2), or never when it rolls
    back."""
    tenant_id = caller.tenant_id
    check_storable(body)
    digest = request_hash(body)
    if body.webhook_url is not None:
        # First, before any query: the check resolves the host, and a slow (or hostile) name
        # server must not keep a pooled connection idle in a transaction meanwhile.
        check_webhook_url(body.webhook_url, allow_private=settings.webhook_allow_private)
    if idempotency_key:
        existing = q.find_by_idempotency_key(session, tenant_id, idempotency_key)
        if existing is not None:
            return _replay(existing, digest), True
    # Held for the request: pool_for and the quota check then read the tenant from the session's
    # (weak) identity map, one query instead of two.
    tenant = session.execute(_TENANT, {"id": tenant_id}).scalar_one_or_none()
    job = admit(session, body, settings, tenant_id)
    # Limits last, just before the insert: the tenant row stays locked until the commit.
    quotas.check_job(session, settings, tenant_id, len(job.text))
    job.idempotency_key = idempotency_key
    job.request_hash = digest
    try:
        deliveries = q.create_job(session, job, settings.public_base_url)
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key won the insert.
        rollback(session)
        existing = q.find_by_idempotency_key(session, tenant_id, idempotency_key or "")
        if existing is None:
            raise
        return _replay(existing, digest), True
    # Published in its tenant's turn when its queue has room (fair share, tasks/dispatch.py).
    after_commit(
        session,
        lambda: dispatch_after_admission(
            settings.database_url,
            QueueKey(job.engine, job.pool, job.priority),
            settings.dispatch_ahead,
        ),
    )
    after_commit(session, lambda: send_webhooks(deliveries))
    after_commit(session, lambda: JOBS_SUBMITTED.labels(job.engine, caller.tenant_name).inc())
    del tenant
    return job, False


def _replay(existing: Job, digest: str) -> Job:
    if existing.request_hash != digest:
        raise IdempotencyConflict(
            "this Idempotency-Key was already used with a different request body"
        )
    return existing

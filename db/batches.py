"""Batches: many jobs submitted together. Only flushes; the caller's scope commits.

Items are ordinary jobs (`batch_id`, `batch_index`), inserted in bulk, undispatched, priority
`batch`: the fair-share dispatcher publishes them like any backlog. A batch is *complete* once no
item is queued or running; `completed_at` is set once, fenced, by whichever transaction sees the
last item end (the finish or cancel path, or the reconciler's backstop), together with the
`batch.completed` webhook event.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import exists, func, insert, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from core.enums import DeliveryStatus, JobStatus, WebhookEvent
from core.errors import BatchNotCancelable, BatchNotFound
from db.models import Batch, Job, WebhookDelivery
from db.session import after_commit
from db.webhooks import new_message_id

ACTIVE = (JobStatus.queued.value, JobStatus.running.value)
# Rows per INSERT statement (psycopg2 sends each as one round trip).
INSERT_CHUNK = 2000


def insert_batch(session: Session, batch: Batch, rows: list[dict[str, Any]]) -> None:
    """The batch row and its items (plain column dicts), in a few multi-row INSERTs."""
    session.add(batch)
    session.flush()
    for start in range(0, len(rows), INSERT_CHUNK):
        session.execute(insert(Job), rows[start : start + INSERT_CHUNK])


def find_by_idempotency_key(session: Session, tenant_id: uuid.UUID, key: str) -> Batch | None:
    """Keys are per tenant, as for jobs: another tenant's use of the same key is not seen."""
    return session.scalar(
        select(Batch).where(Batch.tenant_id == tenant_id, Batch.idempotency_key == key)
    )


def get_batch(session: Session, batch_id: uuid.UUID, tenant_id: uuid.UUID | None) -> Batch:
    stmt = select(Batch).where(Batch.id == batch_id)
    if tenant_id is not None:
        stmt = stmt.where(Batch.tenant_id == tenant_id)
    batch = session.scalar(stmt.execution_options(populate_existing=True))
    if batch is None:
        raise BatchNotFound(f"no batch with id {batch_id}")
    return batch


def status_counts(session: Session, batch_id: uuid.UUID) -> dict[str, int]:
    rows = session.execute(
        select(Job.status, func.count()).where(Job.batch_id == batch_id).group_by(Job.status)
    ).all()
    counts = {s.value: 0 for s in JobStatus}
    counts.update({r[0]: int(r[1]) for r in rows})
    return counts


def list_batches(
    session: Session, tenant_id: uuid.UUID | None, limit: int, before: datetime | None
) -> list[Batch]:
    stmt = select(Batch).order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit)
    if tenant_id is not None:
        stmt = stmt.where(Batch.tenant_id == tenant_id)
    if before is not None:
        stmt = stmt.where(Batch.created_at < before)
    return list(session.scalars(stmt))


ITEM_COLUMNS = (
    Job.batch_index,
    Job.id,
    Job.status,
    Job.error_code,
    Job.error_message,
    Job.result_duration_s,
    Job.result_key,
    Job.result_format,
    Job.result_sample_rate,
    Job.tenant_id,
)


def items_page(session: Session, batch_id: uuid.UUID, after: int, limit: int) -> list[Any]:
    """Items with `batch_index > after`, in index order (keyset on ix_jobs_batch_id_batch_index)."""
    return list(
        session.execute(
            select(*ITEM_COLUMNS)
            .where(Job.batch_id == batch_id, Job.batch_index > after)
            .order_by(Job.batch_index)
            .limit(limit)
        ).all()
    )


def iter_items(database_url: str, batch_id: uuid.UUID, page: int = 1000) -> Iterator[Any]:
    """Every item in order, one short transaction per page: a slow reader of a streamed
    manifest never holds a connection between pages."""
    from db.session import session_scope

    after = -1
    while True:
        with session_scope(database_url) as s:
            rows = items_page(s, batch_id, after, page)
        yield from rows
        if len(rows) < page:
            return
        after = rows[-1].batch_index


def cancel_batch(session: Session, batch: Batch, base_url: str) -> int:
    """Cancel every queued or running item (a running worker stops at its next segment).
    Items get no webhook events of their own; the batch's `batch.completed` follows."""
    if batch.completed_at is not None:
        raise BatchNotCancelable(f"batch {batch.id} is already complete")
    # Items first, then the batch row (the order the finish path takes): no deadlock.
    n = cast(
        "CursorResult[Any]",
        session.execute(
            update(Job)
            .where(Job.batch_id == batch.id, Job.status.in_(ACTIVE))
            .values(status=JobStatus.canceled.value, finished_at=func.now(), lease_expires_at=None)
            .execution_options(synchronize_session=False)
        ),
    ).rowcount
    session.execute(
        update(Batch)
        .where(Batch.id == batch.id, Batch.canceled_at.is_(None))
        .values(canceled_at=func.now())
    )
    try_complete(session, batch.id, base_url)
    return int(n or 0)


def try_complete(session: Session, batch_id: uuid.UUID, base_url: str) -> bool:
    """Mark the batch complete if no item is active any more; the `batch.completed` event (and
    the concatenation, if asked) are sent after commit. True if this call completed it.

    The batch row is locked first, so two transactions finishing the last two items run this
    one after the other and the second sees the first's committed item (READ COMMITTED takes a
    new snapshot per statement): the event is written exactly once."""
    locked = session.scalar(select(Batch.id).where(Batch.id == batch_id).with_for_update())
    if locked is None:
        return False
    active = exists().where(Job.batch_id == batch_id, Job.status.in_(ACTIVE))
    done = session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.completed_at.is_(None), ~active)
        .values(completed_at=func.now())
        .returning(Batch.id)
    ).scalar_one_or_none()
    if done is None:
        return False
    batch = get_batch(session, batch_id, None)
    counts = status_counts(session, batch_id)
    if batch.concatenate and counts[JobStatus.succeeded.value] == batch.items:
        batch.audio_status = "pending"
        after_commit(session, lambda: _send_concatenate(batch_id))
    elif batch.concatenate:
        batch.audio_status = "failed"
        batch.audio_error = "not every item succeeded; nothing to concatenate"
    session.flush()
    delivery = add_batch_event(session, batch, counts, base_url)
    if delivery:
        from tasks.send import send_webhooks  # the facade: ids only, after commit

        after_commit(session, lambda: send_webhooks([delivery]))
    return True


def _send_concatenate(batch_id: uuid.UUID) -> None:
    from tasks.send import send_concatenate_batch

    send_concatenate_batch(batch_id)


def batch_view(batch: Batch, counts: dict[str, int], base_url: str) -> dict[str, Any]:
    base = f"{base_url.rstrip('/')}/v1/batches/{batch.id}"
    active = counts.get("queued", 0) + counts.get("running", 0)
    status = "completed" if batch.completed_at else "canceling" if batch.canceled_at else "active"
    if batch.completed_at and batch.canceled_at:
        status = "canceled"
    if not batch.completed_at and not active:
        status = "completing"
    return {
        "id": str(batch.id),
        "status": status,
        "items": batch.items,
        "total_chars": batch.total_chars,
        "counts": counts,
        "concatenate": batch.concatenate,
        "metadata": batch.metadata_ or {},
        "created_at": _iso(batch.created_at),
        "canceled_at": _iso(batch.canceled_at),
        "completed_at": _iso(batch.completed_at),
        "audio": {
            "status": batch.audio_status,
            "error": batch.audio_error,
            "duration_s": batch.audio_duration_s,
            "url": f"{base}/audio" if batch.audio_status == "ready" else None,
        }
        if batch.concatenate
        else None,
        "links": {
            "self": base,
            "items": f"{base}/items",
            "manifest": f"{base}/manifest",
            "cancel": f"{base}/cancel",
        },
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def add_batch_event(
    session: Session, batch: Batch, counts: dict[str, int], base_url: str
) -> str | None:
    if not batch.webhook_url:
        return None
    delivery = WebhookDelivery(
        id=new_message_id(),
        job_id=None,
        batch_id=batch.id,
        url=batch.webhook_url,
        event=WebhookEvent.batch_completed.value,
        payload={
            "type": WebhookEvent.batch_completed.value,
            "timestamp": datetime.now(UTC).isoformat(),
            "data": batch_view(batch, counts, base_url),
        },
        status=DeliveryStatus.pending.value,
        dispatched_at=func.now(),
    )
    session.add(delivery)
    session.flush()
    return delivery.id


def open_batches_done(session: Session, limit: int = 100) -> list[uuid.UUID]:
    """The reconciler's backstop: open batches with no active item left."""
    active = exists().where(Job.batch_id == Batch.id, Job.status.in_(ACTIVE))
    return list(
        session.scalars(select(Batch.id).where(Batch.completed_at.is_(None), ~active).limit(limit))
    )


def stale_concatenations(session: Session, grace_seconds: float) -> list[uuid.UUID]:
    """Complete batches whose concatenation message seems lost (pending past the grace)."""
    cutoff = func.now() - timedelta(seconds=grace_seconds)
    return list(
        session.scalars(
            select(Batch.id).where(Batch.audio_status == "pending", Batch.completed_at < cutoff)
        )
    )


def claim_concatenation(session: Session, batch_id: uuid.UUID) -> Batch | None:
    found = session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.audio_status == "pending")
        .values(audio_status="running")
        .returning(Batch.id)
    ).scalar_one_or_none()
    return None if found is None else get_batch(session, batch_id, None)

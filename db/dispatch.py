"""Fair share: which queued jobs get a broker message next. Only flushes; the caller commits and
then publishes (tasks/dispatch.py).

A job is *dispatched* once its message is sent (`dispatched_at` set) and *in flight* while it is
queued and dispatched (a message waiting in Redis, or lost). Each synthesis queue (engine, pool,
priority) holds at most `ahead` in-flight jobs; the rest of every backlog waits here, in
PostgreSQL, undispatched. When a queue has room, the next job goes to the tenant with the least
load (running + in-flight jobs on that engine and pool) per unit of weight, oldest job first
within a tenant; ties go to the tenant whose next job is oldest. So a new tenant's job waits
behind at most `ahead` messages, not behind another tenant's whole backlog.
"""

from __future__ import annotations

import hashlib
import heapq
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, func, or_, select, true, update
from sqlalchemy.orm import Session

from core.enums import JobStatus
from db.jobs import Redispatch
from db.models import Job, Tenant


@dataclass(frozen=True)
class QueueKey:
    engine: str
    pool: str
    priority: str


def _lock_key(key: QueueKey) -> int:
    name = f"dispatch|{key.engine}|{key.pool}|{key.priority}"
    digest = hashlib.blake2b(name.encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def _queued_in(key: QueueKey) -> list[ColumnElement[bool]]:
    return [
        Job.status == JobStatus.queued.value,
        Job.engine == key.engine,
        Job.pool == key.pool,
        Job.priority == key.priority,
    ]


def waiting_queues(session: Session) -> list[QueueKey]:
    """The queues that have undispatched jobs."""
    rows = session.execute(
        select(Job.engine, Job.pool, Job.priority)
        .where(Job.status == JobStatus.queued.value, Job.dispatched_at.is_(None))
        .distinct()
    ).all()
    return [QueueKey(r.engine, r.pool, r.priority) for r in rows]


def pick(session: Session, key: QueueKey, ahead: int) -> list[Redispatch]:
    """Mark the next jobs of one queue dispatched, as many as it has room for, fairly across
    tenants; return them for publishing after commit."""
    # One dispatcher per queue at a time (API processes, workers, the reconciler): two that
    # counted the same room would each fill it. Held until commit; the work under it is short.
    session.execute(select(func.pg_advisory_xact_lock(_lock_key(key))))
    in_flight = session.execute(
        select(func.count())
        .select_from(Job)
        .where(*_queued_in(key), Job.dispatched_at.is_not(None))
    ).scalar_one()
    room = ahead - in_flight
    if room <= 0:
        return []
    heads = _heads(session, key)
    if not heads:
        return []
    load = _load(session, key)
    # (load / weight, oldest waiting job, tenant): the lightest tenant first.
    order = [(load.get(t, 0) / w, created, str(t), t, w) for t, (w, created) in heads.items()]
    heapq.heapify(order)
    picked: list[Redispatch] = []
    while order and len(picked) < room:
        _, _, _, tenant_id, weight = heapq.heappop(order)
        rows = session.execute(
            select(Job.id, Job.engine, Job.priority, Job.pool, Job.created_at)
            .where(*_undispatched(key), Job.tenant_id == tenant_id)
            .order_by(Job.created_at, Job.id)
            .limit(2)
            .with_for_update(skip_locked=True)
        ).all()
        if not rows:
            continue
        job = rows[0]
        session.execute(update(Job).where(Job.id == job.id).values(dispatched_at=func.now()))
        picked.append(Redispatch(job.id, job.engine, job.priority, job.pool))
        load[tenant_id] = load.get(tenant_id, 0) + 1
        if len(rows) > 1:
            share = load[tenant_id] / weight
            heapq.heappush(order, (share, rows[1].created_at, str(tenant_id), tenant_id, weight))
    return picked


def _undispatched(key: QueueKey) -> list[ColumnElement[bool]]:
    return [*_queued_in(key), Job.dispatched_at.is_(None)]


def _heads(session: Session, key: QueueKey) -> dict[uuid.UUID, tuple[int, datetime]]:
    """tenant -> (weight, created_at of its oldest undispatched job) for tenants waiting here.

    One index probe per tenant (ix_jobs_undispatched, migration 0006), however long a backlog."""
    head = (
        select(Job.created_at)
        .where(*_undispatched(key), Job.tenant_id == Tenant.id)
        .order_by(Job.created_at)
        .limit(1)
        .correlate(Tenant)
        .lateral()
    )
    rows = session.execute(select(Tenant.id, Tenant.weight, head.c.created_at).join(head, true()))
    return {r[0]: (max(1, int(r[1] or 1)), r[2]) for r in rows}


def _load(session: Session, key: QueueKey) -> dict[uuid.UUID, int]:
    """tenant -> running + in-flight jobs on this engine and pool (every priority)."""
    rows = session.execute(
        select(Job.tenant_id, func.count())
        .where(
            Job.engine == key.engine,
            Job.pool == key.pool,
            or_(
                Job.status == JobStatus.running.value,
                and_(Job.status == JobStatus.queued.value, Job.dispatched_at.is_not(None)),
            ),
        )
        .group_by(Job.tenant_id)
    ).all()
    return {r[0]: int(r[1]) for r in rows}

"""The counts behind per-tenant limits, read from PostgreSQL so they hold across API processes
and restarts. `lock_tenant` first: it serialises one tenant's admissions (the lock is held until
the request commits), so parallel requests cannot all count the same figure and overshoot."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.enums import JobStatus
from db.models import Job, Tenant, Voice

WINDOW = timedelta(seconds=60)


def get_tenant(session: Session, tenant_id: uuid.UUID) -> Tenant | None:
    """The tenant row, unlocked (its limits: whether there is anything to lock for)."""
    return session.get(Tenant, tenant_id)


def lock_tenant(session: Session, tenant_id: uuid.UUID) -> Tenant | None:
    """The tenant row, locked FOR UPDATE until the caller's transaction ends."""
    return session.scalar(
        select(Tenant)
        .where(Tenant.id == tenant_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def db_now(session: Session) -> datetime:
    """The transaction's clock (`now()`), the one `created_at` was written with."""
    return session.execute(select(func.now())).scalar_one()


def active_jobs(session: Session, tenant_id: uuid.UUID) -> int:
    return session.execute(
        select(func.count())
        .select_from(Job)
        .where(
            Job.tenant_id == tenant_id,
            Job.status.in_([JobStatus.queued.value, JobStatus.running.value]),
        )
    ).scalar_one()


def jobs_in_window(session: Session, tenant_id: uuid.UUID, now: datetime) -> int:
    """How many jobs the tenant submitted in the minute before `now` (a batch's items are not
    counted: a batch is one submission, api/batch_submit.py)."""
    return session.execute(
        select(func.count())
        .select_from(Job)
        .where(Job.tenant_id == tenant_id, Job.created_at > now - WINDOW, Job.batch_id.is_(None))
    ).scalar_one()


def nth_in_window(session: Session, tenant_id: uuid.UUID, now: datetime, n: int) -> datetime:
    """created_at of the tenant's n-th oldest job (from 0) in the minute before `now`."""
    return session.execute(
        select(Job.created_at)
        .where(Job.tenant_id == tenant_id, Job.created_at > now - WINDOW, Job.batch_id.is_(None))
        .order_by(Job.created_at)
        .offset(n)
        .limit(1)
    ).scalar_one()


def chars_since(session: Session, tenant_id: uuid.UUID, since: datetime) -> int:
    """Characters of text the tenant submitted since `since` (every job, whatever its status)."""
    total = session.execute(
        select(func.coalesce(func.sum(func.char_length(Job.text)), 0)).where(
            Job.tenant_id == tenant_id, Job.created_at >= since
        )
    ).scalar_one()
    return int(total)


def voice_count(session: Session, tenant_id: uuid.UUID) -> int:
    return session.execute(
        select(func.count()).select_from(Voice).where(Voice.tenant_id == tenant_id)
    ).scalar_one()

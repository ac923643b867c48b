"""Per-tenant limits, checked at admission before anything is written.

Each check of a tenant with a limit locks the tenant's row (`SELECT ... FOR UPDATE`) and then
counts in PostgreSQL, inside the request's transaction: the lock is held until the request
commits its new row, so N parallel requests from one tenant are counted one after another and
cannot overshoot, whichever API process serves them (and that tenant's admissions run one commit
at a time). A tenant with no limit at all is not locked. A refusal raises before any write; the
request's rollback releases the lock.

Limits: a tenant's own value (tenants table), else the farm's `VOICEFARM_TENANT_*`; 0 or None is
unlimited. "Active jobs" are queued + running ones (the issue's "concurrent running jobs",
counted at admission, where a job can still be refused).
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from core.errors import QuotaExceeded
from core.settings import Settings
from db import quotas as q
from db.models import Tenant

# Active jobs free up when one finishes: a client is told to look again this soon.
ACTIVE_RETRY_AFTER = 5


def _limit(tenant: Tenant | None, own: str, default: int) -> int:
    value = getattr(tenant, own, None) if tenant is not None else None
    return default if value is None else int(value)


def _seconds(delta: timedelta) -> int:
    return max(1, math.ceil(delta.total_seconds()))


def _name(tenant: Tenant | None, tenant_id: uuid.UUID) -> str:
    return repr(tenant.name) if tenant is not None else str(tenant_id)


def check_job(session: Session, settings: Settings, tenant_id: uuid.UUID, chars: int) -> None:
    """Refuse (429 quota_exceeded) a job the tenant's limits do not leave room for."""
    tenant = q.get_tenant(session, tenant_id)
    active = _limit(tenant, "max_running", settings.tenant_max_active_jobs)
    per_minute = _limit(tenant, "jobs_per_minute", settings.tenant_jobs_per_minute)
    per_day = _limit(tenant, "chars_per_day", settings.tenant_chars_per_day)
    if not (active or per_minute or per_day):
        # Nothing to count, so nothing to serialise: a tenant without limits is not locked, and
        # its admissions commit in parallel (PostgreSQL groups their WAL flushes). Locked, they
        # were one commit (one fsync) at a time: about 90 jobs/s whatever the clients or API
        # processes (docs/BENCHMARKS.md, Admission).
        return
    tenant = q.lock_tenant(session, tenant_id)  # re-read under the lock: limits may have moved
    who = _name(tenant, tenant_id)
    active = _limit(tenant, "max_running", settings.tenant_max_active_jobs)
    if active:
        running = q.active_jobs(session, tenant_id)
        if running >= active:
            raise QuotaExceeded(
                f"tenant {who} has {running} active (queued or running) jobs; its limit "
                f"max_active_jobs is {active}. Retry when one finishes or cancel one.",
                retry_after=ACTIVE_RETRY_AFTER,
            )
    per_minute = _limit(tenant, "jobs_per_minute", settings.tenant_jobs_per_minute)
    per_day = _limit(tenant, "chars_per_day", settings.tenant_chars_per_day)
    if not (per_minute or per_day):
        return
    now = q.db_now(session)
    if per_minute:
        recent = q.jobs_in_window(session, tenant_id, now)
        if recent >= per_minute:
            # The window has room again once enough of its oldest jobs age out of it.
            frees = q.nth_in_window(session, tenant_id, now, recent - per_minute)
            raise QuotaExceeded(
                f"tenant {who} submitted {recent} jobs in the last minute; its limit "
                f"jobs_per_minute is {per_minute}.",
                retry_after=_seconds(frees + q.WINDOW - now),
            )
    if per_day:
        midnight = _utc_midnight(now)
        used = q.chars_since(session, tenant_id, midnight)
        if used + chars > per_day:
            raise QuotaExceeded(
                f"tenant {who} has submitted {used} characters today (UTC) and this job has "
                f"{chars}; its limit chars_per_day is {per_day}. The count starts again at "
                "00:00 UTC.",
                retry_after=_seconds(midnight + timedelta(days=1) - now),
            )


def check_voice(session: Session, settings: Settings, tenant_id: uuid.UUID) -> None:
    """Refuse (429 quota_exceeded) a new voice past the tenant's `max_voices`."""
    tenant = q.lock_tenant(session, tenant_id)
    limit = _limit(tenant, "max_voices", settings.tenant_max_voices)
    if not limit:
        return
    voices = q.voice_count(session, tenant_id)
    if voices >= limit:
        raise QuotaExceeded(
            f"tenant {_name(tenant, tenant_id)} has {voices} voices; its limit max_voices is "
            f"{limit}. Delete one (DELETE /v1/voices/{{id}}) to make room.",
            retry_after=ACTIVE_RETRY_AFTER,
        )


def _utc_midnight(now: datetime) -> datetime:
    utc = now.astimezone(UTC)
    return utc.replace(hour=0, minute=0, second=0, microsecond=0)

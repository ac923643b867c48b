"""Webhook deliveries: written in the same transaction as the job change they announce."""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from core.enums import DeliveryStatus, WebhookEvent
from db.models import Job, WebhookAttempt, WebhookDelivery

__all__ = ["WebhookDelivery", "add_event", "claim_delivery", "record_attempt"]
from db.views import job_view


def new_message_id() -> str:
    return "msg_" + secrets.token_urlsafe(18)


def add_event(session: Session, job: Job, event: WebhookEvent, base_url: str) -> str | None:
    """Queue `event` for the job's webhook; returns the delivery id, or None without a webhook."""
    if not job.webhook_url:
        return None
    disabled = session.scalar(
        select(func.count())
        .select_from(WebhookDelivery)
        .where(
            WebhookDelivery.job_id == job.id,
            WebhookDelivery.status == DeliveryStatus.disabled,
        )
    )
    if disabled:
        return None  # the receiver answered 410 Gone: stop sending to it
    session.flush()
    delivery = WebhookDelivery(
        id=new_message_id(),
        job_id=job.id,
        url=job.webhook_url,
        event=event.value,
        payload={
            "type": event.value,
            "timestamp": datetime.now(UTC).isoformat(),
            "data": job_view(job, base_url),
        },
        status=DeliveryStatus.pending.value,
        dispatched_at=func.now(),
    )
    session.add(delivery)
    session.flush()
    return delivery.id


def _pending_and_due(now: Any) -> ColumnElement[bool]:
    return and_(
        WebhookDelivery.status == DeliveryStatus.pending, WebhookDelivery.next_attempt_at <= now
    )


def _sending_lock_expired(now: Any) -> ColumnElement[bool]:
    return and_(
        WebhookDelivery.status == DeliveryStatus.sending, WebhookDelivery.locked_until < now
    )


def signing_secret(session: Session, delivery: WebhookDelivery) -> str | None:
    """The secret of the tenant that owns the delivery's job; None: the farm's secret."""
    from db.models import Batch, Job, Tenant

    if delivery.job_id is None:  # a batch's own event: the batch's tenant
        secret: str | None = session.scalar(
            select(Tenant.webhook_secret)
            .join(Batch, Batch.tenant_id == Tenant.id)
            .where(Batch.id == delivery.batch_id)
        )
        return secret
    secret = session.scalar(
        select(Tenant.webhook_secret)
        .join(Job, Job.tenant_id == Tenant.id)
        .where(Job.id == delivery.job_id)
    )
    return secret


def claim_delivery(
    session: Session, delivery_id: str, lock_seconds: float
) -> WebhookDelivery | None:
    """Take a due delivery for one attempt; None if another worker has it or it is not due."""
    now = func.now()
    row = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            or_(_pending_and_due(now), _sending_lock_expired(now)),
        )
        .values(
            status=DeliveryStatus.sending.value,
            attempts=WebhookDelivery.attempts + 1,
            locked_until=now + timedelta(seconds=lock_seconds),
        )
        .returning(WebhookDelivery.id)
    ).scalar_one_or_none()
    if row is None:
        return None
    delivery = session.get(WebhookDelivery, delivery_id, populate_existing=True)
    return delivery


def record_attempt(
    session: Session,
    delivery: WebhookDelivery,
    attempt: int,
    *,
    status_code: int | None,
    error: str | None,
    duration_ms: int,
    outcome: DeliveryStatus,
    retry_in: float | None,
) -> bool:
    """Log the attempt and move the delivery on. Fenced by the attempt number: if the lock ran
    out and another worker took the delivery meanwhile, only the history row is written."""
    session.add(
        WebhookAttempt(
            delivery_id=delivery.id,
            attempt=attempt,
            duration_ms=duration_ms,
            status_code=status_code,
            error=error,
            succeeded=outcome == DeliveryStatus.delivered,
        )
    )
    values: dict[str, Any] = {
        "status": outcome.value,
        "last_status_code": status_code,
        "locked_until": None,
    }
    if outcome == DeliveryStatus.delivered:
        values["delivered_at"] = func.now()
    if outcome == DeliveryStatus.pending and retry_in is not None:
        values["next_attempt_at"] = func.now() + timedelta(seconds=retry_in)
        values["dispatched_at"] = None
    updated = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery.id,
            WebhookDelivery.status == DeliveryStatus.sending,
            WebhookDelivery.attempts == attempt,
        )
        .values(**values)
        .returning(WebhookDelivery.id)
    ).scalar_one_or_none()
    if updated is None:
        return False
    if outcome == DeliveryStatus.disabled and delivery.job_id is not None:
        # 410 Gone: the receiver wants nothing more for this job; drop what is still waiting.
        session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.job_id == delivery.job_id,
                WebhookDelivery.url == delivery.url,
                WebhookDelivery.status == DeliveryStatus.pending,
            )
            .values(status=DeliveryStatus.disabled.value)
        )
    return True


def due_deliveries(session: Session, grace_seconds: float = 30.0, limit: int = 100) -> list[str]:
    """Deliveries that are due and not already handed to a worker (or whose worker vanished)."""
    now = func.now()
    ids = session.scalars(
        select(WebhookDelivery.id)
        .where(
            or_(
                _pending_and_due(now)
                & (
                    WebhookDelivery.dispatched_at.is_(None)
                    | (WebhookDelivery.dispatched_at < now - timedelta(seconds=grace_seconds))
                ),
                _sending_lock_expired(now),
            )
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    if ids:
        session.execute(
            update(WebhookDelivery).where(WebhookDelivery.id.in_(ids)).values(dispatched_at=now)
        )
    return list(ids)


def deliveries_for_job(session: Session, job_id: uuid.UUID) -> list[WebhookDelivery]:
    return list(
        session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.job_id == job_id)
            .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
        )
    )


def attempts_for(session: Session, delivery_ids: list[str]) -> list[WebhookAttempt]:
    if not delivery_ids:
        return []
    return list(
        session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(delivery_ids))
            .order_by(WebhookAttempt.id)
        )
    )


def replay_delivery(session: Session, delivery_id: str, job_id: uuid.UUID) -> WebhookDelivery:
    """Make a delivery of `job_id` due again now (a new attempt, the same `webhook-id`), whatever
    its state; refused while an attempt is in flight. The caller sends it after commit."""
    from core.errors import DeliveryInFlight, DeliveryNotFound

    d = session.scalar(
        select(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.job_id == job_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if d is None:
        raise DeliveryNotFound(f"job {job_id} has no webhook delivery {delivery_id}")
    if d.status == DeliveryStatus.sending and d.locked_until and d.locked_until > datetime.now(UTC):
        raise DeliveryInFlight(f"delivery {delivery_id} is being attempted now; retry shortly")
    d.status = DeliveryStatus.pending.value
    d.next_attempt_at = func.now()  # type: ignore[assignment]
    d.dispatched_at = func.now()  # type: ignore[assignment]
    d.locked_until = None
    session.flush()
    session.refresh(d)
    return d


def disabled_endpoints(session: Session, tenant_id: uuid.UUID | None) -> list[Any]:
    """(url, deliveries, last disabled) per URL that answered 410 for the tenant's jobs."""
    stmt = (
        select(
            WebhookDelivery.url,
            func.count().label("deliveries"),
            func.max(WebhookDelivery.created_at).label("last_at"),
        )
        .join(Job, Job.id == WebhookDelivery.job_id)
        .where(WebhookDelivery.status == DeliveryStatus.disabled)
        .group_by(WebhookDelivery.url)
        .order_by(WebhookDelivery.url)
    )
    if tenant_id is not None:
        stmt = stmt.where(Job.tenant_id == tenant_id)
    return list(session.execute(stmt).all())


def enable_endpoint(session: Session, tenant_id: uuid.UUID | None, url: str) -> int:
    """Send to `url` again: its disabled deliveries (the tenant's jobs) become `failed`, so new
    events for those jobs go out; each old one can be replayed with the retry route."""
    jobs = select(Job.id)
    if tenant_id is not None:
        jobs = jobs.where(Job.tenant_id == tenant_id)
    n = cast(
        "CursorResult[Any]",
        session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.url == url,
                WebhookDelivery.status == DeliveryStatus.disabled,
                WebhookDelivery.job_id.in_(jobs),
            )
            .values(status=DeliveryStatus.failed.value)
            .execution_options(synchronize_session=False)
        ),
    ).rowcount
    return int(n or 0)

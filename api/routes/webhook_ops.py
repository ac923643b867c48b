"""Webhook operations: replay a delivery, list and re-enable endpoints disabled by a 410."""

from __future__ import annotations

import uuid
from datetime import datetime

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from api.deps import CallerDep, SessionDep, json_response
from api.errors import responses
from api.schemas import WebhookDeliveryOut
from core.errors import (
    DeliveryInFlight,
    DeliveryNotFound,
    JobNotFound,
    TooManyAuthFailures,
    Unauthorized,
    WebhookEndpointNotDisabled,
)
from db import jobs as q
from db import webhooks as wq
from db.session import after_commit
from tasks.send import send_webhooks

router = APIRouter(tags=["webhooks"], responses=responses(Unauthorized, TooManyAuthFailures))


class DisabledEndpoint(BaseModel):
    url: str
    deliveries: int = Field(description="Deliveries held back since the receiver answered 410.")
    last_at: datetime


class EnableRequest(BaseModel):
    url: str = Field(max_length=4096)


class EnableResult(BaseModel):
    url: str
    enabled: int = Field(description="Disabled deliveries released (now `failed`, replayable).")


@router.post(
    "/v1/jobs/{job_id}/webhooks/{delivery_id}/retry",
    status_code=202,
    response_model=WebhookDeliveryOut,
    responses=responses(JobNotFound, DeliveryNotFound, DeliveryInFlight),
)
def retry_delivery(
    job_id: uuid.UUID, delivery_id: str, session: SessionDep, caller: CallerDep
) -> Response:
    """Replay one delivery now: a new attempt with the same `webhook-id`, whatever its state."""
    q.get_job(session, job_id, tenant_id=caller.sees)
    d = wq.replay_delivery(session, delivery_id, job_id)
    after_commit(session, lambda: send_webhooks([delivery_id]))
    out = WebhookDeliveryOut(
        id=d.id,
        event=d.event,
        url=d.url,
        status=d.status,
        attempts=d.attempts,
        next_attempt_at=d.next_attempt_at,
        delivered_at=d.delivered_at,
        history=[],
    )
    return json_response(out, 202)


@router.get("/v1/webhooks/disabled", response_model=list[DisabledEndpoint])
def list_disabled(session: SessionDep, caller: CallerDep) -> Response:
    """Receiver URLs that answered 410 Gone for this tenant's jobs (no more events go there)."""
    rows = wq.disabled_endpoints(session, caller.sees)
    return json_response(
        [DisabledEndpoint(url=r.url, deliveries=r.deliveries, last_at=r.last_at) for r in rows]
    )


@router.post(
    "/v1/webhooks/enable",
    response_model=EnableResult,
    responses=responses(WebhookEndpointNotDisabled),
)
def enable(body: EnableRequest, session: SessionDep, caller: CallerDep) -> Response:
    """Re-enable a disabled receiver URL: later events of its jobs are sent again."""
    n = wq.enable_endpoint(session, caller.sees, body.url)
    if not n:
        raise WebhookEndpointNotDisabled(f"{body.url} is not disabled for this tenant")
    return json_response(EnableResult(url=body.url, enabled=n))

"""`webhooks.deliver`: one signed POST per call; retries are scheduled in the row, not in Redis.

A failed attempt sets `next_attempt_at` from the Standard Webhooks schedule (or a longer
`Retry-After`); the reconciler dispatches it when due. Hours-long countdowns never sit in the
broker, where Redis' visibility timeout would redeliver them early.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
from datetime import UTC, datetime

import httpx

from core.enums import DeliveryStatus, TaskName
from core.errors import VoicefarmError
from core.settings import get_settings
from core.webhooks import pinned_request, resolve_webhook_target, retry_delay, sign
from db import webhooks as wq
from db.session import session_scope
from tasks.app import celery_app

log = logging.getLogger("voicefarm.webhooks")
USER_AGENT = "voicefarm-webhooks/0.1"
MAX_RETRY_AFTER = 24 * 3600.0


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, (when - datetime.now(UTC)).total_seconds()), MAX_RETRY_AFTER)


@celery_app.task(name=TaskName.deliver_webhook.value, ignore_result=True)
def deliver(delivery_id: str) -> None:
    settings = get_settings()
    with session_scope(settings.database_url) as s:
        # httpx's timeout applies per phase (connect, write, each read): lock for several.
        d = wq.claim_delivery(s, delivery_id, lock_seconds=settings.webhook_timeout_seconds * 6)
        if d is None:
            return
        url, payload, attempt = d.url, d.payload, d.attempts
        secret = wq.signing_secret(s, d) or settings.webhook_secret.get_secret_value()

    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    ts = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": delivery_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, delivery_id, ts, body),
    }
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None
    t0 = time.perf_counter()
    try:
        # Checked again at send time (the name may resolve elsewhere than at admission), and the
        # connection goes to the address that passed the check.
        target = resolve_webhook_target(url, allow_private=settings.webhook_allow_private)
        send_url, extra_headers, extensions = pinned_request(target)
        # Status and headers only: a receiver that streams an endless body costs nothing.
        with (
            httpx.Client(timeout=settings.webhook_timeout_seconds) as client,
            client.stream(
                "POST",
                send_url,
                content=body,
                headers={**headers, **extra_headers},
                follow_redirects=False,
                extensions=extensions,
            ) as resp,
        ):
            status_code = resp.status_code
            retry_after = parse_retry_after(resp.headers.get("retry-after"))
    except VoicefarmError as exc:
        error = f"{exc.code}: {exc.message}"
    except Exception as exc:  # network errors, bad URLs: a failed attempt, never a stuck row
        error = f"{type(exc).__name__}: {exc}"[:500]
    duration_ms = int((time.perf_counter() - t0) * 1000)

    retry_in: float | None = None
    if status_code is not None and 200 <= status_code < 300:
        outcome = DeliveryStatus.delivered
    elif status_code == 410:
        outcome = DeliveryStatus.disabled
    else:
        retry_in = retry_delay(
            settings.webhook_retry_schedule, attempt + 1, settings.webhook_jitter
        )
        if retry_in is not None and retry_after is not None:
            retry_in = max(retry_in, retry_after)
        outcome = DeliveryStatus.pending if retry_in is not None else DeliveryStatus.failed
        if error is None:
            error = f"receiver answered HTTP {status_code}"

    from workers import metrics  # prometheus_client only; no engine code

    metrics.WEBHOOK_DELIVERIES.labels(outcome.value).inc()
    with session_scope(settings.database_url) as s:
        d = s.get(wq.WebhookDelivery, delivery_id)
        if d is None:
            return  # the job was deleted (retention) while this attempt was in flight
        wq.record_attempt(
            s,
            d,
            attempt,
            status_code=status_code,
            error=error,
            duration_ms=duration_ms,
            outcome=outcome,
            retry_in=retry_in,
        )
    log.info(
        "event=webhooks.attempt delivery=%s attempt=%d status=%s outcome=%s retry_in=%s",
        delivery_id,
        attempt,
        status_code,
        outcome.value,
        retry_in,
    )

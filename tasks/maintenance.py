"""`maintenance.reconcile` (beat, every few seconds): the backstop that makes jobs unlosable.

- running jobs whose lease expired (worker killed or hung) go back to queued, or fail when out of
  attempts;
- queued jobs nobody claimed within the grace period are published again (lost message, Redis
  restarted empty);
- webhook deliveries that are due (retries, lost messages) are dispatched.
"""

from __future__ import annotations

import logging

from core.enums import TaskName
from core.settings import get_settings
from db import jobs as q
from db import webhooks as wq
from db.session import after_commit, session_scope
from tasks.app import celery_app
from tasks.send import send_synthesize, send_webhooks

log = logging.getLogger("voicefarm.maintenance")


@celery_app.task(name=TaskName.reconcile.value, ignore_result=True)
def reconcile() -> dict[str, int]:
    settings = get_settings()
    with session_scope(settings.database_url) as s:
        expired, deliveries = q.requeue_expired_leases(s, settings.public_base_url)
        stale = q.stale_queued(s, settings.requeue_grace_seconds)
        due = wq.due_deliveries(s, grace_seconds=settings.requeue_grace_seconds)
        redispatch = expired + stale

        def publish() -> None:
            for r in redispatch:
                send_synthesize(r.job_id, r.engine, r.priority)
            send_webhooks(deliveries + due)

        after_commit(s, publish)
    counts = {"expired": len(expired), "republished": len(stale), "webhooks": len(due)}
    if any(counts.values()):
        log.info("event=maintenance.reconciled %s", " ".join(f"{k}={v}" for k, v in counts.items()))
    return counts

"""`maintenance.reconcile` (beat, every few seconds): the backstop that makes jobs unlosable.

- running jobs whose lease expired (worker killed or hung) go back to queued, or fail when out of
  attempts;
- queued jobs nobody claimed within the grace period are published again when their engine's
  queue is empty (the message was lost, or Redis restarted empty);
- webhook deliveries that are due (retries, lost messages) are dispatched.
"""

from __future__ import annotations

import functools
import logging

from core.enums import Priority, TaskName, synth_queue
from core.settings import get_settings
from core.storage import Storage, get_storage
from db import jobs as q
from db import webhooks as wq
from db.session import after_commit, session_scope
from tasks.app import celery_app
from tasks.send import send_synthesize, send_webhooks

log = logging.getLogger("voicefarm.maintenance")


def queue_size(name: str) -> int:
    """Messages waiting in a broker queue; a queue the broker doesn't know holds none."""
    try:
        with celery_app.pool.acquire(block=True) as conn:
            return int(conn.default_channel.queue_declare(queue=name, passive=True).message_count)
    except Exception:
        return 0


@celery_app.task(name=TaskName.reconcile.value, ignore_result=True)
def reconcile() -> dict[str, int]:
    settings = get_settings()
    with session_scope(settings.database_url) as s:
        expired, deliveries = q.requeue_expired_leases(s, settings.public_base_url)
        # Only where the engine's queue is empty: a job waiting behind a backlog still has its
        # message, and re-publishing it every grace period would flood the broker.
        routes = q.stale_routes(s, settings.requeue_grace_seconds)
        idle = {(e, p) for e, p in routes if queue_size(synth_queue(e, Priority(p))) == 0}
        stale = q.stale_queued(s, settings.requeue_grace_seconds, idle)
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


def _delete_objects(storage: Storage, keys: list[str]) -> None:
    for key in keys:
        try:
            storage.delete(key)
        except Exception:
            log.warning("event=maintenance.retention_delete_failed key=%s", key, exc_info=True)


@celery_app.task(name=TaskName.retention.value, ignore_result=True)
def retention() -> int:
    """Delete finished jobs older than VOICEFARM_RETENTION_DAYS, audio first, then the rows."""
    settings = get_settings()
    if not settings.retention_days:
        return 0
    storage = get_storage(settings)
    deleted = 0
    while True:
        with session_scope(settings.database_url) as s:
            batch = q.expired_jobs(s, settings.retention_days)
            keys = [job.result_key for job in batch if job.result_key]
            for job in batch:
                s.delete(job)
            # Objects go only once the rows are gone: an orphaned object is harmless, a row
            # that promises audio which no longer exists is not.
            after_commit(s, functools.partial(_delete_objects, storage, keys))
            deleted += len(batch)
        if len(batch) < 500:
            break
    if deleted:
        log.info("event=maintenance.retention deleted=%d", deleted)
    return deleted

"""`maintenance.reconcile` (beat, every few seconds): the backstop that makes jobs unlosable.

- running jobs whose lease expired (worker killed or hung) go back to queued, or fail when out of
  attempts;
- dispatched jobs nobody claimed within the grace period are published again, oldest first and
  at most once per grace period each, whatever the queue depth (the message was lost, or Redis
  restarted empty; a duplicate message claims nothing);
- queues with undispatched jobs (backlogs held back for fair share, jobs just re-queued, an API
  that died between its commit and its dispatch) are filled through the dispatcher
  (tasks/dispatch.py), never flooded;
- webhook deliveries that are due (retries, lost messages) are dispatched.

The rows are picked and marked in one short transaction; publishing happens after it commits,
holding no row locks. A broker that cannot be reached is an error, never an empty queue.
"""

from __future__ import annotations

import functools
import itertools
import logging
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from core.enums import JobStatus, TaskName
from core.settings import get_settings
from core.storage import SEGMENTS_DIR, Storage, StoredObject, get_storage
from db import jobs as q
from db import voices as vq
from db import webhooks as wq
from db.session import after_commit, get_sessionmaker, session_scope
from tasks.app import celery_app
from tasks.dispatch import PublishFailed, dispatch_waiting, publish
from tasks.send import send_prepare_voice, send_webhooks

log = logging.getLogger("voicefarm.maintenance")


# Jobs re-published per run at most; the rest wait for the next run (beat, every few seconds).
REPUBLISH_LIMIT = 500


@celery_app.task(name=TaskName.reconcile.value, ignore_result=True)
def reconcile(limit: int = REPUBLISH_LIMIT) -> dict[str, int]:
    settings = get_settings()
    # One short transaction picks and marks the rows; no broker I/O happens inside it.
    with session_scope(settings.database_url) as s:
        expired, deliveries = q.requeue_expired_leases(s, settings.public_base_url)
        stale = q.stale_queued(s, settings.requeue_grace_seconds, limit=limit)
        due = wq.due_deliveries(s, grace_seconds=settings.requeue_grace_seconds)
        voices, voices_failed = vq.stale_processing(
            s, settings.voice_prepare_timeout_seconds, settings.max_attempts
        )
    counts = {"expired": len(expired), "republished": len(stale), "webhooks": len(due)}
    counts.update(voices=len(voices), voices_failed=voices_failed)
    # Expired leases are queued again undispatched: the dispatcher below publishes them.
    _publish(settings.database_url, stale, deliveries + due)
    _publish_voices(settings.database_url, voices)
    counts["dispatched"] = dispatch_waiting(settings.database_url, settings.dispatch_ahead)
    counts["batches"] = _complete_batches(settings.database_url, settings.public_base_url)
    if any(counts.values()):
        log.info("event=maintenance.reconciled %s", " ".join(f"{k}={v}" for k, v in counts.items()))
    return counts


def _publish(database_url: str, jobs: list[q.Redispatch], deliveries: list[str]) -> None:
    """Send the committed work. On the first broker error stop, give the unsent jobs back to the
    next run (tasks.dispatch.publish clears their dispatch mark), count it and raise: beat runs
    us again soon."""
    try:
        publish(database_url, jobs)
        send_webhooks(deliveries)
    except Exception as exc:
        from workers import metrics

        metrics.RECONCILE_PUBLISH_FAILURES.inc()
        log.error(
            "event=maintenance.publish_failed jobs=%d webhooks=%d error=%s: %s",
            len(jobs),
            len(deliveries),
            type(exc).__name__,
            exc,
        )
        if isinstance(exc, PublishFailed):
            raise
        raise PublishFailed(
            f"broker unreachable: {len(deliveries)} webhook deliveries left for the next run "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def _complete_batches(database_url: str, base_url: str) -> int:
    """Backstop for the finish path: batches whose last items ended in transactions that each
    saw the other still active, and concatenations whose message was lost."""
    from db import batches as bq
    from tasks.send import send_concatenate_batch

    done = 0
    with session_scope(database_url) as s:
        for batch_id in bq.open_batches_done(s):
            done += int(bq.try_complete(s, batch_id, base_url))
        lost = bq.stale_concatenations(s, get_settings().requeue_grace_seconds * 10)
    for batch_id in lost:
        send_concatenate_batch(batch_id)
    return done


def _publish_voices(database_url: str, voice_ids: list[uuid.UUID]) -> None:
    """Send `voices.prepare` for voices stuck in `processing`; on a broker error, clear their
    dispatch mark so the next run retries them at once, and raise."""
    sent = 0
    try:
        for voice_id in voice_ids:
            send_prepare_voice(voice_id)
            sent += 1
    except Exception as exc:
        with session_scope(database_url) as s:
            vq.undispatch(s, voice_ids[sent:])
        raise PublishFailed(
            f"broker unreachable: {len(voice_ids) - sent} voices left for the next run"
        ) from exc


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
            keys = [
                key
                for job in batch
                for key in (job.result_key, job.timings_key, job.subtitles_key)
                if key
            ]
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


@celery_app.task(name=TaskName.sweep_orphans.value, ignore_result=True)
def sweep_orphans() -> int:
    """Delete stored audio that no job row points at: a crash between upload and finish, or a
    delete that failed after a fence failure, leaves objects retention never finds."""
    settings = get_settings()
    # Older than any attempt could still be running: an upload whose finish is about to be
    # recorded is never taken for an orphan.
    min_age = settings.lease_seconds + settings.job_deadline_seconds
    cutoff = datetime.now(UTC) - timedelta(seconds=min_age)
    return sweep_orphan_objects(get_storage(settings), settings.database_url, cutoff)


def sweep_orphan_objects(
    storage: Storage, database_url: str, cutoff: datetime, batch: int = 500
) -> int:
    """Delete objects under `jobs/` and `voices/` last modified before `cutoff` that no row
    points at (a voice's objects are orphans once its row is gone)."""
    scanned = deleted = failed = 0
    chunk: list[StoredObject] = []

    def flush() -> None:
        nonlocal deleted, failed
        for key in _orphans(database_url, chunk):
            try:
                storage.delete(key)
                deleted += 1
            except Exception:
                failed += 1
                log.warning("event=maintenance.orphan_delete_failed key=%s", key, exc_info=True)
        chunk.clear()

    for obj in itertools.chain(storage.list_keys("jobs/"), storage.list_keys("voices/")):
        scanned += 1
        if obj.modified < cutoff:
            chunk.append(obj)
            if len(chunk) >= batch:
                flush()
    flush()
    if deleted or failed:
        from workers import metrics

        metrics.ORPHANS_DELETED.inc(deleted)
        log.info(
            "event=maintenance.orphans_swept scanned=%d deleted=%d failed=%d",
            scanned,
            deleted,
            failed,
        )
    return deleted


def _uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def _job_key(key: str) -> tuple[uuid.UUID, str] | None:
    """(job_id, `<attempt>.<ext>`) of `jobs/<tenant_id>/<job_id>/<attempt>.<ext>` or of the
    layout before tenants, `jobs/<job_id>/<attempt>.<ext>`; None for a key of any other shape."""
    parts = key.split("/")
    if len(parts) == 4 and _uuid(parts[1]) is not None:
        job_id = _uuid(parts[2])
    elif len(parts) == 3:
        job_id = _uuid(parts[1])
    else:
        return None
    return None if job_id is None else (job_id, parts[-1])


def _kept_segment_job(key: str) -> uuid.UUID | None:
    """The job of `jobs/<tenant_id>/<job_id>/segments/<name>`, or None for another shape."""
    parts = key.split("/")
    if len(parts) == 5 and parts[3] == SEGMENTS_DIR and _uuid(parts[1]) is not None:
        return _uuid(parts[2])
    return None


def _job_id(key: str) -> uuid.UUID | None:
    found = _job_key(key)
    return found[0] if found else None


def _voice_id(key: str) -> uuid.UUID | None:
    """`voices/<tenant_id>/<voice_id>/<name>` or, before tenants, `voices/<voice_id>/<name>`."""
    parts = key.split("/")
    if len(parts) == 4 and _uuid(parts[1]) is not None:
        return _uuid(parts[2])
    if len(parts) == 3:
        return _uuid(parts[1])
    return None


def _voice_orphans(database_url: str, objects: list[StoredObject]) -> list[str]:
    """Voice objects whose voice row is gone (or keys of no known shape)."""
    ids: dict[str, uuid.UUID | None] = {obj.key: _voice_id(obj.key) for obj in objects}
    with get_sessionmaker(database_url)() as s:
        present = vq.existing_ids(s, [i for i in ids.values() if i is not None])
    return [key for key, voice_id in ids.items() if voice_id not in present]


def _orphans(database_url: str, objects: Iterable[StoredObject]) -> list[str]:
    objects = list(objects)
    voice_objects = [o for o in objects if o.key.startswith("voices/")]
    if voice_objects:
        voice_keys = {o.key for o in voice_objects}
        rest = [o for o in objects if o.key not in voice_keys]
        return _voice_orphans(database_url, voice_objects) + _orphans(database_url, rest)
    ids = {i for o in objects if (i := _job_id(o.key) or _kept_segment_job(o.key)) is not None}
    with get_sessionmaker(database_url)() as s:
        rows = q.stored_results(s, list(ids))
    orphans = []
    for obj in objects:
        kept = _kept_segment_job(obj.key)
        if kept is not None:
            # A job's kept segments (workers/segments.py) live while it may still run: queued
            # (re-queued after a worker's death) or running. Once it ended they are orphans.
            seg_row = rows.get(kept)
            if seg_row is None or JobStatus(seg_row.status).is_terminal():
                orphans.append(obj.key)
            continue
        found = _job_key(obj.key)
        row = rows.get(found[0]) if found else None
        if row is not None and row.names(obj.key):
            continue
        # The running attempt's own upload, its finish not yet recorded: never an orphan.
        running = row is not None and row.status == JobStatus.running.value
        if running and row and found and found[1].startswith(f"{row.attempts}."):
            continue
        orphans.append(obj.key)
    return orphans

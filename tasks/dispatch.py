"""Publishing queued jobs, fairly and a few at a time (db/dispatch.py decides which).

Called after admission commits, after a worker claims or releases a job (so throughput never
waits for beat), and by the reconciler every interval (the backstop: an API that died between
its commit and this call, a released job, a publish that failed). One short transaction picks
and marks the jobs; publishing happens after it commits, holding no row locks. A publish that
fails clears the mark of what was not sent, so the next call picks those jobs again.

Imports nothing from workers/: the API calls this too.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from core.enums import Priority
from core.process import helper_thread
from db import dispatch as d
from db import jobs as q
from db.session import session_scope
from tasks.send import send_synthesize_many

log = logging.getLogger("voicefarm.dispatch")


# Messages per Redis pipeline. A batch that fails is re-sent whole by a later dispatch, so it
# stays small; a dispatch pass publishes at most `ahead` messages per queue anyway.
PUBLISH_BATCH = 50


class PublishFailed(RuntimeError):
    """The broker refused or could not be reached while publishing."""


def dispatch(database_url: str, engine: str, pool: str, ahead: int) -> int:
    """Fill the (engine, pool) queues of every priority up to `ahead` in-flight messages."""
    return dispatch_queues(
        database_url, [d.QueueKey(engine, pool, p.value) for p in Priority], ahead
    )


def dispatch_waiting(database_url: str, ahead: int) -> int:
    """Fill every queue that has undispatched jobs (the reconciler)."""
    with session_scope(database_url) as s:
        keys = d.waiting_queues(s)
    return dispatch_queues(database_url, keys, ahead)


def dispatch_queues(database_url: str, keys: list[d.QueueKey], ahead: int) -> int:
    sent = 0
    for key in keys:
        with session_scope(database_url) as s:
            picked = d.pick(s, key, ahead)
        sent += publish(database_url, picked)
    return sent


def publish(database_url: str, jobs: list[q.Redispatch]) -> int:
    """Send committed dispatches, a batch of messages per Redis round trip; on a broker error
    clear the mark of every job whose batch did not certainly arrive and raise PublishFailed."""
    sent = 0
    try:
        for start in range(0, len(jobs), PUBLISH_BATCH):
            chunk = jobs[start : start + PUBLISH_BATCH]
            send_synthesize_many([(r.job_id, r.engine, r.priority, r.pool) for r in chunk])
            sent += len(chunk)
    except Exception as exc:
        unsent = [r.job_id for r in jobs[sent:]]
        log.error(
            "event=dispatch.publish_failed sent=%d unsent_jobs=%d error=%s: %s",
            sent,
            len(unsent),
            type(exc).__name__,
            exc,
        )
        try:
            with session_scope(database_url) as s:
                q.undispatch(s, unsent)
        except Exception:
            # Harmless: those jobs count as in flight until the grace period, then the
            # reconciler re-publishes them as lost messages.
            log.warning("event=dispatch.undispatch_failed jobs=%d", len(unsent), exc_info=True)
        raise PublishFailed(
            f"broker unreachable: {len(unsent)} jobs left for the next dispatch "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    return sent


# Admission's dispatch, coalesced per process. Under load every request used to run its own
# dispatch transaction after its commit, and they queued on the same advisory lock; one pass
# that starts after a commit covers every job committed before it. So a request whose queue is
# being filled by another thread of this process right now only marks it dirty, and that thread
# runs one more pass. The thread that runs passes is a request's (a lone request dispatches its
# job before answering, as before); past a few passes it hands the rest to a short-lived thread
# so no request waits on others' jobs. A process that dies with a dirty mark leaves the jobs to
# the reconciler, as a crash between commit and dispatch always did.
_PASSES_IN_REQUEST = 4
_lock = threading.Lock()
_running: set[tuple[str, d.QueueKey, int]] = set()
_dirty: set[tuple[str, d.QueueKey, int]] = set()


def dispatch_after_admission(database_url: str, key: d.QueueKey, ahead: int) -> None:
    """Fill the one queue an admitted job went to (the others did not change), coalesced."""
    token = (database_url, key, ahead)
    with _lock:
        if token in _running:
            _dirty.add(token)
            return
        _running.add(token)
    _passes(token, _PASSES_IN_REQUEST)


def dispatch_soon(database_url: str, engine: str, pool: str, ahead: int) -> None:
    """Fill the (engine, pool) queues of every priority from this process's dispatch thread,
    coalesced with any pass already running for them; returns at once.

    A worker calls this after a claim, a release or a finish: the claimed job starts
    synthesizing while the next message is published (about 10-20 ms of advisory lock, fair-share
    queries, commit and publish that used to sit between the claim and the engine). The next
    message still lands long before the job ends; a process that dies first leaves the queue to
    the next dispatch or the reconciler, as any lost publish."""
    for priority in Priority:
        _in_background((database_url, d.QueueKey(engine, pool, priority.value), ahead))


def dispatch_in_background(database_url: str, key: d.QueueKey, ahead: int) -> None:
    """`dispatch_after_admission` for a caller that must not block (the API's event loop, which
    admits plain jobs without a thread: api/submit.py `submit_plain`): the passes run on this
    process's dispatch thread, coalesced as there; returns at once."""
    _in_background((database_url, key, ahead))


def _in_background(token: tuple[str, d.QueueKey, int]) -> None:
    global _soon_thread
    with _lock:
        if token in _running:
            _dirty.add(token)
            return
        _running.add(token)
        _soon.put(token)
        if _soon_thread is None or not _soon_thread.is_alive():
            _soon_thread = threading.Thread(target=_soon_loop, name="dispatch", daemon=True)
            _soon_thread.start()


_soon: queue.SimpleQueue[tuple[str, d.QueueKey, int]] = queue.SimpleQueue()
_soon_thread: threading.Thread | None = None


def _soon_loop() -> None:
    """One long-lived thread per process runs the passes `dispatch_soon` asked for (a thread per
    call cost about 1% of a busy worker's time in thread starts)."""
    helper_thread()  # a worker's: off the engine's CPUs when pinned; the API's: nothing
    while True:
        _drain(_soon.get())


# A background pass starts no sooner than this after the last pass of its queue (in this
# process) started. Under load every admission marks its queue dirty, and each pass (a
# transaction with an advisory lock and a count, even when the queue is full) cost the API more
# CPU than admitting the job (docs/BENCHMARKS.md, Admission); spaced, one pass covers the jobs
# of the last 10 ms. A lone job is published at once (its queue had no pass just before), and a
# worker's own dispatch after each claim refills its queue meanwhile.
BACKGROUND_SPACING_SECONDS = 0.01
_last_pass: dict[tuple[str, d.QueueKey, int], float] = {}


def _passes(token: tuple[str, d.QueueKey, int], limit: int | None, spacing: float = 0.0) -> None:
    database_url, key, ahead = token
    done = 0
    try:
        while True:
            if spacing:
                wait = _last_pass.get(token, 0.0) + spacing - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            with _lock:
                _dirty.discard(token)  # a commit after this point is seen by the pass below
            _last_pass[token] = time.monotonic()
            dispatch_queues(database_url, [key], ahead)
            done += 1
            with _lock:
                if token not in _dirty:
                    _running.discard(token)
                    return
                if limit is not None and done >= limit:
                    break
    except BaseException:
        with _lock:
            _running.discard(token)
        raise
    threading.Thread(target=_drain, args=(token,), name="dispatch-drain", daemon=True).start()


def _drain(token: tuple[str, d.QueueKey, int]) -> None:
    helper_thread()
    try:
        _passes(token, None, BACKGROUND_SPACING_SECONDS)
    except Exception:
        log.warning("event=dispatch.drain_failed (the reconciler retries)", exc_info=True)

"""Claiming a worker's next job while its current one finishes synthesizing.

Between two jobs a solo worker used to return to Celery, ack, receive the next message and
claim its row: 10-15 ms a job in which the engine (the GPU) sat idle. With prefetch, when a job
starts its last segment a side thread claims the worker's next in-flight job from PostgreSQL
(`db.jobs.claim_next`: dispatched, so fair share already chose it; interactive first), and the
task runs it as soon as the engine is free, then the one after, for as long as there is one
(a chain, at most `VOICEFARM_PREFETCH_CHAIN_SECONDS`, and never once a shutdown is asked for).
Their messages arrive later and claim nothing.

It never holds more than one job the engine has not started: the claim happens during the
current job's last segment, so its lease (renewed by the job's own keeper once it starts) runs
at most one segment before the job does; a job that waited a third of a lease or more has its
lease renewed (fenced) before it starts, and is dropped if the reconciler took it back. A
worker that dies with a prefetched job leaves it `running` with a lease that expires, and the
reconciler re-queues it, as for any job in hand.
"""

from __future__ import annotations

import functools
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from db import jobs as q
from db.session import after_commit, session_scope

if TYPE_CHECKING:
    from tasks.synthesize import JobInput
    from workers.runtime import Runtime

log = logging.getLogger("voicefarm.jobs")

Prefetched = tuple["q.Claim", "JobInput", bool, float]

_executor: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
    return _executor


def shutdown_requested() -> bool:
    """Celery's warm or cold shutdown has been asked for (SIGTERM, SIGQUIT, control)."""
    from celery.worker import state

    # They hold the exit code once asked (0 for a plain warm shutdown), as Celery tests them.
    return any(flag is not None and flag is not False
               for flag in (state.should_stop, state.should_terminate))  # fmt: skip


class Prefetch:
    """At most one claim ahead, for one task's chain of jobs."""

    def __init__(self, rt: Runtime, chain_started: float) -> None:
        self.rt = rt
        self.chain_started = chain_started
        self._future: Future[Prefetched | None] | None = None
        self._claimed_at = 0.0

    def start(self) -> None:
        """Claim the next job in the background (the current job is on its last segment)."""
        settings = self.rt.settings
        if self._future is not None:
            return
        if time.monotonic() - self.chain_started >= settings.prefetch_chain_seconds:
            return  # back to Celery: acks, control commands and events get their turn
        if shutdown_requested():
            return
        self._future = _pool().submit(self._claim)

    def take(self) -> Prefetched | None:
        """The job claimed ahead, once the claim is done; None when there was none, or when
        its lease ran out while the last segment before it took longer than the lease (the
        reconciler has queued it again by then: its next attempt is someone else's)."""
        if self._future is None:
            return None
        future, self._future = self._future, None
        got = future.result()
        if got is None:
            return None
        claim = got[0]
        settings = self.rt.settings
        if time.monotonic() - self._claimed_at < settings.lease_seconds / 3:
            return got
        # Waited a good part of a lease: renew it (fenced) before the job's own keeper starts.
        with session_scope(settings.database_url) as s:
            alive = q.heartbeat(s, claim, settings.lease_seconds)
        if not alive:
            log.info("event=jobs.prefetch_lost job=%s attempt=%d", claim.job_id, claim.attempt)
            return None
        return got

    def _claim(self) -> Prefetched | None:
        from tasks.synthesize import _claimed, _dispatch

        rt, settings = self.rt, self.rt.settings
        c0 = time.perf_counter()
        try:
            with session_scope(settings.database_url) as s:
                claim = q.claim_next(
                    s, list(rt.engines), settings.worker_pool, rt.worker_id, settings.lease_seconds
                )
                if claim is None:
                    return None
                job = q.get_job(s, claim.job_id)
                claimed = _claimed(s, settings, claim, job)
                after_commit(s, functools.partial(_dispatch, settings, job.engine, job.pool))
        except Exception:
            # Nothing was claimed (the transaction rolled back); the job's message runs it.
            log.warning("event=jobs.prefetch_failed", exc_info=True)
            return None
        self._claimed_at = time.monotonic()
        log.info("event=jobs.prefetched job=%s attempt=%d", claim.job_id, claim.attempt)
        return (*claimed, time.perf_counter() - c0)

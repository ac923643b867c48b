"""Prefetch (tasks/prefetch.py): a worker claims its next in-flight job while the current one is
on its last segment and runs it without a trip through Celery; the job's own message later
claims nothing. Through a real solo Celery worker, PostgreSQL, Redis and the dispatcher.

The `slow` (0.5 s a segment) and `tone` fixture engines stand in for a model: what is tested
is the worker's claiming, not the audio.
"""

from __future__ import annotations

import re
import signal
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

from fastapi.testclient import TestClient
from sqlalchemy import text

from core.settings import Settings
from db.session import session_scope
from tasks.maintenance import reconcile
from tasks.prefetch import Prefetch
from tests.fixtures.jobs import submit_together as submit
from tests.fixtures.processes import Proc, start_worker, wait_until
from tests.integration.test_worker_jobs import wait_job

AHEAD = 2  # the default: the chain must work with the usual two messages in flight


def submit_together(url: str, engine: str, texts: list[str]) -> list[uuid.UUID]:
    ids, sent = submit(url, engine, texts, AHEAD)
    assert sent == min(AHEAD, len(texts))
    return ids


def prefetched(proc: Proc) -> set[str]:
    return set(re.findall(r"event=jobs\.prefetched job=(\S+)", proc.tail(2000)))


def test_a_backlog_runs_as_one_chain_and_each_job_once(
    client: TestClient, db: str, log_dir: Path
) -> None:
    """Six jobs, two in flight at a time: jobs are claimed ahead by the worker (logged
    `jobs.prefetched`), every job succeeds in its first attempt and runs once, and every
    prefetched job's own message comes later and claims nothing."""
    proc = start_worker(log_dir, "tone", name="prefetch-chain", extra_queues="")
    try:
        ids = submit_together(db, "tone", [f"Chain link {w}." for w in "abcdef"])
        for job_id in ids:
            done = wait_job(client, str(job_id))
            assert done["status"] == "succeeded", proc.tail()
            assert done["attempts"] == 1
        ahead = prefetched(proc)
        assert ahead, proc.tail()
        assert ahead <= {str(i) for i in ids}
        # How many are claimed ahead depends on the dispatcher keeping up with a 1 ms engine
        # (a chain ends when nothing is in flight, and the next message starts another):
        # at least one, and never the first, which only its message can start.

        def stale_messages_done() -> bool:
            skipped = re.findall(r"event=jobs\.claim\.skipped job=(\S+)", proc.tail(2000))
            return ahead <= set(skipped)

        wait_until(stale_messages_done, timeout=30, what="the prefetched jobs' messages")
        runs = re.findall(r"event=jobs\.claimed job=(\S+)", proc.tail(2000))
        assert sorted(runs) == sorted(str(i) for i in ids)  # each ran exactly once
    finally:
        proc.stop()


def test_a_worker_killed_holding_a_prefetched_job_loses_nothing(
    client: TestClient, db: str, log_dir: Path
) -> None:
    """SIGKILL right after the worker claimed one job (B) ahead while the other still
    synthesizes: B is `running` under a dead worker's lease, like the other. Once the lease has
    expired (set in the database rather than waited for) the reconciler queues both again and
    another worker runs them."""
    first = start_worker(log_dir, "slow", name="prefetch-killed", extra_queues="")
    second = None
    try:
        # Committed together, the two share a created_at: either may be dispatched first.
        pair = submit_together(db, "slow", ["One of two.", "The other."])
        claimed_ahead = wait_until(
            lambda: prefetched(first) & {str(i) for i in pair},
            timeout=30,
            what="one of the two to be claimed ahead",
        )
        first.signal(signal.SIGKILL)
        first.popen.wait(timeout=10)
        (b,) = [i for i in pair if str(i) in claimed_ahead]
        with session_scope(db) as s:
            rows = dict(s.execute(text("SELECT id::text, status FROM jobs")).all())
            assert rows[str(b)] == "running"  # claimed, never started: a dead worker's job
            s.execute(
                text("UPDATE jobs SET lease_expires_at = now() - interval '1 second'"
                     " WHERE status = 'running'")
            )  # fmt: skip
        counts = reconcile()
        assert counts["expired"] >= 1
        second = start_worker(log_dir, "slow", name="prefetch-rescue", extra_queues="")
        for job_id in pair:
            done = wait_job(client, str(job_id))
            assert done["status"] == "succeeded", second.tail()
        assert wait_job(client, str(b))["attempts"] == 2
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_a_warm_shutdown_ends_the_chain(client: TestClient, db: str, log_dir: Path) -> None:
    """SIGTERM while a chain works through a backlog of slow jobs: the worker stops claiming
    ahead, finishes what it holds and exits, leaving the rest queued (none stuck `running`);
    a second worker then runs them all."""
    first = start_worker(log_dir, "slow", name="prefetch-term", extra_queues="")
    second = None
    try:
        ids = submit_together(db, "slow", [f"Backlog item {w}." for w in "abcdefghij"])
        wait_until(lambda: prefetched(first), timeout=30, what="the chain to start")
        first.signal(signal.SIGTERM)
        assert first.popen.wait(timeout=30) == 0, first.tail()
        with session_scope(db) as s:
            statuses = [
                s.execute(text("SELECT status FROM jobs WHERE id = :i"), {"i": i}).scalar_one()
                for i in ids
            ]
        assert "running" not in statuses, statuses
        assert statuses.count("queued") >= 1, statuses  # it did not run the whole backlog
        second = start_worker(log_dir, "slow", name="prefetch-after", extra_queues="")
        for job_id in ids:
            done = wait_job(client, str(job_id))
            assert done["status"] == "succeeded", second.tail()
            assert done["attempts"] == 1
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_a_prefetched_job_whose_lease_ran_out_is_not_started(db: str, settings: Settings) -> None:
    """The segment before it outlasted the lease and the reconciler queued the job again: the
    prefetch's fenced renewal fails and the chain does not start a job that is no longer its
    own; one that waited less than a third of a lease starts without a renewal. (In-process:
    the Prefetch object against the real database; no engine is needed.)"""
    engine = f"prefetch-{uuid.uuid4().hex[:8]}"
    rt = SimpleNamespace(settings=settings, engines={engine: None}, worker_id="w-prefetch")
    ids, _ = submit(db, engine, ["First.", "Second."], 2)

    def prefetch_one() -> Prefetch:
        p = Prefetch(rt, time.monotonic())  # type: ignore[arg-type]
        p.start()
        return p

    kept = prefetch_one()
    got = kept.take()
    assert got is not None and got[0].job_id in ids

    lost = prefetch_one()
    lost._future.result()  # type: ignore[union-attr]  # claimed
    (other,) = [i for i in ids if i != got[0].job_id]
    with session_scope(db) as s:  # what the reconciler does to an expired lease
        s.execute(
            text("UPDATE jobs SET status = 'queued', worker_id = NULL WHERE id = :i"),
            {"i": str(other)},
        )
    lost._claimed_at -= settings.lease_seconds
    assert lost.take() is None

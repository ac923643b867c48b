"""The job state machine against real PostgreSQL: atomic claim, fencing, leases, reconciler."""

from __future__ import annotations

import threading
import uuid
from typing import Any

from sqlalchemy import text, update

from db import jobs as q
from db.models import Job
from db.session import get_sessionmaker, session_scope

BASE = "http://test"


def _new_job(url: str, **kw: Any) -> uuid.UUID:
    with session_scope(url) as s:
        job = Job(
            engine=kw.pop("engine", "tone"),
            text="hello",
            format="wav",
            speed=1.0,
            priority=kw.pop("priority", "interactive"),
            metadata_={},
            attempts=0,
            max_attempts=kw.pop("max_attempts", 3),
            segments_done=0,
            **kw,
        )
        q.create_job(s, job, BASE)
        return job.id


def _expire_lease(url: str, job_id: uuid.UUID) -> None:
    with session_scope(url) as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(lease_expires_at=text("now() - interval '1 second'"))
        )


def _result(job_id: uuid.UUID, attempt: int) -> q.AudioResult:
    return q.AudioResult(f"jobs/{job_id}/{attempt}.wav", "wav", 16000, 1.0, 44, "0" * 64)


def test_only_one_of_many_concurrent_claims_wins(db: str) -> None:
    job_id = _new_job(db)
    wins: list[q.Claim] = []
    barrier = threading.Barrier(8)

    def claim(i: int) -> None:
        barrier.wait()
        with session_scope(db) as s:
            c = q.claim_job(s, job_id, f"w{i}", 30)
        if c:
            wins.append(c)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and wins[0].attempt == 1


def test_a_stale_attempt_cannot_write_after_a_newer_claim(db: str) -> None:
    job_id = _new_job(db)
    with session_scope(db) as s:
        old = q.claim_job(s, job_id, "old", 30)
    assert old
    # The old worker's lease runs out; the reconciler gives the job to a new attempt.
    _expire_lease(db, job_id)
    with session_scope(db) as s:
        again, _ = q.requeue_expired_leases(s, BASE)
    assert [r.job_id for r in again] == [job_id]
    with session_scope(db) as s:
        new = q.claim_job(s, job_id, "new", 30)
    assert new and new.attempt == 2
    with session_scope(db) as s:
        assert not q.heartbeat(s, old, 30, segments_done=1)
        assert q.finish_success(s, old, _result(job_id, 1), BASE) is None
        assert q.finish_failure(s, old, "x", "y", BASE) is None
        assert q.finish_success(s, new, _result(job_id, 2), BASE) == []
    with get_sessionmaker(db)() as s:
        job = q.get_job(s, job_id)
        assert job.status == "succeeded" and job.result_key == f"jobs/{job_id}/2.wav"


def test_expired_lease_on_last_attempt_fails_with_a_code(db: str) -> None:
    job_id = _new_job(db, max_attempts=1)
    with session_scope(db) as s:
        assert q.claim_job(s, job_id, "w", 30)
    _expire_lease(db, job_id)
    with session_scope(db) as s:
        again, _ = q.requeue_expired_leases(s, BASE)
    assert again == []
    with get_sessionmaker(db)() as s:
        job = q.get_job(s, job_id)
        assert job.status == "failed" and job.error_code == "max_attempts_exceeded"
        assert "stopped renewing its lease" in (job.error_message or "")


def test_unclaimed_queued_jobs_are_republished_after_the_grace_period(db: str) -> None:
    job_id = _new_job(db)
    with session_scope(db) as s:
        assert q.stale_queued(s, grace_seconds=60) == []
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(dispatched_at=text("now() - interval '2 minutes'"))
        )
    with session_scope(db) as s:
        assert [r.job_id for r in q.stale_queued(s, grace_seconds=60)] == [job_id]
    with session_scope(db) as s:
        assert q.stale_queued(s, grace_seconds=60) == []  # dispatched_at was bumped


def test_canceled_job_stops_its_worker_at_the_next_heartbeat(db: str) -> None:
    job_id = _new_job(db)
    with session_scope(db) as s:
        claim = q.claim_job(s, job_id, "w", 30)
    assert claim
    with session_scope(db) as s:
        q.cancel_job(s, job_id, BASE)
    with session_scope(db) as s:
        assert not q.heartbeat(s, claim, 30, segments_done=1)
        assert q.finish_success(s, claim, _result(job_id, 1), BASE) is None


def test_a_webhook_attempt_whose_lock_expired_cannot_overwrite_the_next(db: str) -> None:
    from core.enums import DeliveryStatus
    from db import webhooks as wq
    from db.models import WebhookDelivery

    job_id = _new_job(db, webhook_url="http://127.0.0.1:9/h")
    with get_sessionmaker(db)() as s:
        delivery_id = s.query(WebhookDelivery.id).filter_by(job_id=job_id).scalar()
    with session_scope(db) as s:
        first = wq.claim_delivery(s, delivery_id, lock_seconds=0)
        assert first and first.attempts == 1
    with session_scope(db) as s:  # the lock ran out: another worker takes it
        second = wq.claim_delivery(s, delivery_id, lock_seconds=60)
        assert second and second.attempts == 2
    with session_scope(db) as s:
        d = s.get(WebhookDelivery, delivery_id)
        assert wq.record_attempt(
            s,
            d,
            2,
            status_code=200,
            error=None,
            duration_ms=5,
            outcome=DeliveryStatus.delivered,
            retry_in=None,
        )
    with session_scope(db) as s:  # the slow first attempt finally times out
        d = s.get(WebhookDelivery, delivery_id)
        assert not wq.record_attempt(
            s,
            d,
            1,
            status_code=None,
            error="timeout",
            duration_ms=9,
            outcome=DeliveryStatus.pending,
            retry_in=5,
        )
    with get_sessionmaker(db)() as s:
        d = s.get(WebhookDelivery, delivery_id)
        assert d.status == "delivered"
        assert [a.attempt for a in wq.attempts_for(s, [delivery_id])] == [2, 1]


def _dispatched(url: str, job_id: uuid.UUID, seconds_ago: int) -> None:
    with session_scope(url) as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(dispatched_at=text(f"now() - interval '{seconds_ago} seconds'"))
        )


def test_claim_next_takes_the_workers_in_flight_jobs_interactive_first(db: str) -> None:
    """Prefetch's claim (db.jobs.claim_next): only dispatched (in flight) jobs of the worker's
    engines and pool; interactive before batch, then oldest dispatch; a job claimed is not
    claimed again, and its own message then claims nothing."""
    engine = f"prefetch-{uuid.uuid4().hex[:8]}"  # no other test's jobs on it
    old_batch = _new_job(db, engine=engine, priority="batch")
    interactive = _new_job(db, engine=engine)
    newer_interactive = _new_job(db, engine=engine)
    _new_job(db, engine=engine)  # queued, never dispatched: fair share has not chosen it
    elsewhere = _new_job(db, engine=engine, pool="vip")
    other_engine = _new_job(db, engine=f"{engine}-other")
    for job_id, ago in [
        (old_batch, 30),
        (interactive, 20),
        (newer_interactive, 10),
        (elsewhere, 40),
        (other_engine, 40),
    ]:
        _dispatched(db, job_id, ago)

    def nxt() -> uuid.UUID | None:
        with session_scope(db) as s:
            claim = q.claim_next(s, [engine], "default", "w", 30)
        return None if claim is None else claim.job_id

    assert [nxt() for _ in range(4)] == [interactive, newer_interactive, old_batch, None]
    with session_scope(db) as s:
        assert q.claim_job(s, interactive, "w2", 30) is None  # its message claims nothing
        row = q.get_job(s, interactive)
        assert (row.status, row.attempts, row.worker_id) == ("running", 1, "w")

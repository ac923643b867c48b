"""Fair share with a real worker: tenant A's backlog does not delay tenant B's single job by more
than about `VOICEFARM_DISPATCH_AHEAD` of A's jobs (one worker).

Jobs are written the way admission writes them (db.jobs.create_job in one transaction, then
tasks.dispatch.dispatch after the commit) with the tenant set directly, since auth is off in
tests; the worker claims, dispatches on each claim and finishes as in production. The reconciler
is driven from the wait loop (no beat)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from core.settings import get_settings
from db import jobs as q
from db.models import Job, Tenant
from db.session import get_sessionmaker, session_scope
from tasks.dispatch import dispatch
from tasks.maintenance import reconcile
from tests.fixtures.processes import Proc, start_worker, wait_until

ENGINE = "solo"
BACKLOG = 200


@pytest.fixture(scope="module")
def solo_worker(database: str, redis_client: object, log_dir: Path) -> Iterator[Proc]:
    """One solo-pool worker on the `solo` fixture engine, 50 ms a segment; no ops queues."""
    proc = start_worker(
        log_dir, ENGINE, name="fair", extra_queues="", env={"FIXTURE_SEGMENT_DELAY": "0.05"}
    )
    yield proc
    proc.stop()


def new_tenant(url: str, prefix: str, weight: int = 1) -> uuid.UUID:
    with session_scope(url) as s:
        tenant = Tenant(id=uuid.uuid4(), name=f"{prefix}-{uuid.uuid4().hex[:8]}", weight=weight)
        s.add(tenant)
        s.flush()
        return tenant.id


def submit(url: str, tenant_id: uuid.UUID, n: int = 1, engine: str = ENGINE) -> list[uuid.UUID]:
    """n jobs of one tenant, committed, then the dispatcher (what admission does)."""
    ids = []
    with session_scope(url) as s:
        for i in range(n):
            job = Job(
                engine=engine,
                text=f"job {i}",
                format="wav",
                speed=1.0,
                priority="interactive",
                metadata_={},
                attempts=0,
                max_attempts=3,
                segments_done=0,
                tenant_id=tenant_id,
            )
            q.create_job(s, job, "http://test")
            ids.append(job.id)
    dispatch(url, engine, "default", get_settings().dispatch_ahead)
    return ids


def statuses(url: str, tenant_id: uuid.UUID) -> dict[str, int]:
    with get_sessionmaker(url)() as s:
        rows = s.execute(
            select(Job.status, func.count()).where(Job.tenant_id == tenant_id).group_by(Job.status)
        ).all()
    return {r[0]: r[1] for r in rows}


def measure(url: str, a: uuid.UUID, b_job: uuid.UUID) -> tuple[int, float, float]:
    """(A's jobs started between B's submission and B's finish, B's wait in s, A's mean job s)."""
    with get_sessionmaker(url)() as s:
        b = q.get_job(s, b_job)
        assert b.status == "succeeded", (b.status, b.error_code, b.error_message)
        overtaken = s.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.tenant_id == a, Job.started_at > b.created_at, Job.started_at < b.started_at)
        )
        mean = s.scalar(
            select(func.avg(func.extract("epoch", Job.finished_at - Job.started_at))).where(
                Job.tenant_id == a, Job.status == "succeeded"
            )
        )
    assert b.finished_at and b.started_at
    return int(overtaken or 0), (b.finished_at - b.created_at).total_seconds(), float(mean or 0)


def test_a_backlog_does_not_delay_another_tenants_job(db: str, solo_worker: Proc) -> None:
    a, b = new_tenant(db, "backlog"), new_tenant(db, "single")
    submit(db, a, BACKLOG)
    # Steady state: the worker is busy with A's backlog, most of it still waiting in PostgreSQL.
    wait_until(
        lambda: statuses(db, a).get("succeeded", 0) >= 5, timeout=60, what="A's backlog to run"
    )
    with get_sessionmaker(db)() as s:
        in_broker = s.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.tenant_id == a, Job.status == "queued", Job.dispatched_at.is_not(None))
        )
    assert (in_broker or 0) <= get_settings().dispatch_ahead  # the backlog is not in Redis
    [b_job] = submit(db, b, 1)

    def b_done() -> bool:
        reconcile()
        with get_sessionmaker(db)() as s:
            return q.get_job(s, b_job).status == "succeeded"

    wait_until(b_done, timeout=60, what="B's job to finish")
    overtaken, waited, mean = measure(db, a, b_job)
    left = statuses(db, a).get("queued", 0)
    print(
        f"\nfair share: backlog={BACKLOG} A_jobs_started_before_B={overtaken} "
        f"B_wait={waited:.2f}s A_job_mean={mean:.3f}s A_still_queued={left}"
    )
    assert overtaken <= get_settings().dispatch_ahead
    assert left > BACKLOG / 2  # B did not wait for the backlog
    with session_scope(db) as s:  # stop the rest of the backlog
        s.execute(update(Job).where(Job.status == "queued").values(status="canceled"))


# Without a worker: an engine nobody serves, so published messages stay in Redis.
IDLE = "unserved"


def _in_redis(redis_client: object) -> int:
    return int(redis_client.llen(f"synth.{IDLE}"))  # type: ignore[attr-defined]


def test_weights_split_the_queue_and_the_backlog_stays_in_postgres(
    db: str, redis_client: object
) -> None:
    heavy, light = new_tenant(db, "heavy", weight=3), new_tenant(db, "light")
    with session_scope(db) as s:
        for tenant in (heavy, light):
            for i in range(20):
                job = Job(engine=IDLE, text=f"j{i}", priority="interactive", tenant_id=tenant)
                job.metadata_, job.attempts, job.max_attempts, job.segments_done = {}, 0, 3, 0
                q.create_job(s, job, "http://test")
    assert dispatch(db, IDLE, "default", 8) == 8
    with get_sessionmaker(db)() as s:
        sent = dict(
            s.execute(
                select(Job.tenant_id, func.count())
                .where(Job.dispatched_at.is_not(None))
                .group_by(Job.tenant_id)
            ).all()
        )
    assert sent == {heavy: 6, light: 2}  # 3:1, by weight
    assert dispatch(db, IDLE, "default", 8) == 0  # full: nothing more until a claim
    assert _in_redis(redis_client) == 8


def test_reconciler_recovers_lost_messages_without_flooding(db: str, redis_client: object) -> None:
    tenant = new_tenant(db, "flood")
    ahead = get_settings().dispatch_ahead
    with session_scope(db) as s:
        for i in range(30):
            job = Job(engine=IDLE, text=f"j{i}", priority="interactive", tenant_id=tenant)
            job.metadata_, job.attempts, job.max_attempts, job.segments_done = {}, 0, 3, 0
            q.create_job(s, job, "http://test")  # the API died before dispatching
    assert reconcile()["dispatched"] == ahead
    assert _in_redis(redis_client) == ahead
    redis_client.delete(f"synth.{IDLE}")  # type: ignore[attr-defined]  # Redis restarted empty
    with session_scope(db) as s:  # ... a grace period ago
        s.execute(
            update(Job)
            .where(Job.dispatched_at.is_not(None))
            .values(dispatched_at=func.now() - func.make_interval(0, 0, 0, 0, 0, 1))
        )
    counts = reconcile()
    assert counts["republished"] == ahead and counts["dispatched"] == 0
    assert _in_redis(redis_client) == ahead  # the lost ones again, not the backlog

    # A worker dies holding one of them: its lease expires and it goes back through the
    # dispatcher, first in its tenant's line, once the queue has room.
    with session_scope(db) as s:
        first = s.scalars(
            select(Job.id).where(Job.dispatched_at.is_not(None)).order_by(Job.created_at)
        ).first()
        assert first is not None
        claim = q.claim_job(s, first, "dead-worker", 30)
        assert claim is not None
        s.execute(update(Job).where(Job.id == first).values(lease_expires_at=func.now()))
    counts = reconcile()
    assert counts["expired"] == 1 and counts["dispatched"] == 1  # the slot its claim freed
    with get_sessionmaker(db)() as s:
        job = q.get_job(s, first)
        assert job.status == "queued" and job.dispatched_at is not None

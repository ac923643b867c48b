"""Routing (the seed's sharding by tenant or voice) with real worker processes: a pinned tenant's
job runs on its pool's worker and never on the default pool's, a voice's pin wins over its
tenant's, an unpinned job stays in the default pool, the reconciler re-publishes a lost message
to the job's own pool, and `voicefarm voices pin/unpin` writes the pin.

Jobs use the `solo`/`soloslow` fixture engines, which no shared worker serves, and the workers
here consume no ops queues, so every job in this module is run (or left queued) by this module."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from core.enums import DEFAULT_POOL, synth_queue
from db.engines import register
from db.models import Job, Tenant, Voice
from db.pools import pin_voice
from db.session import get_sessionmaker, session_scope
from tasks.maintenance import reconcile
from tests.fixtures.engines import CloneToneEngine
from tests.fixtures.processes import ROOT, Proc, start_worker, wait_until
from tests.fixtures.voices import add_voice


@pytest.fixture(scope="module")
def pools(database: str, redis_client: object, log_dir: Path) -> Iterator[dict[str, Proc]]:
    """Two workers serving the same engine: one in the default pool, one in `vip`."""
    default = start_worker(log_dir, "solo", name="pool-default", extra_queues="")
    try:
        vip = start_worker(log_dir, "solo", name="pool-vip", extra_queues="", pool="vip")
    except BaseException:
        default.stop()
        raise
    yield {DEFAULT_POOL: default, "vip": vip}
    vip.stop()
    default.stop()


@pytest.fixture
def tenant_pool(db: str) -> Iterator[Any]:
    """Set the pool of the tenant the test client acts for. That is the default tenant while
    requests are unauthenticated, a tenant of its own under a key; every tenant is set, so this
    holds either way, and each gets its own pool back afterwards (tenants outlive the per-test
    truncation)."""
    with session_scope(db) as s:
        before = dict(s.execute(select(Tenant.id, Tenant.pool)).tuples().all())

    def set_pool(pool: str) -> None:
        with session_scope(db) as s:
            s.execute(update(Tenant).values(pool=pool))

    yield set_pool
    with session_scope(db) as s:
        for tenant_id, pool in before.items():
            s.execute(update(Tenant).where(Tenant.id == tenant_id).values(pool=pool))


def _row(db: str, job_id: str) -> Job:
    with get_sessionmaker(db)() as s:
        job = s.get(Job, uuid.UUID(job_id))
        assert job is not None
        return job


def _run(client: Any, db: str, body: dict[str, Any]) -> Job:
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]

    def done() -> bool:
        return client.get(f"/v1/jobs/{job_id}").json()["status"] in ("succeeded", "failed")

    wait_until(done, timeout=30, what=f"job {job_id} to finish")
    job = _row(db, job_id)
    assert job.status == "succeeded", job.error_message
    return job


def _hostname(proc: Proc) -> str:
    pool = "" if proc.name == "pool-default" else ".vip"
    return f"{proc.name}-{os.getpid()}{pool}@test"


def test_an_unpinned_job_runs_in_the_default_pool(
    client: Any, db: str, pools: dict[str, Proc]
) -> None:
    job = _run(client, db, {"text": "plain", "engine": "solo"})
    assert job.pool == DEFAULT_POOL
    assert (job.worker_id or "").startswith(_hostname(pools[DEFAULT_POOL]) + ":")


def test_a_pinned_tenants_jobs_run_only_on_its_pools_worker(
    client: Any, db: str, pools: dict[str, Proc], tenant_pool: Any
) -> None:
    tenant_pool("vip")
    jobs = [_run(client, db, {"text": f"vip {i}", "engine": "solo"}) for i in range(3)]
    for job in jobs:
        assert job.pool == "vip" and job.attempts == 1
        assert (job.worker_id or "").startswith(_hostname(pools["vip"]) + ":"), job.worker_id
    # The default pool's worker, idle and serving the same engine, never received one.
    log = pools[DEFAULT_POOL].log.read_text(errors="replace")
    assert not any(str(job.id) in log for job in jobs)


def test_a_voice_pin_wins_over_the_tenants_pool(
    client: Any, db: str, redis_client: Any, tenant_pool: Any
) -> None:
    """No worker serves `clonetone` here: the job is admitted (202) and waits in its pool's
    queue, which is where a worker started later for that pool will find it."""
    tenant_pool("vip")
    voice = add_voice(db)
    with session_scope(db) as s:
        # Its capabilities as a worker serving it would register them (clone mode).
        register(s, CloneToneEngine.spec, "test-routing")
        pin_voice(s, voice, "gold")
    body = {"text": "hi", "engine": "clonetone", "voice_id": str(voice)}
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    assert _row(db, r.json()["id"]).pool == "gold"
    assert redis_client.llen(synth_queue("clonetone", pool="gold")) == 1
    assert redis_client.llen(synth_queue("clonetone", pool="vip")) == 0

    with session_scope(db) as s:
        pin_voice(s, voice, None)  # unpinned: the tenant's pool again
    r = client.post("/v1/jobs", json={**body, "text": "hi again"})
    assert r.status_code == 202, r.text
    assert _row(db, r.json()["id"]).pool == "vip"
    assert redis_client.llen(synth_queue("clonetone", pool="vip")) == 1


def test_the_reconciler_republishes_a_lost_message_to_the_jobs_pool(
    client: Any, db: str, redis_client: Any, tenant_pool: Any
) -> None:
    tenant_pool("vip")
    r = client.post("/v1/jobs", json={"text": "lost", "engine": "soloslow"})
    assert r.status_code == 202, r.text
    queue = synth_queue("soloslow", pool="vip")
    assert queue == "synth.vip.soloslow"
    wait_until(lambda: redis_client.llen(queue), timeout=10, what="the admission's publish")
    assert redis_client.delete(queue) == 1  # as if Redis restarted empty
    tenant_pool(DEFAULT_POOL)  # a later change of the tenant's pool does not move the job

    def republished() -> bool:
        reconcile()
        return bool(redis_client.llen(queue))

    wait_until(republished, timeout=20, what="the reconciler to re-publish the message")
    assert redis_client.llen(queue) == 1
    assert redis_client.llen(synth_queue("soloslow")) == 0
    assert _row(db, r.json()["id"]).status == "queued"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "voices", *args],
        cwd=ROOT,
        env=os.environ.copy(),  # conftest's VOICEFARM_DATABASE_URL: the test database
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_voices_pin_and_unpin_over_the_cli(db: str) -> None:
    voice = add_voice(db)

    def pool() -> str | None:
        with get_sessionmaker(db)() as s:
            row = s.get(Voice, voice)
            assert row is not None
            return row.pool

    done = _cli("pin", str(voice), "--pool", "vip")
    assert done.returncode == 0, done.stderr
    assert "pool vip" in done.stdout and pool() == "vip"

    done = _cli("pin", str(voice), "--pool", "Not.A.Queue")
    assert done.returncode == 2 and "not a valid name" in done.stderr
    assert pool() == "vip"

    done = _cli("unpin", str(voice))
    assert done.returncode == 0, done.stderr
    assert pool() is None

    done = _cli("pin", str(uuid.uuid4()), "--pool", "vip")
    assert done.returncode == 1 and "no voice" in done.stderr

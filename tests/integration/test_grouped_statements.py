"""Statements shared by concurrent requests (db/aio.py `Grouped`): jobs admitted while a
statement is on its way to PostgreSQL share the next one (db/admission.py, group commit), and so
do API-key lookups (db/keys.py); each caller is answered as a statement of its own would answer
it. Real PostgreSQL; the statements are counted by wrapping the modules' `fetch`."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import func, select

from api.admission import admit
from api.schemas import JobCreate
from core.settings import Settings
from db import admission as lane
from db import aio as db_aio
from db import keys
from db.aio import close_pools
from db.models import DEFAULT_TENANT_ID, ApiKey, Job, Tenant
from db.session import get_sessionmaker as get_sessionmaker_for
from db.session import session_scope
from db.tenants import revoke_key
from tests.fixtures.tenants import make_key, tenant_with_key

NO_LIMITS = (0, 0, 0)


def _job(settings: Settings, text: str = "Hello there.", **kw: Any) -> Job:
    job = admit(None, JobCreate(text=text), settings, kw.pop("tenant_id", DEFAULT_TENANT_ID))
    # As api/submit.py sets them, so every job has the same columns (and can share a statement).
    job.idempotency_key = kw.pop("idempotency_key", None)
    job.request_hash = "0" * 64
    for key, value in kw.items():
        setattr(job, key, value)
    return job


def _count_statements(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows per statement the lane sent (the number of jobs in each)."""
    sizes: list[int] = []
    real = db_aio.fetch

    async def counted(url: str, sql: str, *args: Any) -> Any:
        sizes.append(len(re.findall(r"\(\$\d+::", sql)))
        return await real(url, sql, *args)

    monkeypatch.setattr(lane, "fetch", counted)
    return sizes


def _run(coro: Any) -> Any:
    async def main() -> Any:
        try:
            return await coro
        finally:
            await close_pools()

    return asyncio.run(main())


async def _together(url: str, jobs: list[Job], limits: tuple[int, int, int] = NO_LIMITS) -> Any:
    """The first job on its way alone, then the others admitted while it is: a request's
    usual lot under load."""
    first = asyncio.ensure_future(lane.insert_plain(url, jobs[0], limits))
    while not lane._lane.busy(url):
        await asyncio.sleep(0)  # until the first's statement has left (no clock involved)
    rest = [lane.insert_plain(url, j, limits) for j in jobs[1:]]
    return await asyncio.gather(first, *rest, return_exceptions=True)


def _rows(url: str) -> dict[uuid.UUID, Job]:
    with session_scope(url) as s:
        return {j.id: j for j in s.scalars(select(Job))}


def test_concurrent_jobs_share_a_statement_and_each_gets_its_row(
    db: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = _count_statements(monkeypatch)
    jobs = [_job(settings, f"Job number {i}.") for i in range(12)]
    written = _run(_together(db, jobs))
    # The first goes alone, at once; the other eleven, admitted meanwhile, go together.
    assert sizes == [1, 11]
    assert [w.id for w in written] == [j.id for j in jobs]
    rows = _rows(db)
    assert set(rows) == {j.id for j in jobs}
    for job in written:
        row = rows[job.id]
        assert (row.text, row.status, row.pool) == (job.text, "queued", "default")
        # What came back is the row as written, server defaults included.
        assert job.created_at == row.created_at and job.metadata_ == row.metadata_ == {}


def test_one_job_postgresql_refuses_fails_alone(
    db: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = _count_statements(monkeypatch)
    jobs = [_job(settings, f"Job {i}.") for i in range(5)]
    jobs[3].idempotency_key = "k" * 300  # VARCHAR(255): PostgreSQL refuses the whole statement
    results = _run(_together(db, jobs))
    assert isinstance(results[3], lane.LaneRefused)
    assert "StringDataRightTruncation" in str(results[3])
    assert all(isinstance(r, Job) for i, r in enumerate(results) if i != 3)
    assert set(_rows(db)) == {j.id for i, j in enumerate(jobs) if i != 3}
    # One alone, the four others together (refused), then each of those four on its own.
    assert sizes[:2] == [1, 4] and sorted(sizes[2:]) == [1, 1, 1, 1]


def test_a_batch_writes_nothing_for_a_reused_key_or_a_tenant_with_limits(
    db: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within one statement, as across statements: a second job with the same Idempotency-Key
    is not written, and a tenant with a limit is left to the usual path (None for both)."""
    limited = uuid.uuid4()
    with session_scope(db) as s:
        s.add(Tenant(id=limited, name="limited", max_running=2))
    sizes = _count_statements(monkeypatch)
    jobs = [
        _job(settings, "Warm-up, alone."),
        _job(settings, "First with the key.", idempotency_key="same"),
        _job(settings, "Second with the key.", idempotency_key="same"),
        _job(settings, "A limited tenant.", tenant_id=limited),
        _job(settings, "Plain."),
    ]
    results = _run(_together(db, jobs))
    assert sizes == [1, 4]
    assert [r is None for r in results] == [False, False, True, True, False]
    assert set(_rows(db)) == {jobs[0].id, jobs[1].id, jobs[4].id}


def test_an_unreachable_database_fails_every_job_and_the_lane_recovers(
    db: str, settings: Settings
) -> None:
    """Every waiting job gets DatabaseUnavailable (the API's 503), none hangs, and the next
    jobs on a database that answers are written."""
    dead = "postgresql+psycopg2://postgres@127.0.0.1:1/none"

    async def scenario() -> tuple[list[Any], list[Any]]:
        failed = await _together(dead, [_job(settings) for _ in range(6)])
        written = await _together(db, [_job(settings) for _ in range(3)])
        return failed, written

    failed, written = _run(asyncio.wait_for(scenario(), 60))
    assert all(isinstance(r, lane.DatabaseUnavailable) for r in failed)
    assert all(isinstance(r, Job) for r in written) and len(_rows(db)) == 3


def test_a_cancelled_request_does_not_stop_its_batch(db: str, settings: Settings) -> None:
    """A client that goes away cancels its request while its job waits for the statement: the
    others in the batch are answered."""

    async def scenario() -> list[Any]:
        first = asyncio.ensure_future(lane.insert_plain(db, _job(settings), NO_LIMITS))
        waiting = [
            asyncio.ensure_future(lane.insert_plain(db, _job(settings), NO_LIMITS))
            for _ in range(4)
        ]
        await asyncio.sleep(0)  # all five are queued; the first is on its way
        waiting[1].cancel()
        return await asyncio.gather(first, *waiting, return_exceptions=True)

    results = _run(asyncio.wait_for(scenario(), 60))
    assert isinstance(results[2], asyncio.CancelledError)
    assert all(isinstance(r, Job) for i, r in enumerate(results) if i != 2)
    with session_scope(db) as s:
        # The cancelled one's statement was already being built: written or not, never half.
        assert s.scalar(select(func.count()).select_from(Job)) in (4, 5)


def test_concurrent_key_lookups_share_a_statement_and_each_gets_its_answer(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight requests at once: the same valid key four times, a second tenant's key, a revoked
    key, a wrong secret on a real prefix and an unknown prefix. Two statements (the first
    request's, then the seven that came meanwhile), each caller its own answer, and one
    `last_used_at` write per key used."""
    a = tenant_with_key(db, "a")
    b = tenant_with_key(db, "b")
    revoked = make_key(db, "a")
    with session_scope(db) as s:
        assert revoke_key(s, revoked.prefix)
    wrong = a.key[:-4] + ("AAAA" if not a.key.endswith("AAAA") else "BBBB")
    unknown = "vf_" + "z" * len(a.prefix) + a.key[len("vf_") + len(a.prefix) :]
    lookups: list[list[str]] = []
    touches: list[Any] = []
    real_fetch, real_fetchrow = keys.fetch, keys.fetchrow

    async def fetch(url: str, sql: str, prefixes: list[str], *args: Any) -> Any:
        lookups.append(sorted(prefixes))
        return await real_fetch(url, sql, prefixes, *args)

    async def fetchrow(url: str, sql: str, *args: Any) -> Any:
        touches.append(args[0])
        return await real_fetchrow(url, sql, *args)

    monkeypatch.setattr(keys, "fetch", fetch)
    monkeypatch.setattr(keys, "fetchrow", fetchrow)
    asked = [a.key, a.key, b.key, revoked.key, wrong, a.key, unknown, a.key]

    async def scenario() -> list[Any]:
        first = asyncio.ensure_future(keys.authenticate(db, asked[0]))
        while not keys._lookups.busy(db):
            await asyncio.sleep(0)
        rest = [keys.authenticate(db, k) for k in asked[1:]]
        return await asyncio.gather(first, *rest)

    who = _run(scenario())
    tenants = [w.tenant_name if w else None for w in who]
    assert tenants == ["a", "a", "b", None, None, "a", None, "a"]
    assert len(lookups) == 2 and lookups[0] == [a.prefix]
    assert set(lookups[1]) == {a.prefix, b.prefix, revoked.prefix, unknown[3 : 3 + len(a.prefix)]}
    # The first request touched a's key; in the group, b's once, and a's once more only if the
    # group read before the first's touch was committed: never once per request.
    with session_scope(db) as s:
        ids = {k.prefix: k.id for k in s.scalars(select(ApiKey))}
    count = Counter(touches)
    assert set(count) == {ids[a.prefix], ids[b.prefix]}
    assert count[ids[b.prefix]] == 1 and count[ids[a.prefix]] in (1, 2)


def test_a_statement_stuck_on_a_lock_holds_up_no_one_else(db: str, settings: Settings) -> None:
    """A job whose INSERT waits on another transaction's uncommitted row with the same
    Idempotency-Key: the jobs admitted behind it go in a statement of their own once it has
    stalled, and are written while it still waits; when the other transaction rolls back, the
    stuck job is written too."""
    from sqlalchemy import text

    from db import jobs as q
    from db.session import get_engine

    def lock_waits() -> int:
        with get_engine(db).connect() as c:
            return int(
                c.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
                ).scalar_one()
            )

    async def scenario(holder: Any) -> tuple[Any, list[Any]]:
        stuck = asyncio.ensure_future(
            lane.insert_plain(db, _job(settings, "Stuck.", idempotency_key="held"), NO_LIMITS)
        )
        while await asyncio.to_thread(lock_waits) == 0:
            await asyncio.sleep(0.01)  # until PostgreSQL reports the INSERT waiting on the lock
        others = await asyncio.wait_for(
            asyncio.gather(*(lane.insert_plain(db, _job(settings), NO_LIMITS) for _ in range(3))),
            30,  # a hang guard: without the stall escape they wait for the stuck statement
        )
        assert not stuck.done()
        await asyncio.to_thread(holder.rollback)
        return await asyncio.wait_for(stuck, 30), others

    with get_sessionmaker_for(db)() as holder:
        q.create_job(holder, _job(settings, "Holder.", idempotency_key="held"), "http://x")
        holder.flush()  # the row and its unique-index entry exist, uncommitted
        stuck, others = _run(scenario(holder))
    assert all(isinstance(j, Job) for j in others) and isinstance(stuck, Job)
    assert set(_rows(db)) == {stuck.id, *(j.id for j in others)}

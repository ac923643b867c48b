"""The async lane of admission: a plain job's INSERT, on asyncpg, in the API's event loop.

POST /v1/jobs spent most of its CPU on the way to PostgreSQL: a thread hop and the GIL passing
back and forth, the pooled connection's pre-ping, BEGIN, the tenant's row, the ORM's execution
machinery, COMMIT (docs/BENCHMARKS.md, Admission). A plain job needs one statement: it reads the
tenant's pool and limits and inserts the row in one round trip, on a connection in autocommit,
so the row is committed (durable) when the statement returns. The caller (api/submit.py
`submit_plain`) validates first with the same code as every admission.

The statement inserts nothing, and the caller admits the job the usual way, when the job is not
plain after all: its tenant has a limit (counted under a lock: api/quotas.py), or its
Idempotency-Key was used before (replayed or refused: api/submit.py). It is the same row the
usual way writes: the same columns, Python defaults applied as SQLAlchemy's Core applies them,
server defaults left to PostgreSQL, the pool chosen as db/pools.py chooses it for a job without
a cloned voice.

Jobs admitted while a statement is on its way share the next one (group commit, below): one
round trip and one commit for all of them, each answered as its own statement would answer it.

The connection comes from db/aio.py's pools. Errors: a connection error raises
DatabaseUnavailable (the API answers 503, as for the usual path); any error PostgreSQL raised
for the statement left nothing behind (one statement, one transaction); the batch is tried
again one job at a time, and the job PostgreSQL still refuses raises LaneRefused, which sends
it the usual way.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from sqlalchemy import String
from sqlalchemy.dialects import postgresql

from core.enums import DEFAULT_POOL
from db.aio import DatabaseUnavailable, fetch, plain
from db.jobs import JOB_COLUMNS
from db.models import Job

__all__ = ["DatabaseUnavailable", "LaneRefused", "insert_plain"]


class LaneRefused(Exception):
    """PostgreSQL refused the statement; nothing was written."""


_BY_KEY = dict(JOB_COLUMNS)
_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]
_statements: dict[tuple[tuple[str, ...], int], tuple[str, list[str]]] = {}

# At most this many jobs in one statement (a few hundred parameters; PostgreSQL takes 65,535).
MAX_BATCH = 32


def _sql_type(column: Any) -> str:
    # Without a length: an explicit cast to VARCHAR(n) would truncate a long value silently,
    # where the assignment to the column refuses it, as the usual INSERT does.
    return "VARCHAR" if isinstance(column.type, String) else column.type.compile(_DIALECT)


def _statement(keys: tuple[str, ...], rows: int) -> tuple[str, list[str]]:
    """INSERT ... SELECT of `rows` jobs with the given columns (`id` and `tenant_id` among
    them) plus each tenant's pool, only for tenants without limits; nothing for a job whose
    Idempotency-Key its tenant already used. Returns the SQL and the keys it returns after
    `id`: what PostgreSQL filled (the pool, server defaults, NULLs) and `metadata`, which JSONB
    stores normalised (key order)."""
    found = _statements.get((keys, rows))
    if found is not None:
        return found
    columns = [_BY_KEY[k] for k in keys]
    k = len(columns)
    names = ", ".join(f'"{c.name}"' for c in columns)
    values = ", ".join(
        "(" + ", ".join(f"${r * k + i}::{_sql_type(c)}" for i, c in enumerate(columns, 1)) + ")"
        for r in range(rows)
    )
    p = rows * k  # the parameters after the rows': the default pool, then the farm's limits
    back = [(key, c) for key, c in JOB_COLUMNS if key not in keys or key == "metadata_"]
    returning = ", ".join(f'"{c.name}"' for c in [_BY_KEY["id"], *(c for _, c in back)])
    aliases = ", ".join(f"c{i}" for i in range(k))
    tenant = f"v.c{keys.index('tenant_id')}"
    # A limit is the tenant's own value, else the farm's default; 0 (or none) is unlimited
    # (api/quotas.py `_limit`). The pool: the tenant's, else the default (db/pools.py).
    sql = (
        f'INSERT INTO jobs ({names}, "pool") '
        f"SELECT {', '.join(f'v.c{i}' for i in range(k))}, "
        f"COALESCE(NULLIF(t.pool, ''), ${p + 1}::VARCHAR) "
        f"FROM (VALUES {values}) AS v({aliases}) JOIN tenants AS t ON t.id = {tenant} "
        f"WHERE COALESCE(t.max_running, ${p + 2}::INTEGER) = 0 "
        f"AND COALESCE(t.jobs_per_minute, ${p + 3}::INTEGER) = 0 "
        f"AND COALESCE(t.chars_per_day, ${p + 4}::BIGINT) = 0 "
        "ON CONFLICT (tenant_id, idempotency_key) DO NOTHING "
        f"RETURNING {returning}"
    )
    found = _statements[(keys, rows)] = (sql, [key for key, _ in back])
    return found


def _values(job: Job) -> dict[str, Any]:
    """The columns the usual INSERT would send (db/jobs.py create_job): what admission set, plus
    the Python defaults Core applies to the columns it did not; `pool` comes from the tenant."""
    given = {k: v for k, v in job.__dict__.items() if k in _BY_KEY and k != "pool"}
    for key, column in JOB_COLUMNS:
        default = column.default
        if key in given or key == "pool" or default is None:
            continue
        if default.is_callable:
            given[key] = default.arg(None)  # type: ignore[attr-defined]
        elif default.is_scalar:
            given[key] = default.arg  # type: ignore[attr-defined]
    # In the table's order: jobs with the same columns have the same statement.
    return {key: given[key] for key, _ in JOB_COLUMNS if key in given}


# --- group commit ----------------------------------------------------------------------------
#
# Concurrent requests in one API process share a statement: while one is on its way to
# PostgreSQL, the jobs admitted meanwhile wait, and go together in the next (one round trip,
# one commit, one WAL flush for all of them). Nothing waits for a batch to fill: a job alone
# goes at once, as before; under load the batches grow by themselves. A statement PostgreSQL
# refuses is tried again one job at a time, so one bad job refuses only itself.


@dataclass(eq=False)
class _Pending:
    values: dict[str, Any]
    shape: tuple[Any, ...]  # (columns, default pool, limits): jobs of one shape share a statement
    answer: asyncio.Future[asyncpg.Record | None]


@dataclass(eq=False)
class _Lane:
    database_url: str
    waiting: list[_Pending] = field(default_factory=list)
    flushing: bool = False


_lanes: dict[tuple[str, asyncio.AbstractEventLoop], _Lane] = {}
_flushes: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks


def _lane(database_url: str) -> _Lane:
    loop = asyncio.get_running_loop()
    lane = _lanes.get((database_url, loop))
    if lane is None:
        for key in [k for k in _lanes if k[1].is_closed()]:
            del _lanes[key]  # a test's loop, gone
        lane = _lanes[(database_url, loop)] = _Lane(database_url)
    return lane


async def _flush(lane: _Lane) -> None:
    try:
        while lane.waiting:
            first = lane.waiting[0].shape
            batch = [p for p in lane.waiting if p.shape == first][:MAX_BATCH]
            taken = set(map(id, batch))
            lane.waiting = [p for p in lane.waiting if id(p) not in taken]
            await _run(lane.database_url, batch)
    finally:
        lane.flushing = False
        # Only when cancelled (the loop is closing) is anything left: nobody will send it.
        for p in lane.waiting:
            _answer(p, DatabaseUnavailable("the event loop closed before the statement"))
        lane.waiting = []


async def _run(database_url: str, batch: list[_Pending]) -> None:
    keys, default_pool, limits = batch[0].shape
    sql, _ = _statement(keys, len(batch))
    args = [v for p in batch for v in p.values.values()]
    try:
        rows = await fetch(database_url, sql, *args, default_pool, *limits)
    except asyncpg.PostgresError as exc:
        if len(batch) > 1:
            # Nothing was written. Again one by one: only the job PostgreSQL refuses fails.
            await asyncio.gather(*(_run(database_url, [p]) for p in batch))
            return
        _answer(batch[0], LaneRefused(f"{type(exc).__name__}: {exc}"))
        return
    except Exception as exc:
        # DatabaseUnavailable: whether it committed is unknown, as for a single job.
        for p in batch:
            _answer(p, exc)
        return
    except BaseException:
        for p in batch:
            _answer(p, DatabaseUnavailable("the event loop closed during the statement"))
        raise
    by_id = {plain(row[0]): row for row in rows}
    for p in batch:
        _answer(p, by_id.get(p.values["id"]))


def _answer(p: _Pending, result: Any) -> None:
    if p.answer.done():  # its request was cancelled (the client went away)
        return
    if isinstance(result, BaseException):
        p.answer.set_exception(result)
    else:
        p.answer.set_result(result)


async def insert_plain(
    database_url: str, job: Job, limits: tuple[int, int, int], default_pool: str = DEFAULT_POOL
) -> Job | None:
    """Insert `job` (new, from admission without a session) as a queued job if its tenant has
    no limit (`limits`: the farm's defaults for max_running, jobs_per_minute, chars_per_day)
    and its Idempotency-Key is new; returns it with every column as written, or None."""
    job.status = "queued"
    job.dispatched_at = None
    values = _values(job)
    keys = tuple(values)
    _, returned = _statement(keys, 1)
    lane = _lane(database_url)
    loop = asyncio.get_running_loop()
    pending = _Pending(values, (keys, default_pool, limits), loop.create_future())
    lane.waiting.append(pending)
    if not lane.flushing:
        lane.flushing = True
        _flushes.add(task := loop.create_task(_flush(lane)))
        task.add_done_callback(_flushes.discard)
    row = await pending.answer
    if row is None:
        return None
    # The rest is what was sent. Into the instance's dict, not through its attributes: `job` is
    # transient and never enters a session, and the ORM's events per attribute cost more than
    # the statement's own encoding here.
    state = job.__dict__
    state.update(values)
    for key, value in zip(returned, row[1:], strict=True):
        state[key] = plain(value)
    return job

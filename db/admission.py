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
from typing import Any, cast

import asyncpg
from sqlalchemy import String
from sqlalchemy.dialects import postgresql

from core.enums import DEFAULT_POOL
from db.aio import DatabaseUnavailable, Grouped, Waiting, fetch, plain
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
# Concurrent requests in one API process share a statement (db/aio.py `Grouped`): while one is
# on its way to PostgreSQL, the jobs admitted meanwhile wait and go together in the next, one
# round trip and one commit for all of them (a statement stuck for 50 ms, on another
# transaction's row with the same Idempotency-Key say, no longer holds the others: they go in
# one of their own). A statement PostgreSQL refuses is tried again one job at a time, so one bad
# job refuses only itself.


async def _insert(database_url: str, group: list[Waiting[dict[str, Any]]]) -> None:
    shape = cast(tuple[tuple[str, ...], str, tuple[int, int, int]], group[0].shape)
    keys, default_pool, limits = shape
    sql, _ = _statement(keys, len(group))
    args = [v for w in group for v in w.item.values()]
    try:
        rows = await fetch(database_url, sql, *args, default_pool, *limits)
    except asyncpg.PostgresError as exc:
        if len(group) > 1:
            # Nothing was written. Again one by one: only the job PostgreSQL refuses fails.
            await asyncio.gather(*(_alone(database_url, w) for w in group))
            return
        raise LaneRefused(f"{type(exc).__name__}: {exc}") from exc
    by_id = {plain(row[0]): row for row in rows}
    for w in group:
        w.settle(by_id.get(w.item["id"]))


async def _alone(database_url: str, waiting: Waiting[dict[str, Any]]) -> None:
    try:
        await _insert(database_url, [waiting])
    except Exception as exc:
        waiting.settle(exc)


_lane: Grouped[dict[str, Any]] = Grouped(_insert, MAX_BATCH)


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
    row = await _lane(database_url, values, (keys, default_pool, limits))
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

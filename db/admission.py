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

The connection comes from db/aio.py's pools. Errors: a connection error raises
DatabaseUnavailable (the API answers 503, as for the usual path); any error PostgreSQL raised
for the statement left nothing behind (one statement, one transaction) and raises LaneRefused,
which sends the job the usual way.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from sqlalchemy import String
from sqlalchemy.dialects import postgresql

from core.enums import DEFAULT_POOL
from db.aio import DatabaseUnavailable, fetchrow, plain
from db.jobs import JOB_COLUMNS
from db.models import Job

__all__ = ["DatabaseUnavailable", "LaneRefused", "insert_plain"]


class LaneRefused(Exception):
    """PostgreSQL refused the statement; nothing was written."""


_BY_KEY = dict(JOB_COLUMNS)
_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]
_statements: dict[tuple[str, ...], tuple[str, list[str]]] = {}


def _sql_type(column: Any) -> str:
    # Without a length: an explicit cast to VARCHAR(n) would truncate a long value silently,
    # where the assignment to the column refuses it, as the usual INSERT does.
    return "VARCHAR" if isinstance(column.type, String) else column.type.compile(_DIALECT)


def _statement(keys: tuple[str, ...]) -> tuple[str, list[str]]:
    """INSERT ... SELECT of the given columns plus the tenant's pool, only for a tenant without
    limits; nothing on an Idempotency-Key already used by the tenant. Returns the SQL and the
    keys it returns: what PostgreSQL filled (the pool, server defaults, NULLs) and `metadata`,
    which JSONB stores normalised (key order)."""
    found = _statements.get(keys)
    if found is not None:
        return found
    columns = [_BY_KEY[k] for k in keys]
    n = len(columns)
    names = ", ".join(f'"{c.name}"' for c in columns)
    values = ", ".join(f"${i}::{_sql_type(c)}" for i, c in enumerate(columns, 1))
    back = [(k, c) for k, c in JOB_COLUMNS if k not in keys or k == "metadata_"]
    returning = ", ".join(f'"{c.name}"' for _, c in back)
    # A limit is the tenant's own value, else the farm's default; 0 (or none) is unlimited
    # (api/quotas.py `_limit`). The pool: the tenant's, else the default (db/pools.py).
    sql = (
        f'INSERT INTO jobs ({names}, "pool") '
        f"SELECT {values}, COALESCE(NULLIF(t.pool, ''), ${n + 1}::VARCHAR) FROM tenants AS t "
        f"WHERE t.id = ${n + 2}::UUID AND COALESCE(t.max_running, ${n + 3}::INTEGER) = 0 "
        f"AND COALESCE(t.jobs_per_minute, ${n + 4}::INTEGER) = 0 "
        f"AND COALESCE(t.chars_per_day, ${n + 5}::BIGINT) = 0 "
        "ON CONFLICT (tenant_id, idempotency_key) DO NOTHING "
        f"RETURNING {returning}"
    )
    found = _statements[keys] = (sql, [k for k, _ in back])
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
    return given


async def insert_plain(
    database_url: str, job: Job, limits: tuple[int, int, int], default_pool: str = DEFAULT_POOL
) -> Job | None:
    """Insert `job` (new, from admission without a session) as a queued job if its tenant has
    no limit (`limits`: the farm's defaults for max_running, jobs_per_minute, chars_per_day)
    and its Idempotency-Key is new; returns it with every column as written, or None."""
    job.status = "queued"
    job.dispatched_at = None
    values = _values(job)
    sql, returned = _statement(tuple(values))
    args = [*values.values(), default_pool, job.tenant_id, *limits]
    try:
        row = await fetchrow(database_url, sql, *args)
    except asyncpg.PostgresError as exc:
        raise LaneRefused(f"{type(exc).__name__}: {exc}") from exc
    if row is None:
        return None
    # The rest is what was sent. Into the instance's dict, not through its attributes: `job` is
    # transient and never enters a session, and the ORM's events per attribute cost more than
    # the statement's own encoding here.
    state = job.__dict__
    state.update(values)
    for key, value in zip(returned, row, strict=True):
        state[key] = plain(value)
    return job

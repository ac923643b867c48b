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

Pools: one asyncpg pool per database URL and event loop, made on first use in the process and
loop that serve (house rule 5), closed by the app's lifespan (`close_pools`). A pooled
connection that PostgreSQL closed is noticed by the loop and replaced on the next acquire, so no
pre-ping. Errors: a connection error raises DatabaseUnavailable (the API answers 503, as for the
usual path); any error PostgreSQL raised for the statement left nothing behind (one statement,
one transaction) and raises LaneRefused, which sends the job the usual way.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any, cast

import asyncpg
from sqlalchemy import String
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url

from core.enums import DEFAULT_POOL
from db.jobs import JOB_COLUMNS
from db.models import Job

# The same bounds as db/session.py's engine: a dead server or an exhausted pool becomes a quick
# 503, not a request hanging for minutes.
POOL_SIZE = 10
CONNECT_TIMEOUT = 5.0
POOL_TIMEOUT = 10.0
COMMAND_TIMEOUT = 10.0


class DatabaseUnavailable(Exception):
    """PostgreSQL could not be reached, or the connection broke during the statement."""


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


_pools: dict[tuple[str, asyncio.AbstractEventLoop], asyncio.Task[asyncpg.Pool]] = {}


async def _init_connection(conn: asyncpg.Connection) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep(conn: asyncpg.Connection) -> None:
    return None


async def _make_pool(database_url: str) -> asyncpg.Pool:
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    pool = await asyncpg.create_pool(
        dsn,
        min_size=0,
        max_size=POOL_SIZE,
        timeout=CONNECT_TIMEOUT,
        command_timeout=COMMAND_TIMEOUT,
        init=_init_connection,
        # A connection here only ever runs this one autocommit statement: no session state
        # (SET, LISTEN, advisory locks, cursors) to reset, and asyncpg's reset is a round trip
        # per release.
        reset=_keep,
    )
    return cast(asyncpg.Pool, pool)


async def _pool(database_url: str) -> asyncpg.Pool:
    loop = asyncio.get_running_loop()
    task = _pools.get((database_url, loop))
    if task is None:
        task = _pools[(database_url, loop)] = loop.create_task(_make_pool(database_url))
    return await task


async def close_pools() -> None:
    """Close this event loop's pools (the app's lifespan, at shutdown)."""
    loop = asyncio.get_running_loop()
    for key in [k for k in _pools if k[1] is loop]:
        task = _pools.pop(key)
        try:
            pool = await task
        except Exception:
            continue
        await pool.close()
    # Pools of loops that ended without a lifespan (a test's): nothing can close them now.
    for key in [k for k in _pools if k[1].is_closed()]:
        del _pools[key]


# Errors that say the connection, not the statement, failed: whether PostgreSQL committed is
# then unknown to us, as for a failed COMMIT on the usual path, and the answer is the same 503.
_CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.exceptions.OperatorInterventionError,
)


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
        pool = await _pool(database_url)
        async with pool.acquire(timeout=POOL_TIMEOUT) as conn:
            row = await conn.fetchrow(sql, *args)
    except _CONNECTION_ERRORS as exc:
        raise DatabaseUnavailable(f"{type(exc).__name__}: {exc}") from exc
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
        state[key] = _plain(value)
    return job


def _plain(value: Any) -> Any:
    # asyncpg returns its own UUID class (a C-backed subclass of uuid.UUID): turned into a plain
    # uuid.UUID, the job is exactly what the session path returns, for the answer and beyond.
    if isinstance(value, uuid.UUID) and type(value) is not uuid.UUID:
        return uuid.UUID(bytes=value.bytes)
    return value

"""PostgreSQL from the API's event loop: asyncpg pools for single autocommit statements.

Used where a request's whole database work is one or two statements and a thread hop plus a
SQLAlchemy session cost more than the work: a plain job's INSERT (db/admission.py) and an API
key's lookup (db/keys.py). Everything else goes through db/session.py in a thread.

One pool per database URL and event loop, made on first use in the process and loop that serve
(house rule 5), closed by the app's lifespan (`close_pools`). A pooled connection that
PostgreSQL closed is noticed by the loop and replaced on the next acquire, so no pre-ping. A
connection error, or an exhausted pool, raises DatabaseUnavailable (the API answers 503, as it
does for the session path); an error PostgreSQL raised for a statement propagates as asyncpg's.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any, cast

import asyncpg
from sqlalchemy.engine import make_url

# The same bounds as db/session.py's engine: a dead server or an exhausted pool becomes a quick
# 503, not a request hanging for minutes.
POOL_SIZE = 10
CONNECT_TIMEOUT = 5.0
POOL_TIMEOUT = 10.0
COMMAND_TIMEOUT = 10.0


class DatabaseUnavailable(Exception):
    """PostgreSQL could not be reached, or the connection broke during the statement."""


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
        # A connection here only ever runs single autocommit statements: no session state
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


async def fetchrow(database_url: str, sql: str, *args: Any) -> asyncpg.Record | None:
    """One statement on a pooled connection in autocommit (committed when it returns)."""
    try:
        pool = await _pool(database_url)
        async with pool.acquire(timeout=POOL_TIMEOUT) as conn:
            return await conn.fetchrow(sql, *args)
    except _CONNECTION_ERRORS as exc:
        raise DatabaseUnavailable(f"{type(exc).__name__}: {exc}") from exc


async def fetch(database_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """One statement on a pooled connection in autocommit; all its rows."""
    try:
        pool = await _pool(database_url)
        async with pool.acquire(timeout=POOL_TIMEOUT) as conn:
            return cast(list[asyncpg.Record], await conn.fetch(sql, *args))
    except _CONNECTION_ERRORS as exc:
        raise DatabaseUnavailable(f"{type(exc).__name__}: {exc}") from exc


def plain(value: Any) -> Any:
    """asyncpg's UUIDs are its own C-backed subclass of uuid.UUID: a plain uuid.UUID instead, so
    what comes out is exactly what the session path returns, for answers and comparisons."""
    if isinstance(value, uuid.UUID) and type(value) is not uuid.UUID:
        return uuid.UUID(bytes=value.bytes)
    return value

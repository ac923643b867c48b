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
import itertools
import json
import uuid
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

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
    rows = await fetch(database_url, sql, *args)
    return rows[0] if rows else None


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


# --- grouping ---------------------------------------------------------------------------------

T = TypeVar("T")


@dataclass(eq=False)
class Waiting(Generic[T]):
    """One caller's item, waiting for a statement; `answer` takes its result or its error."""

    item: T
    shape: Hashable
    answer: asyncio.Future[Any]

    def settle(self, result: Any) -> None:
        if self.answer.done():  # its caller was cancelled (a client that went away)
            return
        if isinstance(result, BaseException):
            self.answer.set_exception(result)
        else:
            self.answer.set_result(result)


@dataclass(eq=False)
class _Queue:
    waiting: list[Waiting[Any]] = field(default_factory=list)
    # Per running flusher, when its statement left (or when it was started, until it sends).
    sent: dict[int, float] = field(default_factory=dict)


_flusher_ids = itertools.count()


class Grouped(Generic[T]):
    """Calls made while a statement is on its way go together in the next one: one round trip
    (and, for writes, one commit and one WAL flush) for all of them, per database URL and event
    loop. Nothing waits for a group to fill: a call alone goes at once; under load the groups
    grow by themselves, up to `max_group`, of calls of one `shape`.

    One statement at a time, unless the latest has been on its way for `stall_seconds` (a lock
    wait, say: an INSERT waiting on another transaction's row with the same key): then the calls
    waiting behind it go in a statement of their own, up to `max_flushers` at once, so one slow
    statement holds up no one else's for long.

    `run(database_url, group)` sends one statement for the group and settles every member
    (Waiting.settle); what it raises settles the members it left unsettled."""

    def __init__(
        self,
        run: Callable[[str, list[Waiting[T]]], Awaitable[None]],
        max_group: int,
        *,
        stall_seconds: float = 0.05,
        max_flushers: int = 4,
    ) -> None:
        self._run = run
        self.max_group = max_group
        self.stall_seconds = stall_seconds
        self.max_flushers = max_flushers
        self._queues: dict[tuple[str, asyncio.AbstractEventLoop], _Queue] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # the loop holds tasks weakly

    def busy(self, database_url: str) -> bool:
        """Whether a statement is on its way and none waits (tests wait for this)."""
        queue = self._queues.get((database_url, asyncio.get_running_loop()))
        return queue is not None and bool(queue.sent) and not queue.waiting

    async def __call__(self, database_url: str, item: T, shape: Hashable = None) -> Any:
        loop = asyncio.get_running_loop()
        queue = self._queues.get((database_url, loop))
        if queue is None:
            for key in [k for k in self._queues if k[1].is_closed()]:
                del self._queues[key]  # a finished loop's (a test's)
            queue = self._queues[(database_url, loop)] = _Queue()
        waiting = Waiting(item, shape, loop.create_future())
        queue.waiting.append(waiting)
        try:
            while True:
                if waiting not in queue.waiting:
                    return await waiting.answer  # on its way
                now = loop.time()
                fresh = self._fresh(queue, now)
                flushers = len(queue.sent)
                if flushers == 0 or (not fresh and flushers < self.max_flushers):
                    self._start(database_url, queue, now)
                elif not fresh:
                    return await waiting.answer  # every statement allowed is stuck: wait
                # Behind a statement on its way: wait for it, but not past its stall.
                newest = max(queue.sent.values())
                await asyncio.wait({waiting.answer}, timeout=newest + self.stall_seconds - now)
                if waiting.answer.done():
                    return waiting.answer.result()
        except asyncio.CancelledError:
            # Its caller is gone: not sent if it was still waiting, and nobody reads the answer.
            if waiting in queue.waiting:
                queue.waiting.remove(waiting)
            waiting.answer.cancel()
            raise

    def _fresh(self, queue: _Queue, now: float, but: int | None = None) -> bool:
        """Whether a flusher (other than `but`) has a statement on its way that is not stalled."""
        return any(now - t < self.stall_seconds for f, t in queue.sent.items() if f != but)

    def _start(self, database_url: str, queue: _Queue, now: float) -> None:
        flusher = next(_flusher_ids)
        queue.sent[flusher] = now  # it sends as soon as this task yields
        task = asyncio.get_running_loop().create_task(self._flush(database_url, queue, flusher))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, database_url: str, queue: _Queue, flusher: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            while queue.waiting:
                shape = queue.waiting[0].shape
                group = [w for w in queue.waiting if w.shape == shape][: self.max_group]
                taken = set(map(id, group))
                queue.waiting = [w for w in queue.waiting if id(w) not in taken]
                queue.sent[flusher] = loop.time()
                try:
                    await self._run(database_url, group)
                except Exception as exc:
                    for w in group:
                        w.settle(exc)
                except BaseException:
                    for w in group:
                        w.settle(DatabaseUnavailable("the event loop closed during a statement"))
                    raise
                if self._fresh(queue, loop.time(), but=flusher):
                    # Another flusher's statement is on its way and not stalled: it takes what
                    # waits when it returns, so groups stay large (one statement at a time).
                    break
        except BaseException:
            # Cancelled (the loop closing): nobody will send what is left.
            for w in queue.waiting:
                w.settle(DatabaseUnavailable("the event loop closed before the statement"))
            queue.waiting = []
            raise
        finally:
            del queue.sent[flusher]

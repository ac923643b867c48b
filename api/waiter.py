"""Waiting for jobs to end without holding a thread or a database connection per waiter.

One poller per API process asks PostgreSQL, in a single query per tick, which of the jobs that
requests are waiting on have reached a terminal state, and wakes exactly those. A waiter costs
an asyncio future; the number of waiters is capped so a flood gets a 429 with `Retry-After`
instead of a slowly starving process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from anyio import to_thread
from sqlalchemy import select

from api.metrics import PREDICT_REFUSED, PREDICT_WAITING
from core.enums import JobStatus
from core.errors import TooManyWaiting
from db.models import Job
from db.session import get_engine

log = logging.getLogger("voicefarm.api")

TERMINAL = [s.value for s in JobStatus if s.is_terminal()]


class JobWaiter:
    def __init__(self, database_url: str, *, capacity: int, interval: float = 0.25) -> None:
        self.database_url = database_url
        self.capacity = capacity
        self.interval = interval
        self.slots_taken = 0
        self._futures: dict[uuid.UUID, list[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Reserve a waiting place before any work is done, or refuse with 429."""
        if self.slots_taken >= self.capacity:
            PREDICT_REFUSED.inc()
            raise TooManyWaiting(
                f"{self.capacity} requests are already waiting for their audio; retry shortly, "
                "or submit with POST /v1/jobs and poll (or use a webhook), which never waits",
                retry_after=max(1, round(self.interval * 20)),
            )
        self.slots_taken += 1
        PREDICT_WAITING.inc()
        try:
            yield
        finally:
            self.slots_taken -= 1
            PREDICT_WAITING.dec()

    async def wait(
        self, job_id: uuid.UUID, timeout: float, gone: Callable[[], Awaitable[bool]]
    ) -> bool:
        """True once the job is terminal; False on timeout or when `gone()` says the client
        left (checked about once a second)."""
        self._ensure_running()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._futures.setdefault(job_id, []).append(fut)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while not fut.done():
                left = deadline - loop.time()
                if left <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(fut), timeout=min(1.0, left))
                if not fut.done() and await gone():
                    log.info("event=api.wait_abandoned job=%s", job_id)
                    return False
            return True
        finally:
            waiters = self._futures.get(job_id, [])
            if fut in waiters:
                waiters.remove(fut)
            if not waiters:
                self._futures.pop(job_id, None)

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._poll(), name="job-waiter")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            ids = list(self._futures)
            if not ids:
                continue
            try:
                done = await to_thread.run_sync(self._terminal, ids)
            except Exception as exc:  # the database is down: keep waiting, try next tick
                log.warning("event=api.wait_poll_failed error=%s", type(exc).__name__)
                continue
            for job_id in done:
                for fut in self._futures.get(job_id, []):
                    if not fut.done():
                        fut.set_result(None)

    def _terminal(self, ids: list[uuid.UUID]) -> set[uuid.UUID]:
        with get_engine(self.database_url).connect() as conn:
            rows = conn.execute(select(Job.id).where(Job.id.in_(ids), Job.status.in_(TERMINAL)))
            return {r[0] for r in rows}

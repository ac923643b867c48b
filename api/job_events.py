"""Live job state for server-sent event streams, without a thread or a connection per client.

One poller per API process (the JobWaiter's idea, api/waiter.py) reads, once per tick, every job
some stream watches (one query) and the recent and active jobs of every tenant whose list some
stream watches (one query per watched tenant), then wakes all streams at once. A stream costs a
coroutine and the last state it sent; the number of streams is capped per process so a flood
gets a 429 with `Retry-After`. With no stream open the poller asks nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from anyio import to_thread
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, defer

from api.waiter import TERMINAL
from core.errors import VoicefarmError
from db.models import Job
from db.session import get_engine
from db.views import job_view

log = logging.getLogger("voicefarm.api")

# Streams per API process; each is cheap, the cap bounds a flood (429 past it).
MAX_STREAMS = 1000
# The list stream covers active jobs and those changed within this window (newest first).
LIST_WINDOW = timedelta(minutes=30)
LIST_LIMIT = 200

View = dict[str, Any]
Scope = uuid.UUID | None  # a tenant, or None: every tenant (admin keys)


class TooManyStreams(VoicefarmError):
    status_code: ClassVar[int] = 429
    code: ClassVar[str] = "too_many_streams"


class JobEvents:
    def __init__(
        self,
        database_url: str,
        base_url: str,
        *,
        capacity: int = MAX_STREAMS,
        interval: float = 0.5,
    ) -> None:
        self.database_url = database_url
        self.base_url = base_url
        self.capacity = capacity
        self.interval = interval
        self.streams = 0
        self._jobs: Counter[uuid.UUID] = Counter()
        self._scopes: Counter[Scope] = Counter()
        # Latest state: a job's view, or None once a poll found it gone.
        self.jobs: dict[uuid.UUID, View | None] = {}
        self.lists: dict[Scope, dict[str, View]] = {}
        self._tick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def admit(self) -> None:
        """Refuse with 429 when the process's streams are all taken (checked before the 200)."""
        if self.streams >= self.capacity:
            raise TooManyStreams(
                f"{self.capacity} event streams are already open on this API process; retry "
                "shortly, or poll GET /v1/jobs/{id}",
                retry_after=5,
            )

    @contextlib.contextmanager
    def stream(self) -> Iterator[None]:
        """Count an open stream (inside the response body, so a body never started holds none)."""
        self.streams += 1
        try:
            yield
        finally:
            self.streams -= 1

    @contextlib.contextmanager
    def watching(self, *, job_id: uuid.UUID | None = None, scope: Scope = None) -> Iterator[None]:
        """Have the poller read `job_id` (or the list of `scope`) while the block runs."""
        self._ensure_running()
        if job_id is not None:
            self._jobs[job_id] += 1
        else:
            self._scopes[scope] += 1
        try:
            yield
        finally:
            if job_id is not None:
                self._jobs[job_id] -= 1
                if self._jobs[job_id] <= 0:
                    del self._jobs[job_id]
                    self.jobs.pop(job_id, None)
            else:
                self._scopes[scope] -= 1
                if self._scopes[scope] <= 0:
                    del self._scopes[scope]
                    self.lists.pop(scope, None)

    async def next_tick(self, timeout: float) -> bool:
        """Wait for the next poll; False when `timeout` passed first."""
        tick = self._tick
        try:
            await asyncio.wait_for(tick.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._poll(), name="job-events")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            ids, scopes = list(self._jobs), list(self._scopes)
            if not ids and not scopes:
                continue
            try:
                jobs, lists = await to_thread.run_sync(self._read, ids, scopes)
            except Exception as exc:  # the database is down: keep the streams, try next tick
                log.warning("event=api.events_poll_failed error=%s", type(exc).__name__)
                continue
            self.jobs.update(jobs)
            self.lists.update(lists)
            tick, self._tick = self._tick, asyncio.Event()
            tick.set()

    def _read(
        self, ids: list[uuid.UUID], scopes: list[Scope]
    ) -> tuple[dict[uuid.UUID, View | None], dict[Scope, dict[str, View]]]:
        # `text` may be long and no view shows it.
        with Session(get_engine(self.database_url)) as session:
            jobs: dict[uuid.UUID, View | None] = dict.fromkeys(ids)
            if ids:
                for job in session.scalars(
                    select(Job).options(defer(Job.text)).where(Job.id.in_(ids))
                ):
                    jobs[job.id] = job_view(job, self.base_url)
            lists: dict[Scope, dict[str, View]] = {}
            since = datetime.now(UTC) - LIST_WINDOW
            for scope in scopes:
                stmt = (
                    select(Job)
                    .options(defer(Job.text))
                    .where(or_(Job.status.notin_(TERMINAL), Job.updated_at > since))
                    .order_by(Job.created_at.desc())
                    .limit(LIST_LIMIT)
                )
                if scope is not None:
                    stmt = stmt.where(Job.tenant_id == scope)
                lists[scope] = {
                    str(j.id): job_view(j, self.base_url) for j in session.scalars(stmt)
                }
            return jobs, lists

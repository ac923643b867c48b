"""Server-sent events: `GET /v1/jobs/{id}/events` and `GET /v1/jobs/events` (api/job_events.py).

One job's stream sends `status` (the whole job, as GET /v1/jobs/{id} shows it) when its status
changes, `progress` (`{id, status, progress}`) when segments are done, and after the terminal
status a `done` event; then it closes. The list stream sends `job` (the whole job) for every job
of the caller's that is active or changed recently, first all of them, then each change; it runs
until the client leaves. Both send a `: keepalive` comment every 15 s of silence.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from api.auth import Caller
from api.deps import CallerDep, SettingsDep
from api.errors import responses
from api.job_events import JobEvents, TooManyStreams
from core.enums import JobStatus
from core.errors import JobNotFound, TooManyAuthFailures, Unauthorized
from core.settings import Settings
from db import jobs as q
from db.session import session_scope
from db.views import job_view

router = APIRouter(
    prefix="/v1/jobs", tags=["jobs"], responses=responses(Unauthorized, TooManyAuthFailures)
)
HEARTBEAT_SECONDS = 15.0
# Proxies (nginx) must pass events through as they come instead of buffering them.
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "A stream of events"}
}


def get_events(request: Request, settings: Settings) -> JobEvents:
    events: JobEvents | None = getattr(request.app.state, "job_events", None)
    if events is None:
        events = JobEvents(settings.database_url, settings.public_base_url)
        request.app.state.job_events = events
    return events


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _snapshot(view: dict[str, Any]) -> tuple[Any, ...]:
    progress = view["progress"]
    return (view["status"], progress["segments_done"], progress["segments_total"])


def _owned_view(settings: Settings, job_id: uuid.UUID, caller: Caller) -> dict[str, Any]:
    with session_scope(settings.database_url) as session:
        return job_view(q.get_job(session, job_id, tenant_id=caller.sees), settings.public_base_url)


@router.get(
    "/events", responses={**SSE, **responses(TooManyStreams)}, response_class=StreamingResponse
)
async def list_events(
    request: Request, settings: SettingsDep, caller: CallerDep
) -> StreamingResponse:
    """Live changes to the caller's active and recent jobs (server-sent `job` events)."""
    events = get_events(request, settings)
    events.admit()

    async def body() -> AsyncIterator[bytes]:
        with events.stream(), events.watching(scope=caller.sees):
            sent: dict[str, tuple[Any, ...]] = {}
            yield b"retry: 2000\n\n"
            while True:
                if not await events.next_tick(HEARTBEAT_SECONDS):
                    yield b": keepalive\n\n"
                    continue
                for job_id, view in events.lists.get(caller.sees, {}).items():
                    snap = _snapshot(view)
                    if sent.get(job_id) != snap:
                        sent[job_id] = snap
                        yield _event("job", view)

    return StreamingResponse(body(), media_type="text/event-stream", headers=HEADERS)


@router.get(
    "/{job_id}/events",
    responses={**SSE, **responses(JobNotFound, TooManyStreams)},
    response_class=StreamingResponse,
)
async def job_events(
    job_id: uuid.UUID, request: Request, settings: SettingsDep, caller: CallerDep
) -> StreamingResponse:
    """A job's status and progress as server-sent events, until it ends."""
    events = get_events(request, settings)
    events.admit()
    first = await run_in_threadpool(_owned_view, settings, job_id, caller)

    async def body() -> AsyncIterator[bytes]:
        with events.stream(), events.watching(job_id=job_id):
            yield b"retry: 2000\n\n"
            yield _event("status", first)
            view, last = first, _snapshot(first)
            while not JobStatus(view["status"]).is_terminal():
                if not await events.next_tick(HEARTBEAT_SECONDS):
                    yield b": keepalive\n\n"
                    continue
                if job_id not in events.jobs:
                    continue  # not polled yet
                current = events.jobs[job_id]
                if current is None:  # deleted (expired) while watched
                    yield _event("done", {"id": str(job_id), "status": "gone"})
                    return
                view, snap = current, _snapshot(current)
                if snap[0] != last[0]:
                    yield _event("status", view)
                elif snap != last:
                    yield _event(
                        "progress",
                        {"id": view["id"], "status": view["status"], "progress": view["progress"]},
                    )
                last = snap
            yield _event("done", {"id": view["id"], "status": view["status"]})

    return StreamingResponse(body(), media_type="text/event-stream", headers=HEADERS)

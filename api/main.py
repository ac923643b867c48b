"""The FastAPI app factory. `uvicorn api.main:app`."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import errors
from api.auth import close_clients, get_caller
from api.metrics import CountRequests
from api.routes import (
    batches,
    compat,
    console,
    engines,
    events,
    health,
    jobs,
    openai_speech,
    text,
    voices,
    webhook_ops,
)
from api.security import BodyLimit
from core.errors import TooManyAuthFailures, Unauthorized
from core.heap import freeze_startup_objects
from core.logging import configure_logging
from core.settings import get_settings
from db.aio import close_pools
from tasks.send import warm_up


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    configure_logging(settings.log_level)
    warm_up()
    # The event loop shares its process with the dispatch thread (a pass and its publishes are
    # milliseconds of CPU) and the session path's threads: with the default 5 ms switch
    # interval, each time one of them held the GIL every response waited up to 5 ms for it.
    sys.setswitchinterval(0.001)
    freeze_startup_objects()  # a gen-2 collection no longer stalls every request for ~150 ms
    yield
    await close_pools()
    await close_clients()
    waiter = getattr(app.state, "waiter", None)
    if waiter is not None:
        await waiter.close()
    job_events = getattr(app.state, "job_events", None)
    if job_events is not None:
        await job_events.close()


class HeadAsGet:
    """HEAD is GET without the body (RFC 9110 9.3.2): every readable resource answers it, with the
    status and headers GET would have, instead of FastAPI's 405 (load balancers and uptime
    checks probe with HEAD). The body is produced and dropped, so HEAD costs what GET does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)


def create_app() -> FastAPI:
    app = FastAPI(
        title="voicefarm",
        version="0.1.0",
        summary="Asynchronous text-to-speech jobs: submit, poll or get a signed webhook, "
        "download the audio.",
        lifespan=lifespan,
    )
    errors.install(app)
    settings = get_settings()
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_request_bytes,
        per_path={
            "/v1/voices": voices.upload_body_limit(settings),
            # An inline prompt recording travels base64-encoded in the JSON body.
            "/api/predict": voices.upload_body_limit(settings) * 4 // 3,
            "/api/predict/": voices.upload_body_limit(settings) * 4 // 3,
            "/v1/batches": settings.batch_max_request_bytes,
        },
    )
    app.add_middleware(HeadAsGet)
    app.add_middleware(CountRequests)
    # /healthz, /readyz and /metrics stay open (probes and Prometheus; docs/SECURITY.md).
    # Every other router authenticates; routes that scope by tenant take CallerDep too, which
    # FastAPI resolves once per request.
    auth = [Depends(get_caller)]
    refusals = errors.responses(Unauthorized, TooManyAuthFailures)
    app.include_router(health.router)
    # Before jobs: `/v1/jobs/events` must not be read as a job id.
    app.include_router(events.router, dependencies=auth)
    app.include_router(jobs.router, dependencies=auth)
    app.include_router(engines.router, dependencies=auth, responses=refusals)
    app.include_router(voices.router, dependencies=auth)
    app.include_router(compat.router, dependencies=auth, responses=refusals)
    app.include_router(text.router, dependencies=auth, responses=refusals)
    app.include_router(batches.router, dependencies=auth)
    app.include_router(webhook_ops.router, dependencies=auth)
    app.include_router(openai_speech.router, dependencies=auth, responses=refusals)
    # The console's page and files are public; it calls the API with the key the user enters.
    console.mount(app)
    return app


app = create_app()

"""The FastAPI app factory. `uvicorn api.main:app`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import errors
from api.routes import compat, engines, health, jobs
from api.security import ApiKey, BodyLimit
from core.logging import configure_logging
from core.settings import get_settings


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    configure_logging(settings.log_level)
    yield
    waiter = getattr(app.state, "waiter", None)
    if waiter is not None:
        await waiter.close()


def create_app() -> FastAPI:
    app = FastAPI(
        title="voicefarm",
        version="0.1.0",
        summary="Asynchronous text-to-speech jobs: submit, poll or get a signed webhook, "
        "download the audio.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=get_settings().max_request_bytes)
    app.include_router(health.router)
    app.include_router(jobs.router, dependencies=[ApiKey])
    app.include_router(engines.router, dependencies=[ApiKey])
    app.include_router(compat.router, dependencies=[ApiKey])
    return app


app = create_app()

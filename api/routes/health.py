"""/healthz (the process is up), /readyz (database, broker and storage answer), /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from api.deps import SettingsDep, StorageDep
from api.errors import DATABASE_RETRY_AFTER
from api.metrics import REGISTRY
from api.schemas import Readiness
from db.session import get_engine

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Readiness)
async def healthz() -> Readiness:
    """The API process is up."""
    # async: answered on the event loop, so a busy threadpool never delays the liveness probe.
    return Readiness(status="ok", checks={})


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready; see `checks`"}},
)
def readyz(settings: SettingsDep, storage: StorageDep) -> JSONResponse:
    """Ready when PostgreSQL, the Redis broker and the storage backend all answer."""
    import redis

    checks: dict[str, str] = {}
    try:
        with get_engine(settings.database_url).connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        client = redis.Redis.from_url(
            settings.redis_url, socket_timeout=2, socket_connect_timeout=2
        )
        client.ping()
        client.close()
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"error: {type(exc).__name__}"
    try:
        storage.check()
        checks["storage"] = "ok"
    except Exception as exc:
        checks["storage"] = f"error: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    body = Readiness(status="ready" if ready else "unavailable", checks=checks)
    if ready:
        return JSONResponse(body.model_dump())
    headers = {"Retry-After": str(DATABASE_RETRY_AFTER)}
    return JSONResponse(body.model_dump(), status_code=503, headers=headers)


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

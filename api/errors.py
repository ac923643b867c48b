"""One handler for the VoicefarmError family, one for request-shape errors; stable bodies."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.schemas import ErrorBody
from core.errors import VoicefarmError

log = logging.getLogger("voicefarm.api")


def responses(*errors: type[VoicefarmError]) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status it can answer with, described by its codes."""
    out: dict[int | str, dict[str, Any]] = {}
    for err in errors:
        entry = out.setdefault(err.status_code, {"model": ErrorBody, "description": ""})
        entry["description"] = ", ".join(filter(None, [entry["description"], f"`{err.code}`"]))
    return out


def _body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    err = {"code": code, "message": message}
    if field:
        err["field"] = field
    return {"error": err}


def install(app: FastAPI) -> None:
    @app.exception_handler(VoicefarmError)
    async def _voicefarm(_: Request, exc: VoicefarmError) -> JSONResponse:
        return JSONResponse(exc.to_body(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        field = ".".join(loc) or None
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            msg, field = "request body is not valid JSON", None
        message = f"{field}: {msg}" if field else msg
        return JSONResponse(_body("validation_failed", message, field), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            _body(code, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("event=api.unhandled")
        return JSONResponse(
            _body("internal_error", "unexpected error; it has been logged"), status_code=500
        )

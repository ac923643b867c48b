"""One handler for the VoicefarmError family, one for request-shape errors; stable bodies."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope

from api.schemas import ErrorBody
from core.errors import (
    AudioMissing,
    BatchInvalid,
    InvalidCursor,
    ServiceUnavailable,
    TextEmpty,
    ValidationFailed,
    VoicefarmError,
)

log = logging.getLogger("voicefarm.api")
DATABASE_RETRY_AFTER = 5


def responses(*errors: type[VoicefarmError]) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status it can answer with, described by its codes."""
    out: dict[int | str, dict[str, Any]] = {}
    for err in errors:
        entry = out.setdefault(err.status_code, {"model": ErrorBody, "description": ""})
        entry["description"] = ", ".join(filter(None, [entry["description"], f"`{err.code}`"]))
    return out


def _printable(text: str) -> str:
    # Parts of the request echoed back (a field name, pydantic's message) may hold a lone
    # surrogate that UTF-8 cannot encode: replace it rather than fail the error response.
    return text.encode("utf-8", "replace").decode("utf-8")


def _body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    err = {"code": code, "message": _printable(message)}
    if field:
        err["field"] = _printable(field)
    return {"error": err}


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}
# A schema-level refusal of these fields has a more precise code than `validation_failed`.
_FIELD_CODES: dict[tuple[str, str], type[VoicefarmError]] = {
    ("text", "string_too_short"): TextEmpty,
    # A cursor the schema's pattern refuses is as foreign as one that does not decode: one code.
    ("cursor", "string_pattern_mismatch"): InvalidCursor,
    ("cursor", "string_too_long"): InvalidCursor,
    # POST /v1/voices without its recording.
    ("audio", "missing"): AudioMissing,
}


def validation_error(errors: Sequence[Any]) -> VoicefarmError:
    """The first of pydantic's errors as one of ours, with the field it concerns."""
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    field = ".".join(loc) or None
    msg = first.get("msg", "invalid request")
    if first.get("type") == "json_invalid":
        msg, field = "request body is not valid JSON", None
    cls = _FIELD_CODES.get((field or "", first.get("type", "")), ValidationFailed)
    return cls(f"{field}: {msg}" if field else msg, field=field)


def _allowed_methods(app: FastAPI, scope: Scope) -> set[str]:
    """Every method some route serves at this path, asked of the routes themselves."""
    methods = set()
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        probe = {**scope, "method": method}
        if any(route.matches(probe)[0] == Match.FULL for route in app.router.routes):
            methods.add(method)
    if "GET" in methods:
        methods.add("HEAD")  # answered as GET without the body (api.main.HeadAsGet)
    return methods


def database_unavailable() -> ServiceUnavailable:
    """The answer when PostgreSQL is stopped, restarting, unreachable or out of connections."""
    return ServiceUnavailable(
        "the database is unavailable; nothing was changed, retry shortly",
        retry_after=DATABASE_RETRY_AFTER,
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(VoicefarmError)
    async def _voicefarm(_: Request, exc: VoicefarmError) -> JSONResponse:
        body = _body(exc.code, exc.message, exc.field)
        if isinstance(exc, BatchInvalid):
            body["error"]["items"] = exc.items
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers())

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(PoolTimeout)
    async def _database_down(_: Request, exc: Exception) -> JSONResponse:
        # PostgreSQL is stopped, restarting, unreachable or out of connections: the client can
        # retry, so this is a 503 with Retry-After, never a 500. Nothing was half-written: the
        # request's transaction rolled back at the session boundary.
        log.warning("event=api.database_unavailable error=%s", type(exc).__name__)
        return await _voicefarm(_, database_unavailable())

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await _voicefarm(request, validation_error(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's "error parsing the body" (not UTF-8, numbers Python refuses, nesting
            # too deep): the same answer as any other body that is not valid JSON.
            ctype = request.headers.get("content-type", "").lower()
            what = "multipart/form-data" if ctype.startswith("multipart/") else "UTF-8 JSON"
            return await _voicefarm(request, ValidationFailed(f"request body is not valid {what}"))
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            # Starlette names only the first route that matched the path; a path served by
            # several routes (GET and POST /v1/jobs) must list every method (RFC 9110).
            headers["Allow"] = ", ".join(sorted(_allowed_methods(app, request.scope)))
        return JSONResponse(
            _body(code, str(exc.detail)), status_code=exc.status_code, headers=headers or None
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("event=api.unhandled")
        return JSONResponse(
            _body("internal_error", "unexpected error; it has been logged"), status_code=500
        )

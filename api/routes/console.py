"""`/console`: the job console, plain HTML, JavaScript and CSS from api/static/console/.

No build step and nothing from a CDN. The page holds no secret: the user enters an API key,
which the page keeps in localStorage and sends as `Authorization: Bearer` on every call. The
CSP allows nothing but this origin (audio plays from `blob:` URLs the page fetched with the key),
so an injected script or style would not run.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

STATIC = Path(__file__).resolve().parent.parent / "static" / "console"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)


class ConsoleFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-cache"
        return response


def mount(app: FastAPI) -> None:
    app.mount("/console", ConsoleFiles(directory=STATIC, html=True), name="console")

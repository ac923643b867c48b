"""The settings dependency, resolved on the event loop."""

from __future__ import annotations

from fastapi import Request

from core.settings import Settings, get_settings


async def current_settings(request: Request) -> Settings:
    """The process's settings, or what a test installed with
    `app.dependency_overrides[get_settings]` (tests/fixtures/api.py).

    async on purpose: FastAPI runs every sync dependency in a threadpool thread, and a hand-off
    costs more CPU than `get_settings()` itself (docs/BENCHMARKS.md, Admission). Being another
    callable, FastAPI would not apply an override of `get_settings` to it: it is looked up here."""
    override = request.app.dependency_overrides.get(get_settings)
    return override() if override is not None else get_settings()

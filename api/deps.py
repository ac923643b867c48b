"""Injectable types, declared once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from api.waiter import JobWaiter
from core.settings import Settings, get_settings
from core.storage import Storage, get_storage
from db.session import commit, get_sessionmaker, rollback


def get_db(settings: Annotated[Settings, Depends(get_settings)]) -> Iterator[Session]:
    """A session per request, committed here at the boundary (house rule 3): routes only flush.

    It is declared with `scope="function"` below, so the commit (and the Celery messages queued
    with `after_commit`) happens when the route returns, before the response is sent, and the
    pooled connection goes back before a streamed body starts: a slow reader never holds one.
    A failed commit propagates to the error handlers; the client never sees an id whose row is
    not durable."""
    session = get_sessionmaker(settings.database_url)()
    try:
        yield session
        commit(session)
    except BaseException:
        with contextlib.suppress(Exception):  # a dead connection must not mask the cause
            rollback(session)
        raise
    finally:
        session.close()


def get_waiter(request: Request, settings: Annotated[Settings, Depends(get_settings)]) -> JobWaiter:
    """The process's one JobWaiter (api/waiter.py), made on first use and closed at shutdown."""
    waiter: JobWaiter | None = getattr(request.app.state, "waiter", None)
    if waiter is None:
        waiter = JobWaiter(settings.database_url, capacity=settings.predict_max_waiting)
        request.app.state.waiter = waiter
    return waiter


def _storage(settings: Annotated[Settings, Depends(get_settings)]) -> Storage:
    return get_storage(settings)


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_db, scope="function")]
StorageDep = Annotated[Storage, Depends(_storage)]
WaiterDep = Annotated[JobWaiter, Depends(get_waiter)]

"""Injectable types, declared once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import Depends, Query, Request, Response
from pydantic import BaseModel, TypeAdapter
from sqlalchemy.orm import Session

from api.auth import Caller, get_caller
from api.settings import current_settings
from api.waiter import JobWaiter
from core.settings import Settings
from core.storage import Storage, get_storage
from db.session import commit, get_sessionmaker, rollback


@contextmanager
def request_session(settings: Settings) -> Iterator[Session]:
    """A session committed (or rolled back) when the block ends: the request boundary of house
    rule 3, for `get_db` and for routes that do all their database work in one thread
    (POST /v1/jobs). Only after this block returns is a row durable; nothing inside commits."""
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


def get_db(settings: Annotated[Settings, Depends(current_settings)]) -> Iterator[Session]:
    """A session per request, committed here at the boundary (house rule 3): routes only flush.

    It is declared with `scope="function"` below, so the commit (and the Celery messages queued
    with `after_commit`) happens when the route returns, before the response is sent, and the
    pooled connection goes back before a streamed body starts: a slow reader never holds one.
    A failed commit propagates to the error handlers; the client never sees an id whose row is
    not durable."""
    with request_session(settings) as session:
        yield session


async def get_waiter(
    request: Request, settings: Annotated[Settings, Depends(current_settings)]
) -> JobWaiter:
    """The process's one JobWaiter (api/waiter.py), made on first use and closed at shutdown."""
    waiter: JobWaiter | None = getattr(request.app.state, "waiter", None)
    if waiter is None:
        waiter = JobWaiter(settings.database_url, capacity=settings.predict_max_waiting)
        request.app.state.waiter = waiter
    return waiter


def _storage(settings: Annotated[Settings, Depends(current_settings)]) -> Storage:
    return get_storage(settings)


_ANY_LIST = TypeAdapter(list[Any])


def json_response(
    body: BaseModel | Sequence[BaseModel],
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    """What a sync route that takes a SessionDep returns: its answer, serialised in its own thread.

    Trap: when a sync route returns a model, FastAPI validates it in a second threadpool thread
    after the route returns and before `get_db` commits. Requests waiting on this one's row lock
    (the same Idempotency-Key, cancels of one job) or on a pooled connection each hold one of the
    threadpool's 40 threads, so that second thread may not come for a long time, or ever: the API
    answered 503s or hung for good. A Response is sent as is; the route needs no other thread.
    tests/integration/test_api_probe.py checks every such route."""
    raw = body.model_dump_json() if isinstance(body, BaseModel) else _ANY_LIST.dump_json([*body])
    return Response(raw, status_code=status_code, media_type="application/json", headers=headers)


# Keyset pagination, the same for every list route.
PageLimit = Annotated[int, Query(ge=1, le=200)]
PageCursor = Annotated[
    str | None,
    Query(
        max_length=200,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Opaque: the `next_cursor` of the previous page.",
    ),
]
SettingsDep = Annotated[Settings, Depends(current_settings)]
SessionDep = Annotated[Session, Depends(get_db, scope="function")]
StorageDep = Annotated[Storage, Depends(_storage)]
WaiterDep = Annotated[JobWaiter, Depends(get_waiter)]
# The tenant (or admin) a request acts for; 401/429 before the route runs (api/auth.py).
CallerDep = Annotated[Caller, Depends(get_caller)]

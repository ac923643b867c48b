"""Injectable types, declared once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy.orm import Session

from core.settings import Settings, get_settings
from core.storage import Storage, get_storage
from db.session import get_sessionmaker, rollback


def get_db(settings: Annotated[Settings, Depends(get_settings)]) -> Iterator[Session]:
    """A session per request. Routes that write call `db.session.commit` before answering, so
    the client never sees a job id whose row is not durable; anything uncommitted rolls back."""
    session = get_sessionmaker(settings.database_url)()
    try:
        yield session
    finally:
        if session.in_transaction():
            rollback(session)
        session.close()


def _storage(settings: Annotated[Settings, Depends(get_settings)]) -> Storage:
    return get_storage(settings)


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_db)]
StorageDep = Annotated[Storage, Depends(_storage)]

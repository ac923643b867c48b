"""Engine and sessions. Commit happens only here, at the boundary; everything inside flushes.

Work that must follow a commit (sending a Celery message) is registered with `after_commit` and
runs only once the transaction is durable; a rollback drops it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

_AFTER_COMMIT = "voicefarm_after_commit"
log = logging.getLogger("voicefarm.db")


_ENGINE_LOCK = threading.Lock()


def get_engine(url: str) -> Engine:
    """The process's one engine (and connection pool) for `url`.

    Locked: `lru_cache` alone lets the first burst of threads (40 requests on a fresh API) each
    miss the cache and build its own pool, so the process opened many times its pool size."""
    with _ENGINE_LOCK:
        return _engine(url)


@lru_cache
def _engine(url: str) -> Engine:
    # Created lazily per process (house rule 5); pool_pre_ping survives a PostgreSQL restart.
    # Bounded waits: a dead or unreachable server, or an exhausted pool, must become a quick
    # error (503 from the API) rather than a request hanging for minutes.
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        pool_timeout=10,
        connect_args={"connect_timeout": 5},
        future=True,
    )


def get_sessionmaker(url: str) -> sessionmaker[Session]:
    """The process's one session factory for `url`, bound to its engine.

    Made once: each sessionmaker() makes a new Session subclass, and SQLAlchemy builds the
    event dispatch of a new class on its first session, so one per request cost admission a
    tenth of its CPU (docs/BENCHMARKS.md, Admission)."""
    with _ENGINE_LOCK:
        return _sessionmaker(url)


@lru_cache
def _sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=_engine(url), expire_on_commit=False, autoflush=True)


def after_commit(session: Session, fn: Callable[[], object]) -> None:
    session.info.setdefault(_AFTER_COMMIT, []).append(fn)


def commit(session: Session) -> None:
    """Commit, then run the callbacks registered for this transaction.

    The transaction is durable by then, so a failing callback (the broker is down) is logged and
    swallowed: the reconciler re-publishes whatever was not sent. Raising here would turn a
    committed change into a 500 for the client or a stuck job in a worker."""
    session.commit()
    callbacks = session.info.pop(_AFTER_COMMIT, [])
    for fn in callbacks:
        try:
            fn()
        except Exception:
            log.warning(
                "event=db.after_commit_failed callback=%r (the reconciler retries)",
                fn,
                exc_info=True,
            )


def rollback(session: Session) -> None:
    session.rollback()
    session.info.pop(_AFTER_COMMIT, None)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    session = get_sessionmaker(url)()
    try:
        yield session
        commit(session)
    except BaseException:
        rollback(session)
        raise
    finally:
        session.close()

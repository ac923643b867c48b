"""Wait for PostgreSQL, create the database if it is missing, and apply every migration."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

import migrations

MIGRATIONS_DIR = Path(migrations.__file__).parent


class DatabaseUnreachable(RuntimeError):
    pass


def wait_for_database(url: str, timeout: float = 30.0) -> None:
    """Block until the server answers; create the database when the server has none by that name."""
    deadline = time.monotonic() + timeout
    parsed = make_url(url)
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            engine = create_engine(url, pool_pre_ping=True)
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            engine.dispose()
            return
        except OperationalError as exc:
            last = exc
            if f'database "{parsed.database}" does not exist' in str(exc):
                _create_database(url)
                continue
            time.sleep(1.0)
    where = f"{parsed.host or 'localhost'}:{parsed.port or 5432}"
    raise DatabaseUnreachable(
        f"PostgreSQL at {where} did not answer within {timeout:.0f}s "
        f"({str(last).strip().splitlines()[0] if last else 'no error'}). Start it (e.g. "
        "`pg_ctlcluster 15 main start`) or set VOICEFARM_DATABASE_URL."
    )


def _create_database(url: str) -> None:
    parsed = make_url(url)
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": parsed.database}
        ).scalar()
        if not exists:
            conn.execute(text(f'CREATE DATABASE "{parsed.database}"'))
    admin.dispose()


# Any constant works; it only has to be the same in every process that migrates.
MIGRATION_LOCK_ID = 0x766F6963  # "voic"


def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations under a PostgreSQL advisory lock, so parallel starts (one per API
    replica, say) run them once and the others wait, then find nothing to do."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    engine = create_engine(url)
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        conn.commit()
        try:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            conn.commit()
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK_ID})
            conn.commit()
    engine.dispose()

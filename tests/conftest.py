"""Test environment: a fresh PostgreSQL database with the real migrations, a dedicated Redis
database, local-folder storage in a temp dir. Set before any voicefarm module reads settings."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_TMP = Path(tempfile.mkdtemp(prefix="voicefarm-tests-"))
TEST_DB = f"voicefarm_test_{os.getpid()}"
PG = os.environ.get("VOICEFARM_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432")
REDIS = os.environ.get("VOICEFARM_TEST_REDIS", "redis://127.0.0.1:6379/13")

os.environ.update(
    {
        "VOICEFARM_ENVIRONMENT": "test",
        "VOICEFARM_DATABASE_URL": f"{PG}/{TEST_DB}",
        "VOICEFARM_REDIS_URL": REDIS,
        "VOICEFARM_STORAGE_BACKEND": "file",
        "VOICEFARM_STORAGE_DIR": str(_TMP / "storage"),
        "VOICEFARM_WORKER_STATE_DIR": str(_TMP / "run"),
        "VOICEFARM_WEBHOOK_ALLOW_PRIVATE": "true",
        "VOICEFARM_WEBHOOK_RETRY_SCHEDULE": "[0, 0.5, 1, 1]",
        "VOICEFARM_WEBHOOK_JITTER": "0",
        "VOICEFARM_REQUEUE_GRACE_SECONDS": "2",
        "VOICEFARM_RECONCILE_INTERVAL_SECONDS": "1",
        "VOICEFARM_LEASE_SECONDS": "30",
        "VOICEFARM_MAX_ATTEMPTS": "3",
        "VOICEFARM_SUPERVISOR_METRICS_PORT": "0",
        "VOICEFARM_WORKER_METRICS_PORT": "0",
        "VOICEFARM_LOG_LEVEL": "INFO",
        # The suite acts as the default tenant; tests of keys and isolation turn auth on with
        # use_settings(client, auth_enabled=True) (tests/integration/test_tenants.py).
        "VOICEFARM_AUTH_ENABLED": "false",
    }
)
from tests.fixtures.engines import FIXTURE_ENGINES  # noqa: E402
from tests.fixtures.receiver import Receiver, start_receiver  # noqa: E402

os.environ["VOICEFARM_EXTRA_ENGINES"] = FIXTURE_ENGINES


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    yield _TMP
    if not os.environ.get("VOICEFARM_KEEP_TEST_TMP"):  # keep logs for a post-mortem on demand
        shutil.rmtree(_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def database() -> Iterator[str]:
    """Create the test database and apply the real migrations, once per session."""
    from sqlalchemy import create_engine, text

    from db.migrate import upgrade

    admin = create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)'))
        c.execute(text(f'CREATE DATABASE "{TEST_DB}"'))
    url = os.environ["VOICEFARM_DATABASE_URL"]
    upgrade(url)
    yield url
    from db.session import get_engine

    get_engine(url).dispose()
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_client() -> Iterator[object]:
    import redis

    client = redis.Redis.from_url(REDIS)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def db(database: str, redis_client: object) -> Iterator[str]:
    """A clean slate per test. Rows are committed for real (other processes must see them), so
    isolation is by truncation rather than a rolled-back transaction."""
    from sqlalchemy import text

    from db.models import DEFAULT_TENANT_ID
    from db.session import get_engine

    with get_engine(database).begin() as c:
        c.execute(
            text("TRUNCATE jobs, webhook_deliveries, webhook_attempts, voices, batches CASCADE")
        )
        # Tenants made by a test go (with their keys); the default tenant stays.
        c.execute(text("DELETE FROM tenants WHERE id <> :d"), {"d": DEFAULT_TENANT_ID})
        c.execute(text("DELETE FROM api_keys"))
    redis_client.flushdb()  # type: ignore[attr-defined]
    yield database


@pytest.fixture
def settings(db: str):  # type: ignore[no-untyped-def]
    from core.settings import get_settings

    return get_settings()


@pytest.fixture
def client(db: str) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app()) as c:
        yield c


@pytest.fixture(scope="session")
def log_dir(tmp_root: Path) -> Path:
    d = tmp_root / "logs"
    d.mkdir(exist_ok=True)
    return d


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = start_receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()

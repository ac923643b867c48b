from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.fixtures.processes import Proc, start_worker
from tests.fixtures.receiver import Receiver, start_receiver


@pytest.fixture
def client(db: str) -> Iterator[TestClient]:
    from api.main import create_app

    with TestClient(create_app()) as c:
        yield c


@pytest.fixture(scope="session")
def log_dir(tmp_root: Path) -> Path:
    d = tmp_root / "logs"
    d.mkdir(exist_ok=True)
    return d


@pytest.fixture(scope="session")
def worker(database: str, redis_client: object, log_dir: Path) -> Iterator[Proc]:
    """One real Celery worker process (solo pool) serving Piper and the fixture engines, plus
    the webhooks and maintenance queues, shared by the integration tests."""
    proc = start_worker(log_dir, "piper,tone,slow,fail,oomlong", name="shared")
    yield proc
    proc.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = start_receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()

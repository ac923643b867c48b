from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.processes import Proc, start_worker


@pytest.fixture(scope="module")
def worker(database: str, redis_client: object, log_dir: Path) -> Iterator[Proc]:
    """One real Celery worker process (solo pool) serving Piper and the fixture engines, plus
    the webhooks and maintenance queues, shared by one module's tests and stopped after them,
    so it never takes another module's jobs."""
    proc = start_worker(
        log_dir,
        "piper,tone,slow,fail,oomlong,empty,silent,clonetone,clipped,mostlysilent,nan",
        name="shared",
        env={
            "VOICEFARM_WEBHOOK_PROGRESS_SECONDS": "0",
            "FIXTURE_SEGMENT_LOG": str(log_dir / "oomlong-segments.jsonl"),
        },
    )
    yield proc
    proc.stop()

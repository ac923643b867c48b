"""The reconciler while the broker is down: an error, logged and raised, never an empty queue;
the jobs it could not publish go out on the first run after the broker is back."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Any

from db import jobs as q
from db.session import get_sessionmaker
from tests.fixtures.redis_server import PrivateRedis
from tests.integration.test_reconciler import _age, _new_job, queued_job_ids


def _reconcile(broker: str) -> subprocess.CompletedProcess[str]:
    """One reconcile run, as the ops worker would do it, in a process whose Celery app uses
    `broker`."""
    return subprocess.run(
        [sys.executable, "-c", "from tasks.maintenance import reconcile; print(reconcile())"],
        env={**os.environ, "VOICEFARM_REDIS_URL": broker},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _dispatched(url: str, job_id: uuid.UUID) -> Any:
    with get_sessionmaker(url)() as s:
        return q.get_job(s, job_id).dispatched_at


def test_broker_outage_is_an_error_and_jobs_go_out_when_it_is_back(db: str) -> None:
    broker = PrivateRedis()
    broker.start()
    try:
        backlog, lost = _new_job(db, engine="solo"), _new_job(db, engine="solo")
        for job_id in (backlog, lost):
            _age(db, job_id, 5)
        broker.kill()

        down = _reconcile(broker.url)
        assert down.returncode != 0, down.stdout
        assert "event=maintenance.publish_failed" in down.stderr
        assert "PublishFailed" in down.stderr
        # Not committed as if published: both are picked again on the very next run.
        assert _dispatched(db, backlog) is None and _dispatched(db, lost) is None

        broker.start()  # back, and empty
        up = _reconcile(broker.url)
        assert up.returncode == 0, up.stderr
        # Their marks were cleared, so they went out through the dispatcher (fair share).
        assert "'dispatched': 2" in up.stdout
        assert sorted(queued_job_ids(broker.client)) == sorted([str(backlog), str(lost)])
        assert _dispatched(db, lost) is not None
    finally:
        broker.kill()

"""A job's tail (quality, encode, upload, fenced finish) on the worker's finisher thread
(tasks/finisher.py), through a real solo Celery worker, PostgreSQL and Redis.

The `slow` and `tone` fixture engines stand in for a model (the point is the worker's job
handling, not the audio); storage is the real file backend, or an S3 endpoint nobody listens on.
"""

from __future__ import annotations

import signal
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from core.settings import Settings
from tests.fixtures.processes import start_worker, wait_until
from tests.integration.test_worker_jobs import wait_job


def test_a_warm_shutdown_finishes_the_job_it_handed_off(
    client: TestClient, log_dir: Path, settings: Settings
) -> None:
    """SIGTERM while a job synthesizes: Celery waits for the task, the task hands the tail to
    the finisher and returns, and the process writes `succeeded` before it exits, so the job is
    neither lost nor run a second time. The test holds the job's row lock so the finish cannot
    complete before the shutdown has begun, and lets go once the worker says it is waiting for
    it (or has exited without waiting: the defect this guards against)."""
    proc = start_worker(log_dir, "slow", name="finisher-warm", extra_queues="")
    engine = create_engine(settings.database_url)
    try:
        job = client.post("/v1/jobs", json={"text": "One segment.", "engine": "slow"}).json()
        wait_until(
            lambda: client.get(f"/v1/jobs/{job['id']}").json()["status"] == "running",
            timeout=30,
            what="the job to start",
        )
        with engine.connect() as conn:
            tx = conn.begin()
            conn.execute(text("SELECT 1 FROM jobs WHERE id = :id FOR UPDATE"), {"id": job["id"]})
            proc.signal(signal.SIGTERM)
            wait_until(
                lambda: (
                    "event=worker.shutdown_waiting_for_finish" in proc.tail(400) or not proc.alive()
                ),
                timeout=60,
                what="the worker to wait for its finish, or exit",
            )
            tx.rollback()
        code = proc.popen.wait(timeout=60)
        assert code == 0, proc.tail()
        done = client.get(f"/v1/jobs/{job['id']}").json()
        assert done["status"] == "succeeded", proc.tail()
        assert done["attempts"] == 1
        assert client.get(f"/v1/jobs/{job['id']}/audio").status_code == 200
    finally:
        engine.dispose()
        proc.stop()


def test_a_failing_upload_on_the_finisher_gives_the_job_back(
    client: TestClient, log_dir: Path
) -> None:
    """The upload fails on the finisher's thread (S3 unreachable): each attempt is released
    with `storage_error` and dispatched again, until the job fails out of attempts; the worker
    keeps serving and the next job's synthesis is not held up by the failure."""
    proc = start_worker(
        log_dir,
        "tone",
        name="finisher-s3down",
        extra_queues="",
        env={
            "VOICEFARM_STORAGE_BACKEND": "s3",
            "VOICEFARM_S3_ENDPOINT_URL": "http://127.0.0.1:1",
            "VOICEFARM_S3_BUCKET": "voicefarm-test-down",
            "VOICEFARM_S3_ACCESS_KEY_ID": "test",
            "VOICEFARM_S3_SECRET_ACCESS_KEY": "test",
        },
    )
    try:
        jobs = [
            client.post("/v1/jobs", json={"text": f"Never stored {i}.", "engine": "tone"}).json()
            for i in range(2)
        ]
        for job in jobs:
            done = wait_job(client, job["id"], timeout=120)
            assert done["status"] == "failed", proc.tail()
            assert done["attempts"] == 3
            assert done["error"]["code"] == "max_attempts_exceeded"
            assert "storage_error" in done["error"]["message"]
        assert proc.alive()
        assert "event=jobs.finish_crashed" not in proc.tail(400)
    finally:
        proc.stop()

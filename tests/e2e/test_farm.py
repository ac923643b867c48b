"""End to end with every part a separate process: the API (uvicorn), the worker supervisor
(one CPU worker running Piper, plus the ops worker), Celery beat, and a webhook receiver."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.settings import get_settings
from core.webhooks import verify
from tests.fixtures.audio_checks import assert_speech
from tests.fixtures.processes import ROOT, Proc, free_port, spawn, start_api
from tests.fixtures.receiver import Receiver
from workers.supervisor import celery_argv


@pytest.fixture
def farm(db: str, log_dir: Path) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"VOICEFARM_PUBLIC_BASE_URL": base, "VOICEFARM_WORKER_STATE_DIR": str(log_dir / "e2e")}
    procs: list[Proc] = [start_api(log_dir, port, env)]
    procs.append(spawn("e2e-workers", [sys.executable, "-m", "cli.main", "workers"], log_dir, env))
    procs.append(
        spawn("e2e-beat", celery_argv("beat", "-s", str(log_dir / "beat-schedule")), log_dir, env)
    )
    try:
        yield base
    finally:
        for p in procs:
            p.stop()
        for p in procs:
            assert p.popen.returncode is not None


def test_job_end_to_end_with_signed_webhook_and_real_speech(farm: str, receiver: Receiver) -> None:
    text = "Voicefarm turns text into speech. The webhook tells you when it is ready."
    r = httpx.post(f"{farm}/v1/jobs", json={"text": text, "webhook_url": receiver.url})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]

    hits = receiver.wait_for(lambda req: req.json["type"] == "job.succeeded", timeout=120)
    req = hits[0]
    secret = get_settings().webhook_secret.get_secret_value()
    assert verify(
        secret,
        req.headers["webhook-id"],
        int(req.headers["webhook-timestamp"]),
        req.body,
        req.headers["webhook-signature"],
    )
    assert abs(int(req.headers["webhook-timestamp"]) - time.time()) < 120
    data = req.json["data"]
    assert data["id"] == job_id and data["status"] == "succeeded"
    result = data["result"]
    assert result["url"] == f"{farm}/v1/jobs/{job_id}/audio"

    audio = httpx.get(result["url"])
    assert audio.status_code == 200 and len(audio.content) == result["bytes"]
    duration = assert_speech(audio.content, rate=22050, words=len(text.split()))
    assert abs(duration - result["duration_s"]) < 0.01
    events = {r.json["type"] for r in receiver.requests}
    assert {"job.queued", "job.started", "job.succeeded"} <= events


def test_cli_say_writes_the_wav(farm: str, tmp_path: Path) -> None:
    out = tmp_path / "hello.wav"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "say",
            "Hello from the command line.",
            "-o",
            str(out),
            "--api",
            farm,
            "--timeout",
            "120",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stderr
    assert "hello.wav" in res.stdout and "22050 Hz" in res.stdout
    assert_speech(out.read_bytes(), rate=22050, words=5)
    bad = subprocess.run(
        [sys.executable, "-m", "cli.main", "say", "hi", "--engine", "nope", "--api", farm],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "unknown_engine" in bad.stderr


def test_farm_command_explains_unreachable_services(tmp_path: Path) -> None:
    base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "VOICEFARM_ENVIRONMENT": "test"}
    no_redis = subprocess.run(
        [sys.executable, "-m", "cli.main", "farm"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**base, "VOICEFARM_REDIS_URL": "redis://127.0.0.1:1/0"},
        timeout=60,
    )
    assert no_redis.returncode == 1
    assert "Redis at redis://127.0.0.1:1/0 is unreachable" in no_redis.stderr
    assert "Traceback" not in no_redis.stderr
    no_pg = subprocess.run(
        [sys.executable, "-m", "cli.main", "migrate", "--timeout", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**base, "VOICEFARM_DATABASE_URL": "postgresql+psycopg2://postgres@127.0.0.1:1/x"},
        timeout=90,
    )
    assert no_pg.returncode == 1 and "PostgreSQL at 127.0.0.1:1 did not answer" in no_pg.stderr
    assert "Traceback" not in no_pg.stderr

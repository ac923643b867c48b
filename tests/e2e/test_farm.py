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
from tests.fixtures.processes import (
    ROOT,
    Proc,
    descendants,
    free_port,
    spawn,
    start_api,
    wait_until,
)
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


def test_farm_runs_everything_and_ctrl_c_stops_every_process(db: str, log_dir: Path) -> None:
    """What `make run` starts: API, worker supervisor (Piper + ops), beat and Flower."""
    import signal

    api_port, flower_port, metrics_port = free_port(), free_port(), free_port()
    env = {
        "VOICEFARM_API_PORT": str(api_port),
        "VOICEFARM_FLOWER_PORT": str(flower_port),
        "VOICEFARM_SUPERVISOR_METRICS_PORT": str(metrics_port),
        "VOICEFARM_WORKER_METRICS_PORT": str(free_port()),
        "VOICEFARM_PUBLIC_BASE_URL": f"http://127.0.0.1:{api_port}",
        "VOICEFARM_WORKER_STATE_DIR": str(log_dir / "farm"),
    }
    farm = spawn("farm", [sys.executable, "-m", "cli.main", "farm"], log_dir, env)
    base = f"http://127.0.0.1:{api_port}"
    try:

        def up() -> bool:
            assert farm.alive(), farm.tail()
            try:
                return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=90, what="the farm's API")
        job = httpx.post(f"{base}/v1/jobs", json={"text": "The whole farm is up."}).json()
        wait_until(
            lambda: httpx.get(f"{base}/v1/jobs/{job['id']}").json()["status"] == "succeeded",
            timeout=90,
            what="the job",
        )
        flower = f"http://127.0.0.1:{flower_port}/api/workers"
        wait_until(
            lambda: httpx.get(flower, auth=("admin", "voicefarm"), timeout=2).status_code == 200,
            timeout=60,
            what="Flower",
        )
        assert httpx.get(flower, timeout=2).status_code == 401  # basic auth on
        children = descendants(farm.popen.pid)
        assert len(children) >= 5, children  # api, supervisor, cpu0, ops, beat, flower
        # No secret on a command line (`ps` shows those to every local user).
        for pid in children:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            assert b"admin:voicefarm" not in cmdline, cmdline
        # The unauthenticated metrics ports listen on loopback only.
        wait_until(lambda: _listening(metrics_port), timeout=30, what="supervisor metrics")
        assert _listening(metrics_port) == {"127.0.0.1"}
        assert _listening(flower_port) == {"127.0.0.1"}
    finally:
        farm.popen.send_signal(signal.SIGINT)  # Ctrl-C
        assert farm.popen.wait(timeout=60) == 0, farm.tail()
    wait_until(lambda: not any(_alive(p) for p in children), timeout=30, what="every child to exit")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _listening(port: int) -> set[str]:
    """IPv4 addresses with a socket listening on `port`, from /proc/net/tcp."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        host, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:
            octets = [str(int(host[i : i + 2], 16)) for i in (6, 4, 2, 0)]
            found.add(".".join(octets))
    return found

"""Faults with real processes: a worker killed mid-job, a broker that lost its messages, a
worker that runs out of GPU memory or hangs under the supervisor. No job may be lost."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tasks.maintenance import reconcile
from tests.fixtures.api import use_settings
from tests.fixtures.processes import free_port, spawn, start_worker, wait_until

TERMINAL = ("succeeded", "failed", "canceled")


def _job(client: Any, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
    return job


def _reconcile_until(client: Any, job_id: str, states: tuple[str, ...], timeout: float) -> dict:
    """Drive the reconciler as beat would, until the job reaches one of `states`."""

    def check() -> dict[str, Any] | None:
        reconcile()
        job = _job(client, job_id)
        return job if job["status"] in states else None

    return wait_until(check, timeout=timeout, what=f"job {job_id} to reach {states}")


def test_killed_worker_job_is_requeued_and_finished_by_another(client: Any, log_dir: Path) -> None:
    short_lease = {"VOICEFARM_LEASE_SECONDS": "2", "VOICEFARM_SEGMENT_MAX_CHARS": "20"}
    first = start_worker(log_dir, "soloslow", name="victim", extra_queues="", env=short_lease)
    text = " ".join(f"Sentence {i}." for i in range(6))
    job = client.post("/v1/jobs", json={"text": text, "engine": "soloslow"}).json()
    wait_until(
        lambda: _job(client, job["id"])["progress"]["segments_done"] >= 1,
        timeout=30,
        what="the first segment",
    )
    first.signal(signal.SIGKILL)
    first.popen.wait(timeout=10)
    assert _job(client, job["id"])["status"] == "running"  # nobody has noticed yet
    second = start_worker(log_dir, "soloslow", name="rescuer", extra_queues="", env=short_lease)
    try:
        done = _reconcile_until(client, job["id"], TERMINAL, timeout=60)
        assert done["status"] == "succeeded", second.tail()
        assert done["attempts"] == 2
        assert done["progress"]["segments_done"] == done["progress"]["segments_total"]
    finally:
        second.stop()


def test_a_segment_longer_than_the_lease_keeps_its_lease(client: Any, log_dir: Path) -> None:
    """One 3 s segment against a 1 s lease while the reconciler runs: the lease keeper renews it,
    so the job is not handed to a second attempt."""
    worker = start_worker(
        log_dir,
        "solo",
        name="longseg",
        extra_queues="",
        env={"VOICEFARM_LEASE_SECONDS": "1", "FIXTURE_SEGMENT_DELAY": "3"},
    )
    try:
        job = client.post("/v1/jobs", json={"text": "one long segment", "engine": "solo"}).json()
        done = _reconcile_until(client, job["id"], TERMINAL, timeout=30)
        assert done["status"] == "succeeded" and done["attempts"] == 1, worker.tail()
    finally:
        worker.stop()


def test_a_segment_running_past_the_deadline_fails_the_job_once(client: Any, log_dir: Path) -> None:
    """The deadline passes in the middle of a 3 s segment: the job fails with
    `deadline_exceeded` right away instead of being re-queued to run (and overrun) again."""
    worker = start_worker(
        log_dir,
        "solo",
        name="deadline",
        extra_queues="",
        env={
            "VOICEFARM_JOB_DEADLINE_SECONDS": "1",
            "VOICEFARM_LEASE_SECONDS": "1",
            "FIXTURE_SEGMENT_DELAY": "3",
            # A full segment's expected time must fit in the deadline (settings validation).
            "VOICEFARM_SEGMENT_MAX_CHARS": "20",
            "VOICEFARM_SEGMENT_SECONDS_PER_CHAR": "0.01",
        },
    )
    try:
        job = client.post("/v1/jobs", json={"text": "too slow", "engine": "solo"}).json()
        done = _reconcile_until(client, job["id"], TERMINAL, timeout=30)
        assert done["status"] == "failed" and done["attempts"] == 1, worker.tail()
        assert done["error"]["code"] == "deadline_exceeded"
        time.sleep(3)  # the segment ends; nothing overwrites the failure
        assert _job(client, job["id"])["status"] == "failed"
    finally:
        worker.stop()


def test_job_survives_a_broker_that_lost_its_message(
    client: Any, log_dir: Path, redis_client: Any
) -> None:
    job = client.post("/v1/jobs", json={"text": "still here", "engine": "solo"}).json()
    assert redis_client.delete("synth.solo") == 1  # as if Redis restarted empty
    worker = start_worker(log_dir, "solo", name="late", extra_queues="")
    try:
        time.sleep(1.0)
        assert _job(client, job["id"])["status"] == "queued"  # the message is really gone
        done = _reconcile_until(client, job["id"], TERMINAL, timeout=30)
        assert done["status"] == "succeeded" and done["attempts"] == 1
    finally:
        worker.stop()


def _restarts(port: int, worker: str = "cpu0") -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(
            r'voicefarm_worker_restarts_total\{reason="(\w+)",worker="' + worker + r'"\} '
            r"([\d.]+)",
            text,
        )
    }


def _supervisor(log_dir: Path, name: str, engine: str, port: int, **env: str) -> Any:
    return spawn(
        name,
        [sys.executable, "-m", "cli.main", "workers"],
        log_dir,
        {
            "VOICEFARM_WORKER_ENGINES": engine,
            "VOICEFARM_DEVICE": "cpu",
            "VOICEFARM_SUPERVISE_OPS_WORKER": "false",
            "VOICEFARM_CPU_WORKERS": "1",
            "VOICEFARM_SUPERVISOR_METRICS_PORT": str(port),
            "VOICEFARM_WORKER_STATE_DIR": str(log_dir / name),
            **env,
        },
    )


def _limit_attempts(client: Any, n: int) -> None:
    use_settings(client, max_attempts=n)


def test_supervisor_restarts_a_worker_that_runs_out_of_gpu_memory(
    client: Any, log_dir: Path
) -> None:
    """The fixture engine raises torch's CUDA OOM type on every call (no GPU here): the task
    re-queues the job and exits with the device-unhealthy code; the supervisor restarts it. The
    job OOMs again in its second attempt, so it is failed with `out_of_memory` there (a poison
    job), though it has attempts left: it takes down at most two workers, not one per attempt."""
    port = free_port()
    sup = _supervisor(log_dir, "sup-oom", "oom", port)
    try:
        _limit_attempts(client, 5)
        job = client.post("/v1/jobs", json={"text": "too big", "engine": "oom"}).json()
        done = _reconcile_until(client, job["id"], TERMINAL, timeout=90)
        assert done["status"] == "failed" and done["attempts"] == 2, sup.tail()
        assert done["error"]["code"] == "out_of_memory"
        assert "attempt 2 as in the one before" in done["error"]["message"]
        wait_until(lambda: _restarts(port).get("oom", 0) >= 2, timeout=30, what="2 oom restarts")
        # The worker is started a third time after its second exit.
        wait_until(
            lambda: sup.log.read_text().count("event=supervisor.started child=cpu0") >= 3,
            timeout=30,
            what="the worker to be restarted",
        )
        assert _restarts(port) == {"oom": 2}, sup.tail()
    finally:
        assert sup.stop() == 0


def test_supervisor_kills_a_hung_worker_and_keeps_an_idle_one(client: Any, log_dir: Path) -> None:
    port = free_port()
    sup = _supervisor(
        log_dir,
        "sup-hang",
        "hang",
        port,
        VOICEFARM_WORKER_HANG_SECONDS="4",
        VOICEFARM_WORKER_HEARTBEAT_SECONDS="1",
        VOICEFARM_LEASE_SECONDS="2",
    )
    try:
        _limit_attempts(client, 1)
        hb = log_dir / "sup-hang" / "cpu0.heartbeat"
        wait_until(hb.exists, timeout=60, what="the first heartbeat")
        time.sleep(8)  # idle for twice the hang threshold: the consumer loop keeps beating
        assert _restarts(port) == {}, sup.tail()
        job = client.post("/v1/jobs", json={"text": "never returns", "engine": "hang"}).json()
        wait_until(lambda: _restarts(port).get("hang", 0) >= 1, timeout=60, what="hang restart")
        done = _reconcile_until(client, job["id"], TERMINAL, timeout=30)
        assert done["status"] == "failed" and done["error"]["code"] == "max_attempts_exceeded"
    finally:
        assert sup.stop() == 0


def _beat(path: Path) -> Any:
    from workers import heartbeat

    return heartbeat.read(path)


def test_supervisor_waits_for_a_slow_load_and_a_long_segment(client: Any, log_dir: Path) -> None:
    """An engine that takes 6 s to load and 6 s per segment, under a 3 s hang limit: the
    worker says it is loading, then how long its segment may take (hang limit + 1 s a
    character here), so the supervisor kills neither, and the job succeeds in one attempt."""
    port = free_port()
    sup = _supervisor(
        log_dir,
        "sup-slow",
        "slowload",
        port,
        VOICEFARM_WORKER_HANG_SECONDS="3",
        VOICEFARM_WORKER_HEARTBEAT_SECONDS="1",
        VOICEFARM_SEGMENT_SECONDS_PER_CHAR="1",
        FIXTURE_LOAD_DELAY="6",
        FIXTURE_SEGMENT_DELAY="6",
    )
    try:
        hb = log_dir / "sup-slow" / "cpu0.heartbeat"
        loading = wait_until(
            lambda: (b := _beat(hb)) and b.phase == "loading" and b, timeout=60, what="loading"
        )
        wait_until(lambda: (b := _beat(hb)) and b.phase == "idle", timeout=60, what="loaded")
        assert _restarts(port) == {}, sup.tail()
        job = client.post("/v1/jobs", json={"text": "ten chars!", "engine": "slowload"}).json()
        seg = wait_until(
            lambda: (b := _beat(hb)) and b.phase == "segment" and b, timeout=30, what="segment"
        )
        assert seg.busy_until - seg.ts >= 3 + 10 - 1  # hang limit + 10 chars x 1 s
        done = _reconcile_until(client, job["id"], TERMINAL, timeout=60)
        assert done["status"] == "succeeded" and done["attempts"] == 1, sup.tail()
        assert _restarts(port) == {}, sup.tail()
        assert _beat(hb).pid == loading.pid  # the same process all along
    finally:
        assert sup.stop() == 0


def test_supervisor_kills_a_worker_whose_load_runs_past_the_load_timeout(log_dir: Path) -> None:
    """A load that never ends (a wedged download or driver) is a hang once the load timeout
    has passed, long before the start-up grace would notice."""
    port = free_port()
    sup = _supervisor(
        log_dir,
        "sup-wedged-load",
        "slowload",
        port,
        VOICEFARM_WORKER_HANG_SECONDS="3",
        VOICEFARM_WORKER_HEARTBEAT_SECONDS="1",
        VOICEFARM_WORKER_LOAD_TIMEOUT_SECONDS="2",
        FIXTURE_LOAD_DELAY="3600",
    )
    try:
        wait_until(lambda: _metrics_up(port), timeout=30, what="the supervisor's metrics")
        wait_until(lambda: _restarts(port).get("hang", 0) >= 1, timeout=60, what="hang restart")
    finally:
        assert sup.stop() == 0


def _metrics_up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_supervisor_restarts_a_wedged_ops_worker(log_dir: Path) -> None:
    """The ops worker (webhooks, reconciler) beats from its consuming loop like any worker:
    stopped with SIGSTOP, it is killed and restarted as a hang; the synthesis worker is left
    alone."""
    port = free_port()
    sup = _supervisor(
        log_dir,
        "sup-ops",
        "solo",
        port,
        VOICEFARM_SUPERVISE_OPS_WORKER="true",
        VOICEFARM_WORKER_HANG_SECONDS="3",
        VOICEFARM_WORKER_HEARTBEAT_SECONDS="1",
    )
    try:
        hb = log_dir / "sup-ops" / "ops.heartbeat"
        first = wait_until(lambda: _beat(hb), timeout=60, what="the ops worker's heartbeat")
        os.kill(first.pid, signal.SIGSTOP)
        wait_until(
            lambda: _restarts(port, "ops").get("hang", 0) >= 1, timeout=60, what="ops restart"
        )
        wait_until(
            lambda: (b := _beat(hb)) and b.pid != first.pid, timeout=60, what="a new ops worker"
        )
        assert _restarts(port, "ops") == {"hang": 1} and _restarts(port) == {}, sup.tail()
    finally:
        assert sup.stop() == 0


def test_worker_keeps_consuming_after_redis_restarts_empty(db: str, log_dir: Path) -> None:
    """A private redis-server is killed and restarted with nothing in it: the idle worker must
    reconnect and consume again, and the reconciler re-publishes what the restart lost."""
    import os
    import shutil
    import subprocess as sp

    from tests.fixtures.processes import Proc, start_api

    port, api_port = free_port(), free_port()
    argv = [
        shutil.which("redis-server") or "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    env = {"VOICEFARM_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    base = f"http://127.0.0.1:{api_port}"

    def redis_up() -> bool:
        out = sp.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout
        return out.strip() == b"PONG"

    def finished(job_id: str) -> bool:
        return bool(httpx.get(f"{base}/v1/jobs/{job_id}").json()["status"] == "succeeded")

    def submit(text: str) -> str:
        r = httpx.post(f"{base}/v1/jobs", json={"text": text, "engine": "tone"})
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    redis_proc = sp.Popen(argv, stdout=sp.DEVNULL, stderr=sp.DEVNULL)
    procs: list[Proc] = []
    try:
        wait_until(redis_up, timeout=10, what="private redis")
        procs.append(start_api(log_dir, api_port, env))
        worker = start_worker(log_dir, "tone", name="reconnect", extra_queues="", env=env)
        procs.append(worker)
        first = submit("before")
        wait_until(lambda: finished(first), timeout=30, what="the first job")

        redis_proc.kill()
        redis_proc.wait()
        lost = submit("during the outage")  # committed; its publish failed
        redis_proc = sp.Popen(argv, stdout=sp.DEVNULL, stderr=sp.DEVNULL)
        wait_until(redis_up, timeout=10, what="redis back")

        after = submit("after")
        wait_until(lambda: finished(after), timeout=60, what="a job after the restart")

        def recovered() -> bool:
            sp.run(
                [sys.executable, "-c", "from tasks.maintenance import reconcile; reconcile()"],
                env={**os.environ, **env},
                check=True,
                capture_output=True,
            )
            return finished(lost)

        wait_until(recovered, timeout=30, what="the job whose message was lost")
        assert worker.alive()
    finally:
        for p in procs:
            p.stop()
        redis_proc.kill()
        redis_proc.wait()

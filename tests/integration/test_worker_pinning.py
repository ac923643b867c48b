"""VOICEFARM_ENGINE_CPUS on a real worker process (solo pool, Piper with one thread): the
thread that runs the engine is on the engine's CPUs, the worker's own threads (the finisher,
the lease keeper, dispatch) on the others, as /proc shows them, and jobs still succeed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.process import format_cpus, parse_cpus
from tests.fixtures.processes import start_worker, wait_until

pytestmark = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="pinning needs two CPUs this process may use"
)


def _allowed(pid: int, tid: int) -> list[int]:
    status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("Cpus_allowed_list:"))
    return parse_cpus(line.split(":", 1)[1].strip())


def test_the_engine_thread_and_the_helpers_get_their_own_cpus(
    client: TestClient, db: str, log_dir: Path
) -> None:
    allowed = sorted(os.sched_getaffinity(0))
    engine, helpers = allowed[:1], allowed[1:]
    worker = start_worker(
        log_dir,
        "piper",
        name="pinned",
        env={"VOICEFARM_ENGINE_CPUS": format_cpus(engine), "VOICEFARM_PIPER_THREADS": "1"},
    )
    try:
        assert f"event=worker.pinned engine_cpus={format_cpus(engine)} " in worker.tail(200)
        ids = [
            client.post("/v1/jobs", json={"text": f"Pinned job number {i}. It speaks."}).json()[
                "id"
            ]
            for i in range(3)
        ]

        def finished() -> bool:
            return all(
                client.get(f"/v1/jobs/{i}").json()["status"] in ("succeeded", "failed") for i in ids
            )

        wait_until(finished, timeout=60, what="the pinned worker's jobs")
        assert {client.get(f"/v1/jobs/{i}").json()["status"] for i in ids} == {"succeeded"}
        pid = worker.popen.pid
        threads = {int(t): _allowed(pid, int(t)) for t in os.listdir(f"/proc/{pid}/task")}
        # The solo pool's thread runs the engine; threads it started since inherit its CPUs
        # unless they are the worker's own, which move to the helpers' CPUs.
        assert threads.pop(pid) == engine
        assert helpers in threads.values(), threads  # the finisher and the lease keeper
        assert all(cpus in (engine, helpers) for cpus in threads.values()), threads
    finally:
        worker.stop()

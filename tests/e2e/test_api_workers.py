"""`VOICEFARM_API_WORKERS`: the API as uvicorn's worker processes (what `voicefarm farm` runs),
each answering requests with its own pools, made after the fork."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cli.farm import api_argv
from core.settings import get_settings
from tests.fixtures.processes import Proc, free_port, spawn, wait_until


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            out.append(int(stat.parent.name))
    return out


def _serving(pid: int, port: int) -> bool:
    """Whether `pid` holds an accepted connection on `port` (from /proc: no psutil here)."""
    established = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                established.add(fields[9])  # the socket's inode
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
        if m and m.group(1) in established:
            return True
    return False


@pytest.fixture
def two_workers(db: str, log_dir: Path) -> Iterator[tuple[str, Proc, int]]:
    port = free_port()
    settings = get_settings().model_copy(update={"api_port": port, "api_workers": 2})
    base = f"http://127.0.0.1:{port}"
    proc = spawn("api-workers", api_argv(settings), log_dir, {"VOICEFARM_PUBLIC_BASE_URL": base})
    try:

        def up() -> bool:
            assert proc.alive(), proc.tail()
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=60, what="the API's workers to answer")
        yield base, proc, port
    finally:
        proc.stop()


def test_two_api_processes_both_serve_jobs(two_workers: tuple[str, Proc, int]) -> None:
    base, proc, port = two_workers
    # uvicorn's worker processes (and multiprocessing's resource tracker, which serves nothing).
    workers = wait_until(
        lambda: kids if len(kids := _children(proc.popen.pid)) >= 2 else None,
        timeout=30,
        what="uvicorn's worker processes",
    )
    serving: list[int] = []
    clients: list[httpx.Client] = []
    ids: list[str] = []
    try:
        # Keep-alive connections, held open, until each worker process holds one of them.
        for _ in range(64):
            c = httpx.Client(base_url=base, timeout=10)
            clients.append(c)
            r = c.post("/v1/jobs", json={"text": "Two processes.", "engine": "tone"})
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
            serving = [p for p in workers if _serving(p, port)]
            if len(serving) >= 2:
                break
        assert len(serving) >= 2, f"only {serving} of {workers} accepted connections"
        with httpx.Client(base_url=base, timeout=10) as c:
            for job_id in ids:  # every job is a row, whichever process admitted it
                status = c.get(f"/v1/jobs/{job_id}").json()["status"]
                assert status in ("queued", "running", "succeeded")
    finally:
        for c in clients:
            c.close()

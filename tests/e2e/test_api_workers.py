"""`VOICEFARM_API_WORKERS`: the API as several uvicorn processes (api/serve.py, what `voicefarm
farm` and the containers run), each listening on a socket of its own (SO_REUSEPORT) and answering
requests with its own pools, made after the spawn; a process that dies is replaced, a port that
is taken stops the server with one message, and SIGTERM to the parent stops them all."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
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


def _sockets(port: int, state: str) -> set[str]:
    """Inodes of the TCP sockets on local `port` in `state` (01 established, 0A listening)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                out.add(fields[9])
    return out


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
        if m:
            out.add(m.group(1))
    return out


def _serving(pid: int, port: int) -> bool:
    """Whether `pid` holds an accepted connection on `port` (from /proc: no psutil here)."""
    return bool(_socket_inodes(pid) & _sockets(port, "01"))


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
    # The API's processes (and multiprocessing's resource tracker, if any: it serves nothing).
    workers = wait_until(
        lambda: kids if len(kids := _children(proc.popen.pid)) >= 2 else None,
        timeout=30,
        what="the API's processes",
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


def _api_processes(parent: int, port: int) -> dict[int, set[str]]:
    """Each child of `parent` that listens on `port`, with the inodes of its listening sockets."""
    listening = _sockets(port, "0A")
    out = {}
    for pid in _children(parent):
        mine = _socket_inodes(pid) & listening
        if mine:
            out[pid] = mine
    return out


def _two_listening(proc: Proc, port: int) -> dict[int, set[str]]:
    """Waits for the server's two processes to listen; returns them as `_api_processes` does."""
    result: dict[int, set[str]] = wait_until(
        lambda: p if len(p := _api_processes(proc.popen.pid, port)) == 2 else None,
        timeout=30,
        what="two listening API processes",
    )
    return result


def test_each_process_listens_on_a_socket_of_its_own(two_workers: tuple[str, Proc, int]) -> None:
    """The kernel spreads connections over SO_REUSEPORT sockets; one socket shared by every
    process (`uvicorn --workers`) let one process accept 15 of 16 keep-alive clients. The parent
    holds the port without listening, so it is given no connections."""
    _, proc, port = two_workers
    serving = _two_listening(proc, port)
    a, b = serving.values()
    assert len(a) == len(b) == 1 and not a & b, serving
    assert not _socket_inodes(proc.popen.pid) & _sockets(port, "0A")  # the parent: not listening


def test_a_dead_api_process_is_replaced(two_workers: tuple[str, Proc, int]) -> None:
    base, proc, port = two_workers
    first = _two_listening(proc, port)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    replaced = wait_until(
        lambda: (
            p if len(p := _api_processes(proc.popen.pid, port)) == 2 and victim not in p else None
        ),
        timeout=60,
        what="a replacement API process",
    )
    assert set(replaced) - set(first), replaced
    assert "event=api.process_died" in proc.tail()
    for _ in range(8):  # new connections, whichever process gets them
        r = httpx.post(f"{base}/v1/jobs", json={"text": "Still here.", "engine": "tone"})
        assert r.status_code == 202, r.text


def test_sigterm_to_the_parent_stops_every_process(two_workers: tuple[str, Proc, int]) -> None:
    _, proc, port = two_workers
    kids = _two_listening(proc, port)
    os.kill(proc.popen.pid, signal.SIGTERM)  # the parent only, not its process group
    assert proc.popen.wait(timeout=40) == 0
    for pid in kids:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"{pid} outlived its parent"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("reuse_port", [False, True], ids=["another-program", "another-api"])
def test_a_taken_port_stops_the_server_with_one_message(
    db: str, log_dir: Path, reuse_port: bool
) -> None:
    """Something listens on the port already: another program, or a second api.serve (whose
    sockets have SO_REUSEPORT and would otherwise silently share the port with this one). Exit
    code 3 (uvicorn's startup failure), a one-line reason, no traceback."""
    with socket.socket() as taken:
        if reuse_port:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        settings = get_settings().model_copy(update={"api_port": port, "api_workers": 2})
        proc = spawn(f"api-taken-{reuse_port}", api_argv(settings), log_dir)
        assert proc.popen.wait(timeout=60) == 3, proc.tail()
    out = proc.tail()
    assert f"cannot listen on 127.0.0.1:{port}" in out, out
    assert "Traceback" not in out, out


def test_sighup_replaces_every_process_one_at_a_time(two_workers: tuple[str, Proc, int]) -> None:
    base, proc, port = two_workers
    before = _two_listening(proc, port)
    os.kill(proc.popen.pid, signal.SIGHUP)
    after = wait_until(
        lambda: (
            p
            if len(p := _api_processes(proc.popen.pid, port)) == 2 and not set(p) & set(before)
            else None
        ),
        timeout=90,
        what="two new listening API processes",
    )
    assert proc.alive() and "event=api.reloading" in proc.tail()
    assert set(after).isdisjoint(before)
    r = httpx.post(f"{base}/v1/jobs", json={"text": "After the reload.", "engine": "tone"})
    assert r.status_code == 202, r.text


def test_the_processes_do_not_outlive_a_killed_parent(two_workers: tuple[str, Proc, int]) -> None:
    """SIGKILL (or the OOM killer) on the parent: the kernel sends each process SIGTERM
    (PR_SET_PDEATHSIG), so none keeps serving the port as an orphan."""
    _, proc, port = two_workers
    kids = _two_listening(proc, port)
    os.kill(proc.popen.pid, signal.SIGKILL)
    proc.popen.wait(timeout=10)
    wait_until(
        lambda: all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in kids),
        timeout=40,
        what="the API processes to exit after their parent",
    )
    assert not _sockets(port, "0A"), "something still listens on the port"


def test_an_app_that_cannot_start_stops_the_server(db: str, log_dir: Path) -> None:
    """An app that raises while importing is not restarted once a second forever: the
    processes exit with uvicorn's startup failure (3) and so does the parent."""
    script = (
        "import sys; from api.serve import ServeOptions, Processes; "
        f"sys.exit(Processes(ServeOptions('127.0.0.1', {free_port()}, 2, "
        "app='tests.fixtures.broken_app:app')).run())"
    )
    proc = spawn("api-broken", [sys.executable, "-c", script], log_dir)
    assert proc.popen.wait(timeout=60) == 3, proc.tail()
    out = proc.tail(200)
    assert "the app could not start" in out, out
    assert "event=api.startup_failed" in out, out
    assert "event=api.process_died" not in out, out  # never restarted

"""Serving the API: `python -m api.serve` runs `VOICEFARM_API_WORKERS` uvicorn processes, each
listening on a socket of its own on the same port (SO_REUSEPORT), and restarts one that dies.

Why not `uvicorn --workers N`: its processes share one listening socket, and an event loop that
wakes on it accepts every pending connection at once (asyncio and uvloop accept up to the
backlog per wake-up). Keep-alive clients that connect together then land on one process: the
admission bench saw 15 of 16 clients on one process and 1 on the other, the first process's
latency twice the second's, the other core half idle. With a socket per process the kernel
spreads new connections over the processes by a hash of the addresses (docs/BENCHMARKS.md,
Admission). `--workers 1` is plain uvicorn in this process.

    python -m api.serve [--host H] [--port P] [--workers N] [--log-level L] [--no-access-log]
        [--forwarded-allow-ips IPS] [--no-proxy-headers]

Host, port and workers default to `VOICEFARM_API_HOST`, `VOICEFARM_API_PORT` and
`VOICEFARM_API_WORKERS`. SIGTERM or SIGINT stops every process gracefully (uvicorn finishes the
requests in flight). A process that fails before serving (port taken, app that does not import)
stops the whole server with uvicorn's exit code 3, as `uvicorn --workers` does: restarting it
would fail the same way.

Imports uvicorn and the standard library only; the app is imported by each process after the
spawn, so pools and clients are per process (house rule 5).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any

STARTUP_FAILURE = 3  # uvicorn.config.STARTUP_FAILURE
RESTART_BACKOFF_SECONDS = 1.0
STOP_TIMEOUT_SECONDS = 30.0

log = logging.getLogger("voicefarm.serve")


@dataclass(frozen=True)
class ServeOptions:
    host: str
    port: int
    workers: int
    log_level: str = "info"
    access_log: bool = True
    proxy_headers: bool = True  # uvicorn's default: trusted only from forwarded_allow_ips
    forwarded_allow_ips: str | None = None
    backlog: int = 2048
    app: str = "api.main:app"


def listening_socket(host: str, port: int, backlog: int | None, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to (host, port) with SO_REUSEPORT when asked, listening when a backlog
    is given (the parent only binds, to hold the port number: a socket that does not listen is
    given no connections)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
        if backlog is not None:
            sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _config(options: ServeOptions) -> Any:
    import uvicorn

    return uvicorn.Config(
        options.app,
        host=options.host,
        port=options.port,
        log_level=options.log_level,
        access_log=options.access_log,
        proxy_headers=options.proxy_headers,
        forwarded_allow_ips=options.forwarded_allow_ips,
        backlog=options.backlog,
    )


def serve_one(options: ServeOptions, reuse_port: bool) -> None:
    """One uvicorn process on its own listening socket (the target of each spawned process)."""
    import uvicorn

    config = _config(options)
    try:
        sock = listening_socket(options.host, options.port, options.backlog, reuse_port)
    except OSError as exc:
        print(f"voicefarm api: cannot listen on {options.host}:{options.port}: {exc}", flush=True)
        sys.exit(STARTUP_FAILURE)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except BaseException as exc:
        if server.started:
            raise
        # The app raised while importing or starting: a restart would fail the same way.
        if not isinstance(exc, SystemExit | KeyboardInterrupt):
            traceback.print_exc()
        sys.exit(STARTUP_FAILURE)
    if not server.started:  # its startup failed (uvicorn's own check, in `uvicorn.main.run`)
        sys.exit(STARTUP_FAILURE)


class Processes:
    """The parent: N spawned `serve_one` processes, each restarted when it dies (not faster than
    once a second per slot), all stopped on SIGTERM/SIGINT."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.context = multiprocessing.get_context("spawn")
        self.slots: list[BaseProcess | None] = [None] * options.workers
        self.started: list[float] = [0.0] * options.workers
        self.stopping = False

    def _start(self, slot: int) -> None:
        process = self.context.Process(
            target=serve_one, args=(self.options, True), name=f"voicefarm-api-{slot}"
        )
        process.start()
        self.slots[slot] = process
        self.started[slot] = time.monotonic()

    def _stop(self, *_: object) -> None:
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for slot in range(len(self.slots)):
            self._start(slot)
        code = 0
        while not self.stopping:
            alive = [p for p in self.slots if p is not None]
            multiprocessing.connection.wait([p.sentinel for p in alive], timeout=0.5)
            for slot, process in enumerate(self.slots):
                if self.stopping or process is None or process.exitcode is None:
                    continue
                if process.exitcode == STARTUP_FAILURE:
                    log.error("event=api.startup_failed pid=%s: stopping", process.pid)
                    code = STARTUP_FAILURE
                    self.stopping = True
                    break
                log.warning(
                    "event=api.process_died pid=%s exitcode=%s: restarting",
                    process.pid,
                    process.exitcode,
                )
                wait = self.started[slot] + RESTART_BACKOFF_SECONDS - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                self._start(slot)
        self._terminate()
        return code

    def _terminate(self) -> None:
        running = [p for p in self.slots if p is not None and p.exitcode is None]
        for p in running:
            if p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)  # uvicorn's graceful shutdown
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for p in running:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.exitcode is None:
                p.kill()
                p.join()


def serve(options: ServeOptions) -> int:
    if options.workers == 1:
        serve_one(options, reuse_port=False)
        return 0
    try:
        # Holds the port number (and fails early, with one message, when it is taken) while the
        # processes come and go; it does not listen, so the kernel gives it no connections.
        holder = listening_socket(options.host, options.port, None, reuse_port=True)
    except OSError as exc:
        print(f"voicefarm api: cannot listen on {options.host}:{options.port}: {exc}")
        return STARTUP_FAILURE
    port = holder.getsockname()[1]
    try:
        return Processes(_with_port(options, port)).run()
    finally:
        holder.close()


def _with_port(options: ServeOptions, port: int) -> ServeOptions:
    from dataclasses import replace

    return replace(options, port=port)


def parse(argv: list[str] | None = None) -> ServeOptions:
    from core.settings import get_settings

    settings = get_settings()
    p = argparse.ArgumentParser(
        prog="python -m api.serve",
        description="The API as N uvicorn processes, a listening socket (SO_REUSEPORT) each.",
    )
    p.add_argument("--host", default=settings.api_host)
    p.add_argument("--port", type=int, default=settings.api_port)
    p.add_argument("--workers", type=int, default=settings.api_workers)
    p.add_argument("--log-level", default="info")
    p.add_argument("--no-access-log", dest="access_log", action="store_false")
    p.add_argument(
        "--proxy-headers", action=argparse.BooleanOptionalAction, default=True
    )  # X-Forwarded-For/-Proto, from --forwarded-allow-ips only (uvicorn: $FORWARDED_ALLOW_IPS
    # or 127.0.0.1)
    p.add_argument("--forwarded-allow-ips", default=None)
    p.add_argument("--backlog", type=int, default=2048)
    a = p.parse_args(argv)
    if a.workers < 1:
        p.error("--workers must be at least 1")
    return ServeOptions(
        host=a.host,
        port=a.port,
        workers=a.workers,
        log_level=a.log_level,
        access_log=a.access_log,
        proxy_headers=a.proxy_headers,
        forwarded_allow_ips=a.forwarded_allow_ips,
        backlog=a.backlog,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    return serve(parse(argv))


if __name__ == "__main__":
    sys.exit(main())

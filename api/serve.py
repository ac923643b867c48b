"""Serving the API: `python -m api.serve` runs `VOICEFARM_API_WORKERS` uvicorn processes, each
listening on a socket of its own on the same port (SO_REUSEPORT), and restarts one that dies.

Why not `uvicorn --workers N`: its processes share one listening socket, and an event loop that
wakes on it accepts every pending connection at once (asyncio and uvloop accept up to the
backlog per wake-up). Keep-alive clients that connect together then land on one process: the
admission bench saw 15 of 16 clients on one process and 1 on the other in 3 levels of 18, the
first process's latency five times the second's, the other core idle. With a socket per
process the kernel spreads new connections over the processes by a hash of the addresses
(docs/BENCHMARKS.md, Admission). `--workers 1` is one uvicorn process, in this process.

    python -m api.serve [--host H] [--port P] [--workers N] [--log-level L] [--no-access-log]
        [--forwarded-allow-ips IPS] [--no-proxy-headers]

Host, port and workers default to `VOICEFARM_API_HOST`, `VOICEFARM_API_PORT` and
`VOICEFARM_API_WORKERS`; the rest are uvicorn's options of the same names and defaults.

Lifecycle:
- A process listens only once its app has started (uvicorn's `create_server` calls `listen`
  after the lifespan): until then the kernel gives its connections to the processes that serve.
- A port something else listens on (another program, a second `api.serve`) is refused at start
  with one message and exit code 3, as uvicorn refuses it, instead of sharing the port.
- SIGTERM or SIGINT stops every process gracefully (uvicorn finishes the requests in flight);
  SIGHUP replaces them one at a time (a rolling restart: the others serve meanwhile).
- A process that dies is replaced (not faster than once a second per slot). One that fails
  before serving (an app that does not import or start, exit code 3) stops the whole server with
  that code, as `uvicorn --workers` does: a restart would fail the same way.
- The processes get SIGTERM if the parent dies, even by SIGKILL (Linux), so none is orphaned.

Imports uvicorn, core and the standard library only; the app is imported by each process after
the spawn, so pools and clients are per process (house rule 5).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass, replace
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


def bound_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to (host, port), SO_REUSEPORT when asked, not listening yet: the
    parent's holds the port number, and a process's listens once its app has started (a socket
    that does not listen is given no connections)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def config_kwargs(options: ServeOptions) -> dict[str, Any]:
    """uvicorn.Config's arguments for `options`."""
    return {
        "app": options.app,
        "host": options.host,
        "port": options.port,
        "log_level": options.log_level,
        "access_log": options.access_log,
        "proxy_headers": options.proxy_headers,
        "forwarded_allow_ips": options.forwarded_allow_ips,
        "backlog": options.backlog,
    }


def serve_one(options: ServeOptions, reuse_port: bool) -> None:
    """One uvicorn process on its own socket (the target of each spawned process)."""
    import uvicorn

    if reuse_port:  # a spawned process: it goes when its parent goes
        from core.process import die_with_parent

        die_with_parent(signal.SIGTERM)
    config = uvicorn.Config(**config_kwargs(options))
    try:
        sock = bound_socket(options.host, options.port, reuse_port)
    except OSError as exc:
        print(f"voicefarm api: cannot listen on {options.host}:{options.port}: {exc}", flush=True)
        sys.exit(STARTUP_FAILURE)
    if not reuse_port:
        log.info("event=api.serving host=%s port=%d processes=1", *sock.getsockname()[:2])
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn re-raises the SIGINT it handled (Ctrl-C) once it has shut down: a clean stop.
        if not server.started:
            sys.exit(STARTUP_FAILURE)
        return
    except BaseException as exc:
        if server.started:
            raise
        # The app raised while importing or starting: a restart would fail the same way.
        if not isinstance(exc, SystemExit):
            traceback.print_exc()
        sys.exit(STARTUP_FAILURE)
    if not server.started:  # its startup failed (uvicorn's own check, in `uvicorn.main.run`)
        sys.exit(STARTUP_FAILURE)


class Processes:
    """The parent: N spawned `serve_one` processes, each restarted when it dies (not faster than
    once a second per slot), all stopped on SIGTERM/SIGINT, replaced one by one on SIGHUP."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.context = multiprocessing.get_context("spawn")
        self.slots: list[BaseProcess | None] = [None] * options.workers
        self.started: list[float] = [0.0] * options.workers
        self.stopping = False
        self.reload = False

    def _start(self, slot: int) -> None:
        process = self.context.Process(
            target=serve_one, args=(self.options, True), name=f"voicefarm-api-{slot}"
        )
        process.start()
        self.slots[slot] = process
        self.started[slot] = time.monotonic()

    def _on_signal(self, signum: int, _: object) -> None:
        if signum == signal.SIGHUP:
            self.reload = True
        else:
            self.stopping = True

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        for slot in range(len(self.slots)):
            self._start(slot)
        log.info(
            "event=api.serving host=%s port=%d processes=%d",
            self.options.host,
            self.options.port,
            len(self.slots),
        )
        code = 0
        while not self.stopping:
            alive = [p for p in self.slots if p is not None]
            multiprocessing.connection.wait([p.sentinel for p in alive], timeout=0.5)
            if self.reload:
                self.reload = False
                self._rolling_restart()
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
                if not self.stopping:  # a stop asked for during the back-off starts nothing
                    self._start(slot)
        self._terminate([p for p in self.slots if p is not None])
        return code

    def _rolling_restart(self) -> None:
        log.info("event=api.reloading processes=%d", len(self.slots))
        for slot, old in enumerate(self.slots):
            if self.stopping:
                return
            if old is not None:
                self._terminate([old])
            self._start(slot)

    def _terminate(self, processes: list[BaseProcess]) -> None:
        running = [p for p in processes if p.exitcode is None]
        for p in running:
            if p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)  # uvicorn's graceful shutdown
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for p in running:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.exitcode is None:
                p.kill()
                p.join()


def serve(options: ServeOptions) -> int:
    where = f"{options.host}:{options.port}"
    if options.workers == 1:
        serve_one(options, reuse_port=False)
        return 0
    try:
        # Something already listening (without SO_REUSEPORT, or a second api.serve with it) makes
        # this plain bind fail: one clear refusal instead of a silently shared port.
        bound_socket(options.host, options.port, reuse_port=False).close()
        # Holds the port number while the processes come and go (with port 0, picks it); it
        # does not listen, so the kernel gives it no connections.
        holder = bound_socket(options.host, options.port, reuse_port=True)
    except OSError as exc:
        print(f"voicefarm api: cannot listen on {where}: {exc}", flush=True)
        return STARTUP_FAILURE
    port = holder.getsockname()[1]
    try:
        return Processes(replace(options, port=port)).run()
    finally:
        holder.close()


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
    options = parse(argv)
    level = getattr(logging, options.log_level.upper(), logging.INFO)  # uvicorn's "trace" too
    logging.basicConfig(level=level, format="%(levelname)s:     %(name)s %(message)s")
    return serve(options)


if __name__ == "__main__":
    sys.exit(main())

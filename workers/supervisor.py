"""`voicefarm workers`: one Celery worker process per GPU (or N on CPU), kept alive.

The supervisor never imports torch or touches CUDA (it forks). Each child is started with
`CUDA_VISIBLE_DEVICES=<i>` and hostname `gpu<i>@<host>`, and restarted with backoff when it
exits, when its heartbeat file goes stale (hang), or when its current job passes the deadline
(the solo pool has no time limits of its own). Exit code 75 means the child gave up on its
device after a CUDA OOM; that restart is counted as `oom`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.enums import DEFAULT_POOL, Priority, synth_queue
from core.process import (
    check_engine_cpus,
    die_with_parent,
    engine_shares,
    format_cpus,
    parse_cpus,
)
from core.settings import Settings
from workers import heartbeat
from workers.device import visible_gpus
from workers.runtime import EXIT_DEVICE_UNHEALTHY

log = logging.getLogger("voicefarm.supervisor")

BACKOFF_START = 1.0
BACKOFF_MAX = 60.0
HEALTHY_AFTER = 60.0  # a child that ran this long resets its backoff
STOP_GRACE = 20.0  # per child: Celery's warm shutdown lets the current segment finish


@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    heartbeat_file: Path | None = None
    hang_seconds: float | None = None
    deadline_seconds: float | None = None
    startup_grace: float = 120.0
    stop_grace: float = STOP_GRACE


@dataclass
class Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    next_start_at: float = 0.0
    backoff: float = BACKOFF_START
    restarts: dict[str, int] = field(default_factory=dict)


def _die_with_parent() -> None:
    """Children get SIGTERM if the supervisor dies (Linux), so no orphan keeps a GPU."""
    die_with_parent(signal.SIGTERM)
    os.setpgrp()


class Supervisor:
    def __init__(
        self, specs: list[ChildSpec], on_restart: Callable[[str, str], None] | None = None
    ) -> None:
        self.children = [Child(s) for s in specs]
        self.on_restart = on_restart
        self.stopping = False

    def start_child(self, child: Child) -> None:
        env = {**os.environ, **child.spec.env}
        if child.spec.heartbeat_file:
            child.spec.heartbeat_file.unlink(missing_ok=True)
        child.proc = subprocess.Popen(child.spec.argv, env=env, preexec_fn=_die_with_parent)
        child.started_at = time.monotonic()
        log.info("event=supervisor.started child=%s pid=%d", child.spec.name, child.proc.pid)

    def _kill(self, child: Child, sig: int) -> None:
        if child.proc and child.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, sig)

    def _restart_later(self, child: Child, reason: str) -> None:
        now = time.monotonic()
        if now - child.started_at > HEALTHY_AFTER:
            child.backoff = BACKOFF_START
        child.next_start_at = now + child.backoff
        child.backoff = min(child.backoff * 2, BACKOFF_MAX)
        child.restarts[reason] = child.restarts.get(reason, 0) + 1
        child.proc = None
        log.warning(
            "event=supervisor.restart child=%s reason=%s in=%.0fs",
            child.spec.name,
            reason,
            child.next_start_at - now,
        )
        if self.on_restart:
            self.on_restart(child.spec.name, reason)

    def _hung(self, child: Child) -> str | None:
        """Monotonic clocks only (workers/heartbeat.py): the child writes its own
        `time.monotonic()`, which on Linux is the same host-wide clock as ours."""
        spec = child.spec
        if not spec.heartbeat_file or not spec.hang_seconds:
            return None
        now = time.monotonic()
        beat = heartbeat.read(spec.heartbeat_file)
        if beat is None:
            return "hang" if now - child.started_at > spec.startup_grace else None
        # Silent past its last beat plus the hang limit, or past the time it said it would be
        # busy (loading an engine, one long segment), whichever is later.
        if now > beat.alive_until(spec.hang_seconds):
            return "hang"
        if (
            spec.deadline_seconds
            and beat.job
            and beat.job_started is not None
            and now - beat.job_started > spec.deadline_seconds
        ):
            return "deadline"
        return None

    def tick(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.proc is None:
                if not self.stopping and now >= child.next_start_at:
                    self.start_child(child)
                continue
            code = child.proc.poll()
            if code is not None:
                reason = "oom" if code == EXIT_DEVICE_UNHEALTHY else f"exit_{code}"
                self._restart_later(child, reason)
                continue
            hung = self._hung(child)
            if hung:
                log.error("event=supervisor.kill child=%s reason=%s", child.spec.name, hung)
                self._kill(child, signal.SIGKILL)
                try:
                    child.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    # Stuck in the kernel (a wedged driver): collect it on a later tick rather
                    # than taking every healthy worker down with this one.
                    log.error(
                        "event=supervisor.unkillable child=%s pid=%d",
                        child.spec.name,
                        child.proc.pid,
                    )
                    continue
                self._restart_later(child, hung)

    def stop(self) -> None:
        self.stopping = True
        for child in self.children:
            self._kill(child, signal.SIGTERM)
        grace = max((c.spec.stop_grace for c in self.children), default=STOP_GRACE)
        deadline = time.monotonic() + grace
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._kill(child, signal.SIGKILL)
                child.proc.wait()

    def run(self, poll: float = 1.0) -> int:
        def _on_signal(signum: int, _frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
        try:
            while not self.stopping:
                self.tick()
                time.sleep(poll)
        finally:
            self.stop()
        return 0


def celery_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "tasks.app:celery_app", *args]


def pool_queues(engines: str, pool: str) -> str:
    """The `-Q` list of a synthesis worker in `pool`: both priorities of every engine."""
    return ",".join(
        synth_queue(e.strip(), p, pool) for e in engines.split(",") if e.strip() for p in Priority
    )


def worker_specs(settings: Settings) -> list[ChildSpec]:
    """One solo-pool synthesis worker per visible GPU, or `cpu_workers` on a machine without,
    all serving `settings.worker_pool`. Outside the default pool the slot names carry the pool
    (`gpu0.vip@host` in Flower, `gpu0.vip.heartbeat`), so two pools can share a host."""
    host = socket.gethostname()
    engines = settings.worker_engines or settings.default_engine
    pool = settings.worker_pool
    queues = pool_queues(engines, pool)
    state = settings.worker_state_dir.resolve()
    gpus = visible_gpus(settings)
    slots = [(f"gpu{g}", {"CUDA_VISIBLE_DEVICES": g}) for g in gpus] or [
        (f"cpu{i}", {"CUDA_VISIBLE_DEVICES": "", "VOICEFARM_DEVICE": "cpu"})
        for i in range(settings.cpu_workers)
    ]
    for (_, extra), (engine, helpers) in zip(
        slots, _pinning(settings, len(slots), gpus), strict=True
    ):
        extra.update({"VOICEFARM_ENGINE_CPUS": engine, "VOICEFARM_HELPER_CPUS": helpers})
    if pool != DEFAULT_POOL:
        slots = [(f"{slot}.{pool}", extra) for slot, extra in slots]
    specs = []
    for i, (slot, extra) in enumerate(slots):
        env = {
            **extra,
            "VOICEFARM_WORKER_ENGINES": engines,
            "VOICEFARM_WORKER_POOL": pool,
            "VOICEFARM_WORKER_HEARTBEAT_FILE": str(state / f"{slot}.heartbeat"),
        }
        if settings.worker_metrics_port:
            env["VOICEFARM_WORKER_METRICS_PORT"] = str(settings.worker_metrics_port + i)
        specs.append(
            ChildSpec(
                name=slot,
                argv=celery_argv(
                    "worker",
                    "-P",
                    "solo",
                    "-Q",
                    queues,
                    "-n",
                    f"{slot}@{host}",
                    "--loglevel",
                    settings.log_level,
                    "--without-gossip",
                ),
                env=env,
                heartbeat_file=state / f"{slot}.heartbeat",
                hang_seconds=settings.worker_hang_seconds,
                # The task fails a job at its deadline itself; this is for when it cannot.
                deadline_seconds=settings.job_deadline_seconds + settings.worker_hang_seconds,
                startup_grace=settings.worker_startup_grace_seconds,
            )
        )
    if settings.supervise_ops_worker:
        specs.append(ops_spec(settings, host))
    return specs


def _pinning(settings: Settings, slots: int, gpus: list[str]) -> list[tuple[str, str]]:
    """(engine CPUs, helper CPUs) per synthesis slot, as CPU lists; empty: not pinned (GPU
    workers, or VOICEFARM_ENGINE_CPUS unset). ValueError for a list this host cannot honour."""
    if gpus or not settings.engine_cpus:
        return [("", "")] * slots
    engine_cpus = parse_cpus(settings.engine_cpus)
    rest = format_cpus(check_engine_cpus(engine_cpus))
    return [(format_cpus(share), rest) for share in engine_shares(engine_cpus, slots)]


def helper_cpus(specs: list[ChildSpec]) -> list[int] | None:
    """The CPUs the supervisor and what it starts besides the engines keep to, when pinned."""
    for spec in specs:
        if spec.env.get("VOICEFARM_HELPER_CPUS"):
            return parse_cpus(spec.env["VOICEFARM_HELPER_CPUS"])
    return None


def ops_spec(settings: Settings, host: str) -> ChildSpec:
    """A CPU worker for webhook deliveries and maintenance (threads: webhook POSTs wait on I/O).

    Watched like a synthesis worker: its consuming loop beats (tasks/lifecycle.py), so a wedged
    ops worker, which would silently stop the reconciler and every webhook, is killed and
    restarted after the hang limit. It loads no engine and runs no segments, so no deadline.
    The shared queues are the same in every pool; the name carries a non-default pool only so
    that two supervisors on one host keep apart."""
    pool = settings.worker_pool
    name = "ops" if pool == DEFAULT_POOL else f"ops.{pool}"
    beat_file = settings.worker_state_dir.resolve() / f"{name}.heartbeat"
    return ChildSpec(
        name=name,
        argv=celery_argv(
            "worker",
            "-P",
            "threads",
            "-c",
            "4",
            "-Q",
            "webhooks,maintenance,voices",
            "-n",
            f"{name}@{host}",
            "--loglevel",
            settings.log_level,
            "--without-gossip",
        ),
        env={
            "VOICEFARM_WORKER_ENGINES": "",
            "CUDA_VISIBLE_DEVICES": "",
            "VOICEFARM_WORKER_HEARTBEAT_FILE": str(beat_file),
        },
        heartbeat_file=beat_file,
        hang_seconds=settings.worker_hang_seconds,
        startup_grace=settings.worker_startup_grace_seconds,
    )

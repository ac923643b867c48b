"""Worker process hooks: build per-process resources after start, and beat from the event loop.

The heartbeat that proves a worker is alive comes from the consuming loop (a timer on the
worker's hub) and from the task's segment loop, never from a side thread: a thread keeps beating
while the consumer is wedged after a broker reconnect (DESIGN: known traps).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from celery import bootsteps
from celery.signals import worker_init, worker_shutdown

from core.heap import freeze_startup_objects
from core.logging import configure_logging
from core.process import (
    check_engine_cpus,
    format_cpus,
    parse_cpus,
    pin_engine_thread,
    start_off_engine,
)
from core.settings import get_settings

log = logging.getLogger("voicefarm.worker")


def _pin_engine(engine_cpus: str, helper_cpus: str | None) -> None:
    """This thread (the solo pool's: it runs the engine) on `engine_cpus`; the process's other
    threads on `helper_cpus` (default: the CPUs it may use outside `engine_cpus`)."""
    engine = parse_cpus(engine_cpus)
    try:
        helpers = parse_cpus(helper_cpus) if helper_cpus else check_engine_cpus(engine)
    except ValueError as exc:
        log.error("event=worker.pin_refused error=%s", exc)
        return
    if pin_engine_thread(engine, helpers):
        log.info(
            "event=worker.pinned engine_cpus=%s helper_cpus=%s",
            format_cpus(engine),
            format_cpus(helpers),
        )
    else:
        log.warning("event=worker.pin_failed engine_cpus=%s", format_cpus(engine))


@worker_init.connect
def _start_runtime(sender: Any = None, **_: Any) -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    if not settings.worker_engines:
        return  # an ops worker (webhooks, maintenance): no engine to load
    from workers import heartbeat

    # Importing the engines (torch) can be slow too: covered by the load timeout from here on.
    busy_until = time.monotonic() + settings.worker_load_timeout_seconds
    heartbeat.write(settings.worker_heartbeat_file, "loading", busy_until=busy_until)
    from workers import metrics, runtime

    hostname = getattr(sender, "hostname", None)
    if settings.engine_cpus:
        # Before the engine loads: its own threads (onnxruntime's, torch's) inherit the set.
        _pin_engine(settings.engine_cpus, settings.helper_cpus)
    runtime.start(settings, hostname)
    freeze_startup_objects()  # the engine and its imports: no longer walked by each collection
    if settings.finish_in_background:
        # The finisher thread (encode, upload) and the task's thread (claim, text preparation
        # of the next job) both want the GIL right after a hand-off; with the default 5 ms
        # switch interval every hand-back of the GIL to the task's thread could cost 5 ms.
        sys.setswitchinterval(0.001)
    if settings.worker_metrics_port:
        # Its server threads keep off the engine's CPUs when they are pinned.
        start_off_engine(lambda: metrics.serve(settings.worker_metrics_port, settings.metrics_host))


@worker_shutdown.connect
def _stop(**_: Any) -> None:
    from tasks import finisher

    # A warm shutdown waits for the running task; the job handed to the finisher (encode,
    # upload, fenced finish) gets as long as a hang would, so it is not run again for nothing.
    if not finisher.drain(0):
        log.info("event=worker.shutdown_waiting_for_finish")
    if not finisher.drain(get_settings().worker_hang_seconds):
        log.warning("event=worker.shutdown_finish_pending (its lease expires, it runs again)")
    log.info("event=worker.shutdown")


class HeartbeatStep(bootsteps.StartStopStep):
    """Touch the heartbeat file from the worker's own timer (runs on the consuming loop).

    Every supervised worker has one: synthesis workers and the ops worker alike. It needs no
    engine runtime, only the file the supervisor named (workers/heartbeat.py)."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None

    def start(self, parent: Any) -> None:
        settings = get_settings()
        path = settings.worker_heartbeat_file
        if path is None:
            return
        from workers import heartbeat

        heartbeat.write(path)
        self.tref = parent.timer.call_repeatedly(
            settings.worker_heartbeat_seconds, lambda: heartbeat.write(path)
        )

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()

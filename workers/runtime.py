"""Per-process worker state: the loaded engines, this worker's id, and its liveness heartbeat.

Built once in the worker process after it starts (Celery `worker_init`), never at import and
never in a parent that forks; handed to every task through `current()`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.settings import Settings
from workers import device as devices
from workers import heartbeat
from workers.engines.base import Engine
from workers.engines.registry import create_engine
from workers.prompt_cache import PromptCache

log = logging.getLogger("voicefarm.worker")

# Exit code that tells the supervisor the device is unhealthy (CUDA OOM that a retry didn't fix).
EXIT_DEVICE_UNHEALTHY = 75


@dataclass
class Runtime:
    settings: Settings
    worker_id: str
    device: str
    dtype: str
    engines: dict[str, Engine] = field(default_factory=dict)
    heartbeat_file: Path | None = None
    _prompts: PromptCache | None = None

    def prompts(self) -> PromptCache:
        """The prepared-prompt cache (Redis in front of storage), made on first use."""
        if self._prompts is None:
            import redis

            from core.storage import get_storage

            client = redis.Redis.from_url(
                self.settings.redis_url, socket_timeout=5, socket_connect_timeout=5
            )
            self._prompts = PromptCache(self.settings, get_storage(self.settings), client)
        return self._prompts

    def engine(self, name: str) -> Engine:
        engine = self.engines.get(name)
        if engine is None:
            raise LookupError(f"this worker serves {sorted(self.engines)}, not {name!r}")
        return engine

    def beat(
        self,
        job_id: str | None = None,
        job_started: float | None = None,
        *,
        phase: str | None = None,
        busy_until: float | None = None,
    ) -> None:
        """Tell the supervisor this process is alive, which job it has run since when, and until
        when it may stay silent (all `time.monotonic()`, see workers/heartbeat.py)."""
        heartbeat.write(
            self.heartbeat_file,
            phase or ("job" if job_id else "idle"),
            job=job_id,
            job_started=job_started,
            busy_until=busy_until,
        )


_runtime: Runtime | None = None


def start(settings: Settings, hostname: str | None = None) -> Runtime:
    global _runtime
    if _runtime is not None:
        return _runtime
    device, dtype = devices.resolve(settings)
    worker_id = f"{hostname or socket.gethostname()}:{os.getpid()}"
    rt = Runtime(settings, worker_id, device, dtype, heartbeat_file=settings.worker_heartbeat_file)
    for name in filter(None, (n.strip() for n in settings.worker_engines.split(","))):
        # Loading weights can take minutes: say so, bounded by the load timeout, so the
        # supervisor neither kills a slow load as a hang nor waits forever on a wedged one.
        rt.beat(phase="loading", busy_until=time.monotonic() + settings.worker_load_timeout_seconds)
        t0 = time.perf_counter()
        engine = create_engine(name, settings)
        engine.load(device, dtype)
        rt.engines[name] = engine
        log.info(
            "event=engine.loaded engine=%s device=%s dtype=%s seconds=%.2f",
            name,
            device,
            dtype,
            time.perf_counter() - t0,
        )
    _warm_job_path(settings)
    _register(rt)
    rt.beat()
    _runtime = rt
    return rt


def _warm_job_path(settings: Settings) -> None:
    """Import and run the audio path once and build the storage client at start, so the first
    job of a process does not spend about a second between its claim and its engine call on
    imports (scipy, pyloudnorm, soundfile) and the client (bench/admission.py's first probe job
    waited 1.3 s for them). Best effort: a failure here shows up again on the first job."""
    t0 = time.perf_counter()
    try:
        import numpy as np

        from core.storage import get_storage
        from workers import quality, segments  # noqa: F401  (imported for their import cost)
        from workers.audio import WavFileWriter
        from workers.engines.base import Audio

        rate = 16000
        tone = 0.1 * np.sin(np.arange(rate // 2, dtype=np.float32) * 0.1)
        with WavFileWriter.temporary("wav") as writer:
            writer.add(Audio(tone.astype(np.float32), rate))
            writer.stats()
            writer.finish()
        get_storage(settings)
    except Exception:
        log.warning("event=worker.warm_up_failed", exc_info=True)
        return
    log.info("event=worker.warmed_up seconds=%.2f", time.perf_counter() - t0)


def _register(rt: Runtime) -> None:
    """Record what each loaded engine class declares, for admission (core.engines.catalog).
    Best effort: a database that is down now only delays the record until the next start."""
    from db import engines as registry
    from db.session import session_scope

    try:
        with session_scope(rt.settings.database_url) as s:
            for name, engine in rt.engines.items():
                # Under the name this farm serves it by (an extra engine may reuse a class).
                registry.register(s, dataclasses.replace(engine.spec, name=name), rt.worker_id)
    except Exception:
        log.warning("event=engine.register_failed engines=%s", sorted(rt.engines), exc_info=True)


def current() -> Runtime:
    if _runtime is None:
        raise RuntimeError("worker runtime not started (is this a synthesis worker process?)")
    return _runtime

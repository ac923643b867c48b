"""The liveness file a worker process writes and its supervisor reads. No torch, no engine: the
ops worker (webhooks, maintenance) uses it too.

Times are `time.monotonic()`. On Linux that is CLOCK_MONOTONIC, one clock for the whole host
(seconds since boot), so a value written by a worker compares directly with the supervisor's
own `time.monotonic()`; and unlike wall time, an NTP step or a changed date can neither fake a
hang nor hide one. (Not true across hosts or containers with their own time namespace; the
supervisor and its children always share one.)

A beat says when it was written (`ts`) and what the process is doing (`phase`): `starting`,
`loading` an engine, `idle` between jobs, or in a `segment` of `job` (running since
`job_started`). A process that expects to stay silent for a while (loading weights, one long
segment) says until when with `busy_until`; the supervisor waits that long before calling it
hung, instead of its fixed hang limit. The writer bounds `busy_until` (a load timeout, the
segment's budget, the job deadline), so a wedged process is still killed.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Beat:
    ts: float
    phase: str = "idle"
    job: str | None = None
    job_started: float | None = None
    busy_until: float | None = None
    pid: int = 0

    def alive_until(self, hang_seconds: float) -> float:
        """Monotonic time after which silence means the process is hung."""
        return max(self.ts + hang_seconds, self.busy_until or 0.0)


def write(
    path: Path | None,
    phase: str = "idle",
    *,
    job: str | None = None,
    job_started: float | None = None,
    busy_until: float | None = None,
) -> None:
    """Replace the heartbeat file atomically (the reader never sees half a file)."""
    if path is None:
        return
    beat = Beat(time.monotonic(), phase, job, job_started, busy_until, os.getpid())
    # Per process and thread: batched jobs beat from several threads of one process at once.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(json.dumps(asdict(beat)))
    except FileNotFoundError:  # the folder is made on the first beat (or made again)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(asdict(beat)))
    os.replace(tmp, path)


def read(path: Path) -> Beat | None:
    """The last beat, or None when there is none yet (or it cannot be read)."""
    try:
        raw = json.loads(path.read_text())
        return Beat(
            float(raw["ts"]),
            str(raw.get("phase", "idle")),
            raw.get("job"),
            None if raw.get("job_started") is None else float(raw["job_started"]),
            None if raw.get("busy_until") is None else float(raw["busy_until"]),
            int(raw.get("pid", 0)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None

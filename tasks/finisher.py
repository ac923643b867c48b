"""Finishing a job while the next one synthesizes.

After a job's last segment the worker still has a quality check, the encode, the upload and the
fenced `succeeded` write to do: 20-50 ms of CPU and round trips a job on this project's bench
(docs/BENCHMARKS.md, "Efficiency"), during which the engine sat idle. `jobs.synthesize` hands
that tail to the process's Finisher and returns, so Celery acks the message and the next job is
claimed and starts synthesizing while the previous one finishes.

At most one job is finishing: `submit` first waits for the previous finish, so a worker never
runs further ahead than one job, and a wedged upload stops the next job at its hand-off (where
the missing heartbeats get the process restarted) instead of piling up. The job's lease keeper
runs until its finish is written, so a job finishing is still `running` with a live lease; a
process that dies mid-finish leaves it to lease expiry and the reconciler, like a death
mid-synthesis. A warm shutdown and a restart after CUDA OOM wait for the finish first
(tasks/lifecycle.py, tasks/synthesize.py).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from core.process import helper_thread

log = logging.getLogger("voicefarm.jobs")
_IDLE_EXIT_S = 5.0


class Finisher:
    """One job's tail at a time, on a thread of its own (started once, then reused: starting a
    thread per job cost about 1% of the worker's time under load)."""

    def __init__(self) -> None:
        self._idle = threading.Event()
        self._idle.set()
        self._submit = threading.Lock()
        self._work: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the finisher's thread once the previous one has returned."""
        with self._submit:
            self._idle.wait()
            self._idle.clear()
            if self._thread is None or not self._thread.is_alive():
                # Not a daemon: an interpreter exiting waits for the finish in progress.
                self._thread = threading.Thread(target=self._loop, name="job-finisher")
                self._thread.start()
            self._work.put(fn)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait for the job being finished, if any; False if it still runs after `timeout`."""
        return self._idle.wait(timeout)

    def _loop(self) -> None:
        # Exits once idle for a while, so a process that is done (a test's, a worker's at
        # shutdown) is not held open by a thread waiting for work that never comes.
        helper_thread()  # off the engine's CPUs when VOICEFARM_ENGINE_CPUS pins it
        while True:
            try:
                fn = self._work.get(timeout=_IDLE_EXIT_S)
            except queue.Empty:
                with self._submit:
                    if self._work.empty():
                        self._thread = None
                        return
                continue
            try:
                fn()
            except Exception:
                # The job's own handlers record every outcome; this is a bug or an outage
                # that also broke its failure write (the lease then expires and the
                # reconciler re-runs it).
                log.exception("event=jobs.finish_crashed")
            finally:
                self._idle.set()


_finisher: Finisher | None = None
_lock = threading.Lock()


def current() -> Finisher:
    """The process's finisher (made on first use, so after the fork)."""
    global _finisher
    with _lock:
        if _finisher is None:
            _finisher = Finisher()
        return _finisher


def drain(timeout: float | None = None) -> bool:
    """Wait for this process's finish in progress, if there is a finisher."""
    return True if _finisher is None else _finisher.drain(timeout)

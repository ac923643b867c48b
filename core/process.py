"""Process helpers shared by the supervisors (workers/supervisor.py, api/serve.py) and the
workers: lifetime (a child dies with its parent) and CPU pinning of a worker's engine."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send `sig` to this process when its parent dies, so no child outlives a
    supervisor killed with SIGKILL (or the OOM killer) and keeps a port or a GPU. Elsewhere it
    does nothing."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig)
    except OSError:
        return
    if os.getppid() != parent:  # the parent died before the request: nobody will signal
        os.kill(os.getpid(), sig)


# --- CPU pinning of a synthesis worker's engine -------------------------------------------------
#
# On a CPU host an engine that runs one thread (VOICEFARM_PIPER_THREADS=1, say) is slowed less
# by its own farm when the farm's threads keep off its core: on two cores the engine's calls
# waited 16-18 ms per job for a core without pinning, 6-7 ms with it (docs/BENCHMARKS.md,
# Efficiency). Linux only; elsewhere, or when the kernel refuses, nothing is pinned.

MAX_CPU = 4095
_NUMBER = re.compile(r"[0-9]{1,5}")  # ASCII digits only (str.isdigit takes "٣")


def parse_cpus(text: str) -> list[int]:
    """A Linux CPU list ("0", "0-3", "0,2,4-5") as sorted CPU numbers; ValueError if malformed
    or empty."""
    cpus: set[int] = set()
    for part in text.replace(" ", "").split(","):
        first, dash, last = part.partition("-")
        if not _NUMBER.fullmatch(first) or (dash and not _NUMBER.fullmatch(last)):
            raise ValueError(f"{text!r} is not a CPU list such as 0 or 0-3 or 0,2,4-5")
        lo, hi = int(first), int(last) if dash else int(first)
        if lo > hi or hi > MAX_CPU:
            raise ValueError(f"{text!r}: {part!r} is not a range of CPU numbers up to {MAX_CPU}")
        cpus.update(range(lo, hi + 1))
    return sorted(cpus)


def format_cpus(cpus: list[int] | set[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def engine_shares(engine_cpus: list[int], workers: int) -> list[list[int]]:
    """`engine_cpus` split into `workers` contiguous shares, as even as they go (the first ones
    get one more); ValueError when there are fewer CPUs than workers."""
    if len(engine_cpus) < workers:
        raise ValueError(
            f"VOICEFARM_ENGINE_CPUS lists {len(engine_cpus)} CPU(s) for {workers} CPU workers: "
            "give each worker at least one"
        )
    size, extra = divmod(len(engine_cpus), workers)
    shares, at = [], 0
    for i in range(workers):
        n = size + (1 if i < extra else 0)
        shares.append(engine_cpus[at : at + n])
        at += n
    return shares


def check_engine_cpus(engine_cpus: list[int]) -> list[int]:
    """The CPUs left for everything else: those this process may use outside `engine_cpus`.
    ValueError when `engine_cpus` names a CPU it may not use, or leaves none."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    if not allowed:
        raise ValueError("VOICEFARM_ENGINE_CPUS needs Linux (sched_setaffinity)")
    missing = sorted(set(engine_cpus) - allowed)
    if missing:
        raise ValueError(
            f"VOICEFARM_ENGINE_CPUS names CPU(s) {format_cpus(missing)} this process may not use "
            f"(it may use {format_cpus(allowed)})"
        )
    rest = sorted(allowed - set(engine_cpus))
    if not rest:
        raise ValueError(
            "VOICEFARM_ENGINE_CPUS takes every CPU: leave at least one for the farm's own "
            "threads and processes"
        )
    return rest


_helper_cpus: set[int] | None = None


def pin_engine_thread(engine: list[int], helpers: list[int]) -> bool:
    """Run the calling thread (it runs the engine, and threads it starts from now on inherit
    this) on `engine`, and this process's other threads, present and to come (they call
    `helper_thread`), on `helpers`. False, and nothing pinned, where the kernel refuses."""
    global _helper_cpus
    import threading

    try:
        os.sched_setaffinity(0, engine)
        # Every other thread, Python's and those libraries started (BLAS pools, say).
        me = threading.get_native_id()
        for tid in (int(t) for t in os.listdir("/proc/self/task")):
            if tid != me:
                with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                    os.sched_setaffinity(tid, helpers)
    except (OSError, AttributeError):
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setaffinity(0, set(engine) | set(helpers))  # back to unpinned, as reported
        return False
    _helper_cpus = set(helpers)
    return True


def helper_thread() -> None:
    """Called first by a worker's own threads (finisher, lease keeper, dispatch): off the
    engine's CPUs when they are pinned; nothing otherwise (the API's processes included)."""
    if _helper_cpus is None:
        return
    try:
        os.sched_setaffinity(0, _helper_cpus)
    except OSError:
        return


def start_off_engine(start: Callable[[], None]) -> None:
    """Call `start` (which starts threads: a metrics server, say) from a short-lived thread on
    the helpers' CPUs, so the threads it starts inherit those rather than the engine's; plainly
    when nothing is pinned. Its exception, if any, is raised here."""
    if _helper_cpus is None:
        start()
        return
    import threading

    failed: list[BaseException] = []

    def run() -> None:
        helper_thread()
        try:
            start()
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=run, name="start-off-engine")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]

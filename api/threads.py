"""A thread hop for a route's blocking work that costs less CPU than Starlette's threadpool."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")
# As many as anyio's default threadpool, which the other routes share: a request waiting on a
# row lock or a pooled connection holds one, as it did there.
THREADS = 40
_LOCK = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    # Made on first use, in the process that serves (house rule 5).
    global _executor
    with _LOCK:
        if _executor is None:
            _executor = ThreadPoolExecutor(THREADS, thread_name_prefix="voicefarm-api")
        return _executor


async def in_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`fn(*args, **kwargs)` in a thread, with the caller's context variables.

    Why not `run_in_threadpool`: anyio's hand-off (a checkpoint, a capacity limiter, a
    `queue.Queue` whose Condition wakes the thread) cost about 90 us of CPU per call here against
    about 25 us for an executor's SimpleQueue; it was the largest item left on the event loop of
    POST /v1/jobs (docs/BENCHMARKS.md, Admission). If the request is cancelled the call still
    runs to its end (its commit included), as it would in anyio's threadpool."""
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_pool(), call)

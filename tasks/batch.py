"""Cross-job micro-batching: several claimed jobs of one shape share each engine call.

The solo worker takes one message at a time; when batching is on (VOICEFARM_BATCH_MAX > 1 and
the engine declares `max_batch > 1`), the task claims up to that many in-flight jobs of the
same shape in the same transaction (db.jobs.claim_mates) and runs each in its own thread
through the usual per-job path (tasks/synthesize.run_claimed_job): its own lease keeper,
fenced progress and finish, resume, cancel at segment boundaries, quality check and upload.
Only the engine is shared: `BatchingEngine` gathers the threads' segment requests for up to
VOICEFARM_BATCH_WINDOW_MS (or until every live job of the batch is waiting) and runs them as
one `synthesize` call. A failing batch call is retried one request at a time, so a bad job
fails alone; a job that stops (canceled, lease lost) just leaves the batch.

The engine call releases the GIL (onnxruntime), so one job's encode and upload overlap the
others' synthesis; the heartbeat file names whichever job beat last.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from db.jobs import Claim
    from tasks.synthesize import JobInput
    from workers.engines.base import Audio, Engine, SegmentRequest
    from workers.runtime import Runtime

log = logging.getLogger("voicefarm.batch")


@dataclass
class _Pending:
    requests: list[SegmentRequest]
    result: list[Audio] | None = None
    error: BaseException | None = None
    done: bool = False
    since: float = field(default_factory=time.monotonic)


class BatchingEngine:
    """An engine proxy that merges concurrent `synthesize` calls of a batch's job threads."""

    def __init__(self, engine: Engine, max_batch: int, window_s: float) -> None:
        self.engine = engine
        self.spec = engine.spec
        self.max_batch = max_batch
        self.window_s = window_s
        self.members = 0
        self.calls = 0
        self.batched_requests = 0
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._busy = False

    def __getattr__(self, name: str) -> Any:
        # name, revision, load, prepare_voice... are the engine's own.
        return getattr(self.engine, name)

    def join(self) -> None:
        with self._cond:
            self.members += 1

    def leave(self) -> None:
        with self._cond:
            self.members -= 1
            self._cond.notify_all()

    def synthesize(self, batch: list[SegmentRequest]) -> list[Audio]:
        item = _Pending(list(batch))
        with self._cond:
            self._queue.append(item)
            self._cond.notify_all()
            while not item.done:
                if not self._busy and self._queue and self._queue[0] is item and self._ready():
                    take = self._take()
                    self._busy = True
                    self._cond.release()
                    try:
                        self._run(take)
                    finally:
                        self._cond.acquire()
                        self._busy = False
                        self._cond.notify_all()
                    continue
                self._cond.wait(self._wait_left())
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def _ready(self) -> bool:
        waiting = sum(len(p.requests) for p in self._queue)
        if waiting >= self.max_batch or len(self._queue) >= self.members:
            return True
        return time.monotonic() - self._queue[0].since >= self.window_s

    def _wait_left(self) -> float:
        if not self._queue:
            return self.window_s
        return max(0.001, self.window_s - (time.monotonic() - self._queue[0].since))

    def _take(self) -> list[_Pending]:
        take: list[_Pending] = []
        n = 0
        while self._queue and (not take or n + len(self._queue[0].requests) <= self.max_batch):
            n += len(self._queue[0].requests)
            take.append(self._queue.pop(0))
        return take

    def _run(self, take: list[_Pending]) -> None:
        requests = [r for p in take for r in p.requests]
        self.calls += 1
        self.batched_requests += len(requests)
        try:
            out = self.engine.synthesize(requests)
            if len(out) != len(requests):
                raise RuntimeError(f"engine returned {len(out)} results for {len(requests)}")
        except BaseException as exc:
            if len(take) == 1:
                self._done(take[0], None, exc)
                return
            # Failure isolation: each job's requests again on their own; only a bad one fails.
            log.warning("event=batch.retry_singly size=%d error=%s", len(take), type(exc).__name__)
            for p in take:
                try:
                    self._done(p, self.engine.synthesize(p.requests), None)
                except BaseException as single:
                    self._done(p, None, single)
            return
        at = 0
        for p in take:
            self._done(p, out[at : at + len(p.requests)], None)
            at += len(p.requests)

    def _done(self, p: _Pending, result: list[Audio] | None, error: BaseException | None) -> None:
        with self._cond:
            p.result, p.error, p.done = result, error, True
            self._cond.notify_all()


def run_batch(rt: Runtime, claimed: list[tuple[Claim, JobInput, bool]], claim_s: float) -> None:
    """Run the claimed jobs together, one thread each, sharing one BatchingEngine."""
    from tasks.synthesize import run_claimed_job

    inp = claimed[0][1]
    engine = rt.engine(inp.engine)
    shared = BatchingEngine(
        engine, getattr(engine, "max_batch", 1), rt.settings.batch_window_ms / 1000
    )
    log.info("event=batch.started engine=%s jobs=%d", inp.engine, len(claimed))

    def one(claim: Claim, job: JobInput, oomed_before: bool) -> None:
        try:
            run_claimed_job(rt, claim, job, oomed_before, claim_s=claim_s, engine=shared)
        except Exception:
            # run_claimed_job records every outcome itself; this is a bug, not a job failure.
            log.exception("event=batch.job_crashed job=%s", claim.job_id)
        finally:
            shared.leave()

    threads = []
    for c in claimed:
        shared.join()
        t = threading.Thread(target=one, args=c, name=f"batch-{c[0].job_id}", daemon=True)
        threads.append(t)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.info(
        "event=batch.finished engine=%s jobs=%d engine_calls=%d requests=%d",
        inp.engine,
        len(claimed),
        shared.calls,
        shared.batched_requests,
    )

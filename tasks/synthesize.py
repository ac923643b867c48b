"""`jobs.synthesize`: claim the job, synthesize it segment by segment, upload, then finish.

Order matters: the audio is uploaded before the row says `succeeded`, and every write after the
claim is fenced by the attempt number (db/jobs.py). A duplicate message claims nothing.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeVar

from celery import Task
from celery.exceptions import Reject
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from core.enums import ErrorCode, JobStatus, TaskName
from core.errors import RequestRejected, StorageError
from core.process import helper_thread
from core.settings import Settings
from core.storage import get_storage, job_audio_key, job_timings_key
from core.text import halve
from core.textnorm import prepare
from db import jobs as q
from db.models import DEFAULT_TENANT_ID
from db.session import after_commit, session_scope
from tasks.app import celery_app
from tasks.dispatch import dispatch_soon
from tasks.send import send_webhooks

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy.orm import Session

    from core.storage import Storage
    from db.models import Job
    from tasks.finisher import Finisher
    from tasks.prefetch import Prefetch
    from workers.audio import WavFileWriter
    from workers.engines.base import Audio, Engine, PreparedVoice
    from workers.prompt_cache import VoiceRef
    from workers.quality import Verdict
    from workers.runtime import Runtime
    from workers.segments import SegmentStore, Timing

log = logging.getLogger("voicefarm.jobs")
_T = TypeVar("_T")

MAX_OOM_SPLITS = 2
# Back-off while PostgreSQL is unreachable: doubles per consecutive failure in this process.
DB_BACKOFF_START = 0.5
DB_BACKOFF_MAX = 30.0
_db_failures = 0


@dataclass(frozen=True)
class JobInput:
    engine: str
    voice: str | None
    instruction: str | None
    text: str
    format: str
    sample_rate: int | None
    speed: float
    mode: str = "preset"
    language: str | None = None
    # The cloned voice the job speaks with.
    voice_id: uuid.UUID | None = None
    # The owner; its audio is stored under its tenant's prefix.
    tenant_id: uuid.UUID = DEFAULT_TENANT_ID
    # A subtitle file to store beside the audio (srt | vtt), from the segment timings.
    subtitles: str | None = None
    # Output options: PCM bit depth (wav, flac, pcm) and a loudness target in LUFS.
    bit_depth: int | None = None
    loudness_target: float | None = None
    # Whether the job has a webhook: started/progress events are only written for those.
    webhook: bool = False


class Stopped(Exception):
    """The fenced heartbeat matched nothing: canceled, or the lease went to another attempt."""


class DeviceUnhealthy(Exception):
    pass


class LeaseKeeper:
    """Renews the job's lease (fenced by attempt) while one long segment runs.

    Liveness is a separate signal: the supervisor's heartbeat file is written only from the
    segment loop and the consumer's timer, so a wedged engine still gets its process killed
    (and this thread with it). The keeper also stops renewing at the job deadline, so a job can
    never hold its lease forever.
    """

    def __init__(self, settings: Settings, claim: q.Claim) -> None:
        self.settings = settings
        self.claim = claim
        self.done = threading.Event()
        self.lost = threading.Event()
        self.thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
        self.deadline = time.monotonic() + settings.job_deadline_seconds
        self.progress_sent_at = time.monotonic()
        # When segments_done was last written (None: never), and whether this attempt found or
        # stored kept segments (only multi-segment jobs keep any).
        self.progress_written_at: float | None = None
        self.segments_kept = True
        # Seconds per phase of this attempt, logged as `jobs.timings` (bench/efficiency.py).
        self.phases: dict[str, float] = {}

    def timed(self, phase: str, since: float) -> None:
        self.phases[phase] = self.phases.get(phase, 0.0) + time.perf_counter() - since

    def __enter__(self) -> LeaseKeeper:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        helper_thread()  # off the engine's CPUs when VOICEFARM_ENGINE_CPUS pins it
        interval = max(0.5, self.settings.lease_seconds / 3)
        while not self.done.wait(min(interval, max(0.0, self.deadline - time.monotonic()))):
            if time.monotonic() >= self.deadline:
                self._fail_at_deadline()
                return
            try:
                with session_scope(self.settings.database_url) as s:
                    alive = q.heartbeat(s, self.claim, self.settings.lease_seconds)
            except Exception:
                log.warning(
                    "event=jobs.lease_renew_failed job=%s", self.claim.job_id, exc_info=True
                )
                continue
            if not alive:
                self.lost.set()
                return

    def _fail_at_deadline(self) -> None:
        """Fail the job (fenced) the moment its deadline passes, even mid-segment, so it is not
        re-queued to run again; the segment loop stops at its next boundary."""
        cfg = self.settings
        message = f"job ran past VOICEFARM_JOB_DEADLINE_SECONDS={cfg.job_deadline_seconds:g}"
        try:
            with session_scope(cfg.database_url) as s:
                deliveries = q.finish_failure(
                    s, self.claim, ErrorCode.deadline_exceeded.value, message, cfg.public_base_url
                )
                after_commit(s, lambda: send_webhooks(deliveries))
        finally:
            self.lost.set()


@celery_app.task(bind=True, name=TaskName.synthesize.value, ignore_result=True)
def synthesize(self: Task, job_id: str) -> None:
    global _db_failures
    from workers import runtime

    rt = runtime.current()
    try:
        run_job(rt, uuid.UUID(job_id))
    except Exception as exc:
        if not database_unavailable(exc):
            raise
        _db_failures += 1
        _wait_for_database(rt, job_id, exc)
        # Reject with requeue, not `self.retry(countdown=...)`: with acks_late the message stays
        # in Redis (the unacked set, restored if this process dies) until the reject puts it back
        # on its queue. A retry would ack it and hold a copy with an ETA in this worker's memory,
        # pulling the whole queue into one process during an outage. The back-off above keeps
        # the worker from spinning through the queue; the claim makes a redelivery harmless.
        raise Reject(f"database unavailable: {type(exc).__name__}", requeue=True) from exc
    _db_failures = 0


def database_unavailable(exc: BaseException) -> bool:
    """PostgreSQL stopped, restarting or out of reach (not a bad query): worth waiting for."""
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeout)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def _wait_for_database(rt: Runtime, job_id: str, exc: BaseException) -> None:
    """Sleep before handing the message back, beating so the supervisor sees a live process."""
    delay = min(DB_BACKOFF_MAX, DB_BACKOFF_START * 2 ** (_db_failures - 1))
    log.warning(
        "event=jobs.db_unavailable job=%s failures=%d retry_in=%.1fs error=%s",
        job_id,
        _db_failures,
        delay,
        type(exc).__name__,
    )
    until = time.monotonic() + delay
    while (left := until - time.monotonic()) > 0:
        rt.beat()
        time.sleep(min(1.0, left))
    rt.beat()


def run_job(rt: Runtime, job_id: uuid.UUID) -> None:
    settings = rt.settings
    c0 = time.perf_counter()
    with session_scope(settings.database_url) as s:
        claim = q.claim_job(s, job_id, rt.worker_id, settings.lease_seconds)
        if claim is None:
            log.info("event=jobs.claim.skipped job=%s reason=not_queued", job_id)
            return
        job = q.get_job(s, job_id)
        claimed = [_claimed(s, settings, claim, job)]
        size = _batch_size(rt, job)
        if size > 1:
            # Micro-batching (tasks/batch.py): in-flight jobs of the same shape join this one.
            for mate in q.claim_mates(s, job, rt.worker_id, settings.lease_seconds, size - 1):
                claimed.append(_claimed(s, settings, mate, q.get_job(s, mate.job_id)))
        # The claim freed a slot in the queue: publish the next job in fair-share order now,
        # not at the next reconcile.
        after_commit(s, functools.partial(_dispatch, settings, job.engine, job.pool))
    claim_s = time.perf_counter() - c0
    if len(claimed) == 1:
        finisher = None
        if settings.finish_in_background:
            from tasks import finisher as finishers

            finisher = finishers.current()
        prefetch = None
        if settings.prefetch and settings.batch_max <= 1:
            from tasks.prefetch import Prefetch

            prefetch = Prefetch(rt, time.monotonic())
        # The job, then each job claimed ahead while the one before was on its last segment.
        current: tuple[q.Claim, JobInput, bool, float] | None = (*claimed[0], claim_s)
        while current is not None:
            claim, inp, oomed_before, claim_s = current
            run_claimed_job(
                rt, claim, inp, oomed_before, claim_s=claim_s, finisher=finisher, prefetch=prefetch
            )
            current = prefetch.take() if prefetch is not None else None
        return
    from tasks.batch import run_batch

    run_batch(rt, claimed, claim_s)


def _batch_size(rt: Runtime, job: Job) -> int:
    """How many jobs to run together with `job`: 1 unless batching is on and its engine
    batches (only preset voices: a cloned voice's prompt is per job)."""
    if rt.settings.batch_max <= 1 or job.voice_id is not None or job.instruction is not None:
        return 1
    engine = rt.engines.get(job.engine)
    return min(rt.settings.batch_max, getattr(engine, "max_batch", 1))


def _claimed(
    s: Session, settings: Settings, claim: q.Claim, job: Job
) -> tuple[q.Claim, JobInput, bool]:
    """The job's inputs, whether an earlier attempt took a worker down with CUDA OOM, and its
    `job.started` event (jobs with a webhook only)."""
    inp = JobInput(
        job.engine,
        job.voice,
        job.instruction,
        job.text,
        job.format,
        job.sample_rate,
        job.speed,
        job.mode,
        job.language,
        job.voice_id,
        job.tenant_id,
        subtitles=job.subtitles,
        bit_depth=job.bit_depth,
        loudness_target=job.loudness_target,
        webhook=bool(job.webhook_url),
    )
    # A release keeps its error code on the row until the next finish: this says whether an
    # earlier attempt of this job already took a worker down with CUDA OOM.
    oomed_before = job.error_code == ErrorCode.out_of_memory.value
    if inp.webhook:
        deliveries = q.started_event(s, claim, settings.public_base_url)
        after_commit(s, lambda: send_webhooks(deliveries))
    return claim, inp, oomed_before


@dataclass
class Synthesized:
    """A job whose every segment is in its writer: what finishing it needs."""

    writer: WavFileWriter
    segments: list[str]
    timings: list[Timing]
    synth_seconds: float
    cloned: VoiceRef | None
    # The last segment's (index, text, audio), not yet in the writer.
    last: tuple[int, str, Audio | None] | None = None


def run_claimed_job(
    rt: Runtime,
    claim: q.Claim,
    inp: JobInput,
    oomed_before: bool,
    *,
    claim_s: float = 0.0,
    engine: Engine | None = None,
    finisher: Finisher | None = None,
    prefetch: Prefetch | None = None,
) -> None:
    """Synthesize, store and finish one claimed job; every outcome is a fenced write. `engine`
    overrides the runtime's (a batch's shared engine call, tasks/batch.py). With a `finisher`
    (tasks/finisher.py) the tail after the last segment (quality, encode, upload, finish) runs on
    its thread and this returns once synthesis is done. With a `prefetch` (tasks/prefetch.py) the
    worker's next job is claimed when this one starts its last segment."""
    settings = rt.settings
    log.info(
        "event=jobs.claimed job=%s attempt=%d worker=%s", claim.job_id, claim.attempt, rt.worker_id
    )
    t0 = time.perf_counter()
    keeper = LeaseKeeper(settings, claim)
    keeper.phases["claim"] = claim_s
    # The lease keeper and the job's temporary files live until the job's last write, on this
    # thread or the finisher's: closed (files removed, renewals stopped) before any failure is
    # recorded, as the job's outcome is written after its resources are gone.
    held = ExitStack()

    def synthesize() -> Synthesized | None:
        from workers.audio import WavFileWriter

        with ExitStack() as undo:
            undo.push(held)
            held.enter_context(keeper)
            writer = held.enter_context(
                WavFileWriter.temporary(
                    inp.format,
                    inp.sample_rate,
                    bit_depth=inp.bit_depth,
                    loudness=inp.loudness_target,
                )
            )
            on_last = prefetch.start if prefetch is not None else None
            done = _synthesize_all(rt, claim, inp, t0, keeper, writer, engine, on_last)
            if done is not None:
                undo.pop_all()  # the job goes on to its finish, which closes `held`
            return done

    def finish(done: Synthesized) -> None:
        def store() -> None:
            with held:
                _store(rt, claim, inp, t0, keeper, done, beat=finisher is None)

        _outcome(rt, claim, inp, oomed_before, keeper, store)
        _ended(settings, claim, inp, keeper)

    synthesized = _outcome(rt, claim, inp, oomed_before, keeper, synthesize)
    if synthesized is None:
        _ended(settings, claim, inp, keeper)
    elif finisher is None:
        finish(synthesized)
    else:
        finisher.submit(functools.partial(finish, synthesized))


def _ended(settings: Settings, claim: q.Claim, inp: JobInput, keeper: LeaseKeeper) -> None:
    # Succeeded, failed, canceled or spent: the kept segments go; re-queued: they stay.
    if keeper.segments_kept:
        _drop_segments_if_ended(settings, claim, inp)


def _outcome(
    rt: Runtime,
    claim: q.Claim,
    inp: JobInput,
    oomed_before: bool,
    keeper: LeaseKeeper,
    stage: Callable[[], _T],
) -> _T | None:
    """Run one stage of the job; record what its exception means for the job (None then)."""
    settings = rt.settings
    job_id = claim.job_id
    try:
        return stage()
    except Stopped:
        log.info("event=jobs.stopped job=%s attempt=%d", job_id, claim.attempt)
    except DeviceUnhealthy as exc:
        from tasks import finisher
        from workers.runtime import EXIT_DEVICE_UNHEALTHY

        try:
            if oomed_before:
                # A poison job: passing it on would take down one worker after another until
                # its attempts run out. Fail it now; this worker still restarts once.
                message = (
                    f"{exc}, in attempt {claim.attempt} as in the one before: the job needs more "
                    "GPU memory than a worker has (shorten the text or lower "
                    "VOICEFARM_SEGMENT_MAX_CHARS)"
                )
                _fail(settings, claim, inp, ErrorCode.out_of_memory.value, message)
            else:
                _release(settings, claim, inp, ErrorCode.out_of_memory.value, str(exc))
                _metrics_finished(inp.engine, "oom")
        finally:
            if keeper.segments_kept:
                _drop_segments_if_ended(settings, claim, inp)
            log.error("event=worker.device_unhealthy job=%s exiting for a restart", job_id)
            # The job before this one may still be finishing: let it write its outcome.
            finisher.drain(settings.worker_hang_seconds)
            # Exit so the supervisor restarts the process with a clean CUDA context, even when
            # the database write failed: the lease then expires and the reconciler takes over.
            os._exit(EXIT_DEVICE_UNHEALTHY)
    except StorageError as exc:
        _release(settings, claim, inp, ErrorCode.storage_error.value, exc.message)
    except RequestRejected as exc:
        _fail(settings, claim, inp, ErrorCode.invalid_input.value, str(exc))
    except Exception as exc:
        log.exception("event=jobs.engine_error job=%s attempt=%d", job_id, claim.attempt)
        _release(settings, claim, inp, ErrorCode.engine_error.value, f"{type(exc).__name__}: {exc}")
    return None


def _synthesize_all(
    rt: Runtime,
    claim: q.Claim,
    inp: JobInput,
    t0: float,
    keeper: LeaseKeeper,
    writer: WavFileWriter,
    engine: Engine | None = None,
    on_last_segment: Callable[[], None] | None = None,
) -> Synthesized | None:
    """Every segment into `writer`, resuming from kept ones. None: the job ended here (its
    deadline passed), its outcome written. `on_last_segment` is called as the last one starts."""
    from workers.audio import join
    from workers.segments import add_timed

    settings = rt.settings
    engine = engine or rt.engine(inp.engine)
    prompt, cloned = None, None
    if inp.voice_id is not None:
        with session_scope(settings.database_url) as s:
            cloned = _voice_ref(s, inp.voice_id)
        # Prepared once per (engine, weights, recording, transcript): usually a cache hit.
        prompt = rt.prompts().prepared(engine, cloned)
    segments = prepare(inp.text, engine.spec, settings.segment_max_chars, inp.language).segments
    store = _segment_store(settings, claim, inp)
    # Only a job of several segments keeps them: a 1-segment job has nothing to resume.
    keeping = len(segments) > 1
    kept = store.kept(segments) if keeping else set()
    keeper.segments_kept = keeping
    if kept:
        log.info(
            "event=jobs.resumed job=%s attempt=%d kept=%d of=%d",
            claim.job_id,
            claim.attempt,
            len(kept),
            len(segments),
        )
    first_missing = next((i for i in range(len(segments)) if i not in kept), len(segments))
    _beat(
        rt,
        claim,
        keeper,
        done=first_missing,
        total=len(segments),
        started=t0,
        segments=segments,
        webhook=inp.webhook,
    )
    # From the claim to the engine's first call: lease keeper, temporary file, voice prompt,
    # text normalisation and segmentation, kept segments, the first beat.
    keeper.phases["prepare"] = time.perf_counter() - t0
    synth_seconds = 0.0
    synth_cpu = 0.0  # this thread's CPU in those calls: below the wall time, it waited for a core
    timings: list[Timing] = []
    last: tuple[int, str, Audio | None] | None = None
    for i, segment in enumerate(segments):
        if time.perf_counter() - t0 > settings.job_deadline_seconds:
            _fail(
                settings,
                claim,
                inp,
                ErrorCode.deadline_exceeded.value,
                f"job ran past VOICEFARM_JOB_DEADLINE_SECONDS={settings.job_deadline_seconds:g}",
            )
            return None
        if i == len(segments) - 1 and on_last_segment is not None:
            on_last_segment()
        # A segment an earlier attempt kept is read back, not synthesized again.
        audio = store.load(i, segment) if i in kept else None
        if audio is None:
            s0, c0 = time.perf_counter(), time.thread_time()
            parts = _synthesize_segment(engine, segment, inp, prompt)
            synth_seconds += time.perf_counter() - s0
            synth_cpu += time.thread_time() - c0
            k0 = time.perf_counter()
            if keeping:
                audio = store.save(i, segment, parts)
            elif parts:
                audio = parts[0] if len(parts) == 1 else join(parts)
            keeper.timed("keep", k0)
        if i == len(segments) - 1:
            # The last segment is written by the job's finish, on the finisher's thread when
            # there is one: the engine moves on to the next job meanwhile.
            last = (i, segment, audio)
        else:
            w0 = time.perf_counter()
            timings.append(add_timed(writer, i, segment, audio))
            keeper.timed("write", w0)
        if i + 1 >= first_missing:
            _beat(
                rt,
                claim,
                keeper,
                done=i + 1,
                total=len(segments),
                started=t0,
                segments=segments,
                webhook=inp.webhook,
            )
    keeper.phases["synthesize"] = synth_seconds
    keeper.phases["synthesize_cpu"] = synth_cpu
    return Synthesized(writer, segments, timings, synth_seconds, cloned, last)


def _store(
    rt: Runtime,
    claim: q.Claim,
    inp: JobInput,
    t0: float,
    keeper: LeaseKeeper,
    done: Synthesized,
    *,
    beat: bool = True,
) -> None:
    """Check, encode and upload the audio, then write `succeeded` (fenced). `beat`: touch the
    heartbeat after (not from the finisher's thread: the next job's segment beats own it)."""
    from workers.segments import add_timed

    settings = rt.settings
    writer, segments = done.writer, done.segments
    if done.last is not None:
        w0 = time.perf_counter()
        done.timings.append(add_timed(writer, *done.last))
        keeper.timed("write", w0)
    q0 = time.perf_counter()
    silence = writer.silence()
    if silence is not None:
        # A 0-frame or silent WAV is not a success: fail (fenced) and store nothing.
        _fail(settings, claim, inp, ErrorCode.empty_audio.value, silence)
        log.warning("event=jobs.empty_audio job=%s attempt=%d", claim.job_id, claim.attempt)
        return
    verdict = _check_quality(settings, inp, writer, " ".join(segments))
    if verdict.message is not None:
        # Broken audio (NaN, clipped, mostly silent, implausible duration) is not delivered:
        # fail (fenced) with the figure, record the measurements, store nothing.
        _fail(
            settings,
            claim,
            inp,
            ErrorCode.quality_check_failed.value,
            verdict.message,
            verdict.quality,
        )
        log.warning(
            "event=jobs.quality_failed job=%s attempt=%d check=%s",
            claim.job_id,
            claim.attempt,
            verdict.check,
        )
        return
    keeper.timed("quality", q0)
    e0 = time.perf_counter()
    encoded = writer.finish()
    quality = _finish_quality(inp, writer, verdict, _quality(inp.engine, done.cloned, writer.path))
    keeper.timed("encode", e0)
    key = job_audio_key(str(inp.tenant_id), str(claim.job_id), claim.attempt, encoded.format)
    storage = get_storage(settings)
    u0 = time.perf_counter()
    storage.put_file(key, encoded.path, encoded.content_type)
    timings_key, subtitles_key = _store_timings(storage, claim, inp, done.timings)
    upload_seconds = time.perf_counter() - u0
    keeper.phases["upload"] = upload_seconds
    f0 = time.perf_counter()
    result = q.AudioResult(
        key,
        encoded.format,
        encoded.sample_rate,
        encoded.duration_s,
        encoded.bytes,
        encoded.sha256,
        quality,
        timings_key=timings_key,
        subtitles_key=subtitles_key,
    )
    with session_scope(settings.database_url) as s:
        deliveries = q.finish_success(
            s, claim, result, settings.public_base_url, segments_total=len(segments)
        )
        if deliveries is None:
            after_commit(s, lambda: _delete_all(storage, key, timings_key, subtitles_key))
        else:
            after_commit(s, lambda: send_webhooks(deliveries))
    if deliveries is None:
        raise Stopped()
    keeper.timed("finish", f0)
    if beat:
        rt.beat()
    _observe(
        inp.engine,
        rt.device,
        done.synth_seconds,
        upload_seconds,
        time.perf_counter() - t0,
        encoded.duration_s,
    )
    log.info(
        "event=jobs.succeeded job=%s attempt=%d audio_s=%.2f rtf=%.3f",
        claim.job_id,
        claim.attempt,
        encoded.duration_s,
        done.synth_seconds / max(encoded.duration_s, 1e-6),
    )
    # One line per job with where its time went (ms), for bench/efficiency.py.
    log.info(
        "event=jobs.timings job=%s segments=%d total_ms=%.1f %s",
        claim.job_id,
        len(segments),
        (time.perf_counter() - t0 + keeper.phases.get("claim", 0.0)) * 1000,
        " ".join(f"{k}_ms={v * 1000:.1f}" for k, v in sorted(keeper.phases.items())),
    )


def _segment_store(settings: Settings, claim: q.Claim, inp: JobInput) -> SegmentStore:
    from workers.segments import SegmentStore, SynthesisInputs

    inputs = SynthesisInputs(
        inp.engine, inp.voice, inp.mode, inp.instruction, inp.speed, inp.language, inp.voice_id
    )
    return SegmentStore(get_storage(settings), inp.tenant_id, claim.job_id, inputs)


def _store_timings(
    storage: Storage, claim: q.Claim, inp: JobInput, timings: list[Timing]
) -> tuple[str, str | None]:
    """segments.json of this attempt and, when the job asked for one, its subtitle file; both
    beside the audio, before the row says succeeded. Returns their keys."""
    from core import subtitles
    from workers.segments import timings_json

    tenant, job = str(inp.tenant_id), str(claim.job_id)
    timings_key = job_timings_key(tenant, job, claim.attempt)
    storage.put(timings_key, timings_json(timings), "application/json")
    if inp.subtitles is None:
        return timings_key, None
    subtitles_key = job_audio_key(tenant, job, claim.attempt, inp.subtitles)
    rows = [{"start": t.start, "end": t.end, "text": t.text} for t in timings]
    content = subtitles.render(inp.subtitles, rows).encode()
    storage.put(subtitles_key, content, subtitles.SUBTITLE_TYPES[inp.subtitles])
    return timings_key, subtitles_key


def _delete_all(storage: Storage, *keys: str | None) -> None:
    for key in keys:
        if key:
            storage.delete(key)


def _drop_segments_if_ended(settings: Settings, claim: q.Claim, inp: JobInput) -> None:
    """Remove the job's kept segments once it has ended (succeeded, failed, canceled), however
    it ended; a job given back to the queue keeps them for its next attempt. Best effort: the
    orphan sweep removes what is left."""
    try:
        with session_scope(settings.database_url) as s:
            status = JobStatus(q.get_job(s, claim.job_id).status)
        if status.is_terminal():
            removed = _segment_store(settings, claim, inp).drop()
            if removed:
                log.info("event=jobs.segments_dropped job=%s removed=%d", claim.job_id, removed)
    except Exception:
        log.warning("event=jobs.segments_drop_failed job=%s", claim.job_id, exc_info=True)


def _voice_ref(session: Session, voice_id: uuid.UUID) -> VoiceRef:
    from db.models import Voice
    from workers.prompt_cache import VoiceRef

    voice = session.get(Voice, voice_id)
    if voice is None or voice.status != "ready" or not voice.prompt_key or not voice.audio_sha256:
        # Deleted or reprocessed since admission: retrying cannot help.
        raise RequestRejected(f"voice {voice_id} is not ready (deleted or being reprocessed)")
    return VoiceRef(
        voice.id,
        voice.revision,
        voice.transcript,
        voice.language,
        voice.prompt_key,
        voice.audio_sha256,
        list(voice.embedding) if voice.embedding else None,
    )


def _check_quality(
    settings: Settings, inp: JobInput, writer: WavFileWriter, spoken: str
) -> Verdict:
    """Measurements of the streamed audio against the VOICEFARM_QUALITY_* thresholds."""
    from workers.quality import assess, observe

    verdict = assess(writer.stats(), spoken, inp.speed, settings)
    if verdict.check is not None:
        observe(inp.engine, verdict)
    return verdict


def _finish_quality(
    inp: JobInput, writer: WavFileWriter, verdict: Verdict, similarity: dict[str, float] | None
) -> dict[str, float]:
    """The job's `quality`: the checked figures, the delivered file's loudness and peak, and the
    speaker similarity of a cloned voice's output; exported as metrics."""
    from workers.quality import observe

    quality = dict(verdict.quality)
    if writer.loudness_after is not None:
        quality["loudness_lufs"] = round(writer.loudness_after, 2)
    quality["output_peak"] = round(writer.output_peak, 4)
    quality.update(similarity or {})
    observe(inp.engine, replace(verdict, quality=quality))
    return quality


def _quality(engine: str, cloned: VoiceRef | None, wav_path: Path) -> dict[str, float] | None:
    """Speaker similarity of a cloned voice's output to the voice (same encoder as the voice's
    embedding). A measurement, never a reason to fail the job."""
    if cloned is None or not cloned.embedding:
        return None
    try:
        from workers import metrics
        from workers.quality import similarity_to

        score = similarity_to(wav_path, cloned.embedding)
    except Exception:
        log.warning("event=jobs.similarity_failed engine=%s", engine, exc_info=True)
        return None
    metrics.SPEAKER_SIMILARITY.labels(engine).observe(score)
    return {"speaker_similarity": round(score, 4)}


def _synthesize_segment(
    engine: Engine, text: str, inp: JobInput, prompt: PreparedVoice | None
) -> list[Audio]:
    """Synthesize one segment; on CUDA OOM free the cache and retry with smaller pieces."""
    from workers import device as devices
    from workers.engines.base import SegmentRequest

    pieces = [text]
    for split in range(MAX_OOM_SPLITS + 1):
        try:
            out: list[Audio] = []
            for piece in pieces:
                request = SegmentRequest(
                    piece,
                    inp.voice,
                    inp.speed,
                    mode=inp.mode,
                    prompt=prompt,
                    instruction=inp.instruction,
                    language=inp.language,
                )
                out.extend(engine.synthesize([request]))
            return out
        except Exception as exc:
            if not devices.is_oom(exc):
                raise
            _metrics_oom(inp.engine)
            devices.free_cuda_cache()
            log.warning("event=jobs.oom engine=%s split=%d chars=%d", inp.engine, split, len(text))
            # Markup-aware: a piece never ends inside `她[h][ào]` (core/text.py).
            pieces = [half for p in pieces for half in halve(p)]
    raise DeviceUnhealthy(
        f"CUDA out of memory even after splitting the segment {MAX_OOM_SPLITS} times"
    )


def _beat(
    rt: Runtime,
    claim: q.Claim,
    keeper: LeaseKeeper,
    *,
    done: int,
    total: int,
    started: float,
    segments: list[str],
    webhook: bool = False,
) -> None:
    settings = rt.settings
    # The heartbeat is in `time.monotonic()` (host-wide; `started` is this process's
    # perf_counter). Before each segment it says how long the segment may take: the hang limit
    # plus its length at the slowest expected rate, never past the job deadline, so a long
    # segment is not killed as a hang and a wedged one still is.
    now = time.monotonic()
    job_started = now - (time.perf_counter() - started)
    busy_until = None
    if done < len(segments):
        per_char = settings.segment_seconds_per_char
        budget = settings.worker_hang_seconds + len(segments[done]) * per_char
        busy_until = min(now + budget, job_started + settings.job_deadline_seconds)
    rt.beat(str(claim.job_id), job_started, phase="segment", busy_until=busy_until)
    # Progress is written at most every VOICEFARM_PROGRESS_WRITE_SECONDS, and never for a job
    # of one segment (claim and finish are its only writes); the lease keeper renews the lease
    # meanwhile. A cancel (or a lost lease) is seen at the first segment boundary after a write
    # or a renewal, so at most that much later than with a write per segment.
    last = keeper.progress_written_at
    event_due = (
        webhook
        and 0 < done < total
        and now - keeper.progress_sent_at >= settings.webhook_progress_seconds
    )
    if total > 1 and (last is None or now - last >= settings.progress_write_seconds or event_due):
        b0 = time.perf_counter()
        with session_scope(settings.database_url) as s:
            alive = q.heartbeat(
                s, claim, settings.lease_seconds, segments_done=done, segments_total=total
            )
            now = keeper.progress_written_at = time.monotonic()
            if (
                alive
                and webhook
                and 0 < done < total
                and (now - keeper.progress_sent_at >= settings.webhook_progress_seconds)
            ):
                keeper.progress_sent_at = now
                deliveries = q.progress_event(s, claim, settings.public_base_url)
                after_commit(s, lambda: send_webhooks(deliveries))
        keeper.timed("progress", b0)
        if not alive:
            raise Stopped()
    if keeper.lost.is_set():
        raise Stopped()


def _release(settings: Settings, claim: q.Claim, inp: JobInput, code: str, message: str) -> None:
    with session_scope(settings.database_url) as s:
        deliveries = q.release(s, claim, code, message, settings.public_base_url)
        if deliveries is None:
            return
        job = q.get_job(s, claim.job_id)
        requeued = job.status == "queued"
        after_commit(s, lambda: send_webhooks(deliveries))
        if requeued:
            after_commit(s, functools.partial(_dispatch, settings, job.engine, job.pool))
    _metrics_finished(inp.engine, "requeued" if requeued else "failed")


def _dispatch(settings: Settings, engine: str, pool: str) -> None:
    """Publish the next jobs of the queue from a background thread (tasks/dispatch.py)."""
    dispatch_soon(settings.database_url, engine, pool, settings.dispatch_ahead)


def _fail(
    settings: Settings,
    claim: q.Claim,
    inp: JobInput,
    code: str,
    message: str,
    quality: dict[str, float] | None = None,
) -> None:
    with session_scope(settings.database_url) as s:
        deliveries = q.finish_failure(
            s, claim, code, message, settings.public_base_url, quality=quality
        )
        after_commit(s, lambda: send_webhooks(deliveries))
    _metrics_finished(inp.engine, "failed")


def _observe(
    engine: str, device: str, synth_s: float, upload_s: float, total_s: float, audio_s: float
) -> None:
    from workers import metrics
    from workers.device import gpu_memory_bytes

    metrics.JOBS_FINISHED.labels(engine, "succeeded").inc()
    memory = gpu_memory_bytes()
    if memory is not None:
        metrics.GPU_MEMORY.labels("allocated").set(memory[0])
        metrics.GPU_MEMORY.labels("reserved").set(memory[1])
    metrics.JOB_DURATION.labels(engine, "synthesize").observe(synth_s)
    metrics.JOB_DURATION.labels(engine, "upload").observe(upload_s)
    metrics.JOB_DURATION.labels(engine, "total").observe(total_s)
    if audio_s > 0:
        metrics.JOB_RTF.labels(engine, device).observe(synth_s / audio_s)


def _metrics_finished(engine: str, status: str) -> None:
    from workers import metrics

    metrics.JOBS_FINISHED.labels(engine, status).inc()


def _metrics_oom(engine: str) -> None:
    from workers import metrics

    metrics.OOM.labels(engine).inc()

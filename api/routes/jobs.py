"""/v1/jobs: submit, read, list, cancel, fetch audio, read webhook deliveries."""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from api.auth import Caller
from api.deps import (
    CallerDep,
    PageCursor,
    PageLimit,
    SessionDep,
    SettingsDep,
    StorageDep,
    json_response,
    request_session,
)
from api.errors import responses
from api.schemas import JobCreate, JobList, JobOut, WebhookAttemptOut, WebhookDeliveryOut
from api.settings import current_settings
from api.submit import submit, submit_plain
from api.threads import in_thread
from core.engines import CONTENT_TYPES, DEFAULT_BIT_DEPTH, content_type
from core.enums import JobStatus
from core.errors import (
    AudioGone,
    AudioNotReady,
    IdempotencyConflict,
    InvalidCursor,
    JobNotCancelable,
    JobNotFound,
    MarkupInvalid,
    QuotaExceeded,
    RequestTooLarge,
    StorageError,
    SubtitlesNotRequested,
    TextEmpty,
    TextTooLong,
    TimingsNotAvailable,
    TooManyAuthFailures,
    Unauthorized,
    UnknownEngine,
    UnknownVoice,
    UnsupportedFormat,
    UnsupportedMode,
    ValidationFailed,
    WebhookUrlForbidden,
    WebhookUrlInvalid,
)
from core.settings import Settings
from core.storage import Storage
from core.subtitles import SUBTITLE_TYPES
from db import jobs as q
from db import webhooks as wq
from db.models import Job
from db.session import after_commit
from db.views import job_view
from tasks.send import send_webhooks

log = logging.getLogger("voicefarm.api")
router = APIRouter(
    prefix="/v1/jobs", tags=["jobs"], responses=responses(Unauthorized, TooManyAuthFailures)
)


def _out(job: Job, base_url: str) -> JobOut:
    return JobOut.model_validate(job_view(job, base_url))


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    responses=responses(
        TextEmpty,
        TextTooLong,
        MarkupInvalid,
        UnknownEngine,
        UnknownVoice,
        UnsupportedFormat,
        UnsupportedMode,
        WebhookUrlInvalid,
        WebhookUrlForbidden,
        ValidationFailed,
        IdempotencyConflict,
        RequestTooLarge,
        QuotaExceeded,
    ),
)
async def create_job(
    request: Request,
    body: JobCreate,
    caller: CallerDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Response:
    """Submit a synthesis job; answers at once with the queued job."""
    # Not a SettingsDep: FastAPI solves each declared dependency per request, cache or not.
    settings = await current_settings(request)
    # A plain job is admitted in the event loop with one statement, committed when it returns
    # (api/submit.py `submit_plain`); any other, with one thread hop for everything that
    # blocks: a sync route with a SessionDep took four hand-offs (session, route, commit,
    # answer), each costing more CPU than most of the work (docs/BENCHMARKS.md, Admission).
    job = await submit_plain(settings, body, caller, idempotency_key)
    if job is not None:
        return _accepted(_out(job, settings.public_base_url), replayed=False)
    return await in_thread(_create, body, settings, caller, idempotency_key)


def _create(
    body: JobCreate, settings: Settings, caller: Caller, idempotency_key: str | None
) -> Response:
    with request_session(settings) as session:
        job, replayed = submit(session, settings, body, caller, idempotency_key)
        out = _out(job, settings.public_base_url)
    # Committed (and the dispatch done) when the block ended: a failed commit raised instead,
    # so a 202 always names a durable row.
    return _accepted(out, replayed)


def _accepted(out: JobOut, replayed: bool) -> Response:
    headers = {"Location": out.links.self}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return json_response(out, 202, headers)


@router.get("", response_model=JobList, responses=responses(InvalidCursor))
def list_jobs(
    session: SessionDep,
    settings: SettingsDep,
    caller: CallerDep,
    status: JobStatus | None = None,
    tenant_id: Annotated[
        uuid.UUID | None,
        Query(description="Only this tenant's jobs (admin keys; a tenant key sees its own only)."),
    ] = None,
    limit: PageLimit = 50,
    cursor: PageCursor = None,
) -> Response:
    """List jobs, newest first; pass `next_cursor` back as `cursor` for the next page."""
    scope = caller.sees
    if tenant_id is not None and scope is not None and tenant_id != scope:
        return json_response(JobList(items=[], next_cursor=None))  # not this caller's to see
    rows, next_cursor = q.list_jobs(
        session, status=status, limit=limit, cursor=cursor, tenant_id=scope or tenant_id
    )
    items = [_out(j, settings.public_base_url) for j in rows]
    return json_response(JobList(items=items, next_cursor=next_cursor))


@router.get("/{job_id}", response_model=JobOut, responses=responses(JobNotFound))
def get_job(
    job_id: uuid.UUID, session: SessionDep, settings: SettingsDep, caller: CallerDep
) -> Response:
    """Read a job: status, attempts, progress, timings, error and result."""
    job = q.get_job(session, job_id, tenant_id=caller.sees)
    return json_response(_out(job, settings.public_base_url))


@router.post(
    "/{job_id}/cancel", response_model=JobOut, responses=responses(JobNotFound, JobNotCancelable)
)
def cancel_job(
    job_id: uuid.UUID, session: SessionDep, settings: SettingsDep, caller: CallerDep
) -> Response:
    """Cancel a queued or running job; a running one stops at its next segment."""
    job, deliveries = q.cancel_job(session, job_id, settings.public_base_url, tenant_id=caller.sees)
    after_commit(session, lambda: send_webhooks(deliveries))
    return json_response(_out(job, settings.public_base_url))


@router.get(
    "/{job_id}/audio",
    responses={
        200: {
            "content": {t: {} for t in CONTENT_TYPES.values()},
            "description": "The audio file in the job's format (`Content-Type` per format; "
            "`pcm` is `application/octet-stream`, raw little-endian signed mono samples, "
            "described by `X-Audio-Sample-Rate`, `X-Audio-Bit-Depth` and `X-Audio-Encoding`)",
        },
        307: {"description": "Redirect to a presigned S3 URL"},
        **responses(JobNotFound, AudioNotReady, AudioGone, StorageError),
    },
    response_model=None,
)
def get_audio(
    job_id: uuid.UUID, session: SessionDep, storage: StorageDep, caller: CallerDep
) -> StreamingResponse | RedirectResponse:
    """Download the audio of a succeeded job (streamed, or a redirect to S3)."""
    # Presigned URLs (VOICEFARM_S3_PRESIGN_SECONDS) are only ever issued here, to the owner.
    job = q.get_job(session, job_id, tenant_id=caller.sees)
    if job.status != JobStatus.succeeded or not job.result_key:
        raise AudioNotReady(f"job {job_id} is {job.status}; audio exists once it has succeeded")
    url, chunks = _open(storage, job.result_key, job_id)
    if url is not None:
        return RedirectResponse(url, status_code=307)
    fmt = job.result_format or "wav"
    headers = {
        "Content-Length": str(job.result_bytes),
        "ETag": f'"{job.result_sha256}"',
        "Content-Disposition": f'attachment; filename="{job_id}.{fmt}"',
    }
    if fmt == "pcm":
        depth = job.bit_depth or DEFAULT_BIT_DEPTH
        headers["X-Audio-Sample-Rate"] = str(job.result_sample_rate)
        headers["X-Audio-Bit-Depth"] = str(depth)
        headers["X-Audio-Encoding"] = f"s{depth}le"
    return StreamingResponse(chunks, media_type=content_type(fmt), headers=headers)


def _open(storage: Storage, key: str, job_id: uuid.UUID) -> tuple[str | None, Iterator[bytes]]:
    """(presigned URL, no bytes) or (None, the object's bytes), once the object is known to exist.

    Opened here, before the 200 goes out: a lazily opened object that turned out missing broke the
    response after its headers (and a redirect sent the client to S3's 404). Missing is 410,
    a store that fails or cannot be reached is 502; either with a body and a code."""
    gone = AudioGone(f"the audio of job {job_id} is no longer in storage; submit the job again")
    try:
        if not storage.exists(key):
            raise gone
        url = storage.presigned_url(key)
        if url is not None:
            return url, iter(())
        chunks = storage.iter_bytes(key)
        first = next(chunks, b"")
    except FileNotFoundError:  # deleted between the two calls
        raise gone from None
    except AudioGone:
        raise
    except Exception as exc:  # OSError, botocore's errors: the store failed, not the request
        log.warning("event=api.storage_failed key=%s error=%s", key, type(exc).__name__)
        raise StorageError(
            f"the audio of job {job_id} could not be read from storage; retry shortly",
            retry_after=5,
        ) from exc
    return None, itertools.chain([first], chunks)


@router.get(
    "/{job_id}/webhooks",
    response_model=list[WebhookDeliveryOut],
    responses=responses(JobNotFound),
)
def get_webhooks(job_id: uuid.UUID, session: SessionDep, caller: CallerDep) -> Response:
    """Every webhook event of a job, with each delivery attempt."""
    # Deliveries are reached only through their job: the job's tenant scope covers them.
    q.get_job(session, job_id, tenant_id=caller.sees)
    deliveries = wq.deliveries_for_job(session, job_id)
    attempts = wq.attempts_for(session, [d.id for d in deliveries])
    out = []
    for d in deliveries:
        history = [
            WebhookAttemptOut.model_validate(a, from_attributes=True)
            for a in attempts
            if a.delivery_id == d.id
        ]
        out.append(
            WebhookDeliveryOut(
                id=d.id,
                event=d.event,
                url=d.url,
                status=d.status,
                attempts=d.attempts,
                next_attempt_at=d.next_attempt_at if d.status == "pending" else None,
                delivered_at=d.delivered_at,
                history=history,
            )
        )
    return json_response(out)


@router.get(
    "/{job_id}/timings",
    responses={
        200: {"content": {"application/json": {}}, "description": "`segments.json`"},
        **responses(JobNotFound, AudioNotReady, TimingsNotAvailable, AudioGone, StorageError),
    },
    response_model=None,
)
def get_timings(
    job_id: uuid.UUID, session: SessionDep, storage: StorageDep, caller: CallerDep
) -> Response:
    """Each segment's text, start and end (seconds) in the job's audio."""
    job = q.get_job(session, job_id, tenant_id=caller.sees)
    if job.status != JobStatus.succeeded or not job.result_key:
        raise AudioNotReady(f"job {job_id} is {job.status}; timings exist once it has succeeded")
    if not job.timings_key:
        raise TimingsNotAvailable(f"job {job_id} finished before segment timings were stored")
    return Response(_read_small(storage, job.timings_key, job_id), media_type="application/json")


@router.get(
    "/{job_id}/subtitles",
    responses={
        200: {
            "content": {t: {} for t in SUBTITLE_TYPES.values()},
            "description": "The subtitle file (SubRip or WebVTT)",
        },
        **responses(JobNotFound, SubtitlesNotRequested, AudioNotReady, AudioGone, StorageError),
    },
    response_model=None,
)
def get_subtitles(
    job_id: uuid.UUID, session: SessionDep, storage: StorageDep, caller: CallerDep
) -> Response:
    """Download the subtitle file of a succeeded job that asked for one (`subtitles`)."""
    job = q.get_job(session, job_id, tenant_id=caller.sees)
    if not job.subtitles:
        raise SubtitlesNotRequested(
            f"job {job_id} was submitted without `subtitles`; its timings are at .../timings"
        )
    if job.status != JobStatus.succeeded or not job.subtitles_key:
        raise AudioNotReady(f"job {job_id} is {job.status}; subtitles exist once it has succeeded")
    return Response(
        _read_small(storage, job.subtitles_key, job_id),
        media_type=SUBTITLE_TYPES[job.subtitles],
        headers={"Content-Disposition": f'attachment; filename="{job_id}.{job.subtitles}"'},
    )


def _read_small(storage: Storage, key: str, job_id: uuid.UUID) -> bytes:
    """A small object (timings, subtitles) read whole; missing is 410, a failing store 502."""
    gone = AudioGone(f"the files of job {job_id} are no longer in storage; submit the job again")
    try:
        if not storage.exists(key):
            raise gone
        return b"".join(storage.iter_bytes(key))
    except FileNotFoundError:
        raise gone from None
    except AudioGone:
        raise
    except Exception as exc:
        log.warning("event=api.storage_failed key=%s error=%s", key, type(exc).__name__)
        raise StorageError(
            f"the files of job {job_id} could not be read from storage; retry shortly",
            retry_after=5,
        ) from exc

"""`POST /v1/audio/speech`: OpenAI's speech endpoint, so existing OpenAI clients work unchanged.

    OpenAI(base_url="http://farm/v1", api_key="vf_...").audio.speech.create(
        model="tts-1", voice="alloy", input="Hello.")

It submits an ordinary job for the caller's tenant and waits for it like /api/predict (no thread,
no connection, api/waiter.py; VOICEFARM_PREDICT_TIMEOUT_SECONDS, VOICEFARM_PREDICT_MAX_WAITING),
then answers with the audio bytes. Past the timeout it answers 202 with the job to poll. Errors
keep voicefarm's body, `{"error": {"code", "message"}}`, which OpenAI clients read as the
APIStatusError's message. A job that failed is a 422 `job_failed`: OpenAI clients retry 5xx
answers on their own, and that would only repeat the attempts the farm already made.
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError as PydanticValidationError

from api.auth import Caller
from api.deps import CallerDep, SettingsDep, WaiterDep
from api.errors import responses, validation_error
from api.schemas import JobCreate, SpeechCreate
from api.submit import submit
from core.engines import CONTENT_TYPES, DEFAULT_BIT_DEPTH, catalog, content_type
from core.enums import JobMode, JobStatus
from core.errors import (
    AudioGone,
    QuotaExceeded,
    StorageError,
    TextEmpty,
    TextTooLong,
    TooManyWaiting,
    UnknownEngine,
    UnknownVoice,
    UnsupportedFormat,
    ValidationFailed,
    VoicefarmError,
    VoiceNotReady,
)
from core.settings import Settings
from core.storage import get_storage
from db import jobs as q
from db.engines import registered_specs
from db.session import session_scope
from db.views import job_view

router = APIRouter(prefix="/v1/audio", tags=["openai"])

OPENAI_MODELS = frozenset({"tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-tts"})
# OpenAI's voices: none of them exists here, each means the engine's default voice.
OPENAI_VOICES = frozenset(
    {"alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx"}
    | {"sage", "shimmer", "verse"}
)
FORMATS = {"mp3": "mp3", "opus": "opus", "wav": "wav", "flac": "flac", "pcm": "pcm"}
# OpenAI's `pcm` is 24 kHz 16-bit little-endian mono; clients play it at that rate.
PCM_RATE = 24000


class JobFailed(VoicefarmError):
    status_code = 422
    code = "job_failed"


def _job_in(body: SpeechCreate, settings: Settings, caller: Caller) -> tuple[JobCreate, bool]:
    """The job the call asks for, and whether its `instructions` were used."""
    fmt = FORMATS.get(body.response_format)
    if fmt is None:
        raise UnsupportedFormat(
            f"response_format {body.response_format!r} is not offered: use one of "
            f"{', '.join(FORMATS)} (aac is not supported)",
            field="response_format",
        )
    engine = settings.default_engine if body.model in OPENAI_MODELS else body.model
    voice = body.voice if isinstance(body.voice, str) else body.voice.get("id", "")
    voice_id: uuid.UUID | None = None
    with contextlib.suppress(ValueError):
        voice_id = uuid.UUID(voice)
    with session_scope(settings.database_url) as session:
        spec = catalog(settings, registered_specs(session)).get(engine)
    if spec is None:
        raise UnknownEngine(f"model {body.model!r} is not an engine here", field="model")
    instruct = bool(body.instructions) and JobMode.instruct in spec.modes
    if voice_id is not None:
        mode = JobMode.instruct if instruct else JobMode.clone
    else:
        mode = JobMode.instruct if instruct else JobMode.preset
    try:
        job = JobCreate(
            text=body.input,
            engine=engine,
            voice=None if voice_id is not None or voice.lower() in OPENAI_VOICES else voice,
            voice_id=voice_id,
            mode=mode,
            instruction=body.instructions if instruct else None,
            format=fmt,
            sample_rate=PCM_RATE if fmt == "pcm" else None,
            speed=body.speed,
        )
    except PydanticValidationError as exc:
        raise validation_error(exc.errors()) from None
    return job, instruct


def _submit(settings: Settings, job_in: JobCreate, caller: Caller) -> uuid.UUID:
    with session_scope(settings.database_url) as session:
        job, _ = submit(session, settings, job_in, caller)
        job_id: uuid.UUID = job.id
    return job_id


def _finished(settings: Settings, job_id: uuid.UUID) -> tuple[dict[str, Any], Iterator[bytes]]:
    """The job's view and, when it succeeded, its audio opened (first chunk read) here."""
    with session_scope(settings.database_url) as session:
        job = q.get_job(session, job_id)
        view = job_view(job, settings.public_base_url)
        key = job.result_key
    if view["status"] != JobStatus.succeeded or not key:
        return view, iter(())
    gone = AudioGone(f"the audio of job {job_id} is no longer in storage; call again")
    try:
        chunks = get_storage(settings).iter_bytes(key)
        first = next(chunks, b"")
    except FileNotFoundError:
        raise gone from None
    except Exception as exc:
        raise StorageError(
            f"the audio of job {job_id} could not be read from storage", retry_after=5
        ) from exc
    return view, itertools.chain([first], chunks)


@router.post(
    "/speech",
    responses={
        200: {"content": {t: {} for t in CONTENT_TYPES.values()}, "description": "The audio"},
        202: {"description": "Still running: poll `links.self`"},
        **responses(
            UnsupportedFormat,
            UnknownEngine,
            UnknownVoice,
            VoiceNotReady,
            TextEmpty,
            TextTooLong,
            ValidationFailed,
            JobFailed,
            QuotaExceeded,
            TooManyWaiting,
            AudioGone,
            StorageError,
        ),
    },
    response_class=Response,
)
async def create_speech(
    body: SpeechCreate,
    request: Request,
    settings: SettingsDep,
    waiter: WaiterDep,
    caller: CallerDep,
) -> Response:
    """OpenAI-compatible speech: submits a job, waits for it, answers with its audio."""
    async with waiter.slot():
        job_in, instructed = await run_in_threadpool(_job_in, body, settings, caller)
        job_id = await run_in_threadpool(_submit, settings, job_in, caller)
        await waiter.wait(job_id, settings.predict_timeout_seconds, request.is_disconnected)
    view, chunks = await run_in_threadpool(_finished, settings, job_id)
    status = JobStatus(view["status"])
    if not status.is_terminal():
        return JSONResponse(view, status_code=202, headers={"Location": view["links"]["self"]})
    if status != JobStatus.succeeded:
        err = view["error"] or {"code": status.value, "message": f"the job was {status.value}"}
        raise JobFailed(f"job {job_id} {status.value}: {err['code']}: {err['message']}")
    result = view["result"]
    headers = {"X-Voicefarm-Job-Id": view["id"], "Content-Length": str(result["bytes"])}
    if body.instructions and not instructed:
        headers["X-Voicefarm-Instructions"] = "ignored"  # the engine has no instruct mode
    if result["format"] == "pcm":
        depth = result["bit_depth"] or DEFAULT_BIT_DEPTH
        headers["X-Audio-Sample-Rate"] = str(result["sample_rate"])
        headers["X-Audio-Bit-Depth"] = str(depth)
        headers["X-Audio-Encoding"] = f"s{depth}le"
    return StreamingResponse(chunks, media_type=content_type(result["format"]), headers=headers)

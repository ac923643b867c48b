"""`POST /api/predict`: the Gradio-style call of the CosyVoice WebUI, for existing scripts.

    {"data": ["自然语言控制", null, "她[h][ào]干净", "用兴奋的语气说这句话"]}
    -> {"data": ["<audio url>"], "job_id": "...", "duration": 1.9}

data = [mode, prompt, text, instruction or transcript] (api/predict_input.py: the prompt is a
voice id, or the recording inline, from which a voice is made first; a recording the voice
checks refuse is a 422 `voice_unusable`). It submits an ordinary job and waits for it
(up to VOICEFARM_PREDICT_TIMEOUT_SECONDS); past that it answers 202 with the job to poll. The
wait holds no thread and no database connection (api/waiter.py), ends when the client goes
away (the job itself carries on), and at most VOICEFARM_PREDICT_MAX_WAITING calls wait at once
per API process: past that, 429 with Retry-After. New clients should use /v1/jobs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from api.auth import Caller
from api.deps import CallerDep, SettingsDep, WaiterDep
from api.errors import responses, validation_error
from api.predict_input import PredictCall, read_call
from api.schemas import JobCreate
from api.submit import submit
from api.voice_input import voice_fields
from api.voice_submit import submit_voice
from core.engines import EngineSpec, catalog
from core.enums import JobMode, JobStatus, VoiceStatus
from core.errors import (
    IdempotencyConflict,
    MarkupInvalid,
    RequestTooLarge,
    ServiceUnavailable,
    TextEmpty,
    TextTooLong,
    TooManyWaiting,
    UnsupportedMode,
    ValidationFailed,
    VoiceNotReady,
    VoiceRequired,
    VoiceUnusable,
)
from core.settings import Settings
from core.storage import get_storage
from db import jobs as q
from db.engines import registered_specs
from db.models import Voice
from db.session import session_scope
from db.views import job_view

router = APIRouter(tags=["compat"])
VOICE_POLL_SECONDS = 0.25


class PredictIn(BaseModel):
    model_config = ConfigDict(extra="allow")  # Gradio clients also send fn_index, session_hash

    data: list[Any] = Field(
        ...,
        min_length=3,
        description="[mode, prompt (null, a voice id, or a base64 data URL of the recording), "
        "text, instruction (自然语言控制) or the recording's transcript (inline recording)]",
    )


def _engine_for(mode: JobMode, engines: dict[str, EngineSpec], settings: Settings) -> str:
    default = engines.get(settings.default_engine)
    if default is not None and mode in default.modes:
        return settings.default_engine
    for name, spec in engines.items():
        if mode in spec.modes:
            return name
    raise UnsupportedMode(
        f"no enabled engine has mode {mode.value!r} (enable cosyvoice: VOICEFARM_ENGINES)",
        field="data",
    )


@router.post("/api/predict/", include_in_schema=False)
@router.post(
    "/api/predict",
    responses={
        202: {"description": "Still running: poll `links.self`"},
        **responses(
            UnsupportedMode,
            ValidationFailed,
            TextEmpty,
            TextTooLong,
            MarkupInvalid,
            IdempotencyConflict,
            TooManyWaiting,
            ServiceUnavailable,
            RequestTooLarge,
            VoiceRequired,
            VoiceNotReady,
            VoiceUnusable,
        ),
    },
)
async def predict(
    body: PredictIn, request: Request, settings: SettingsDep, waiter: WaiterDep, caller: CallerDep
) -> JSONResponse:
    """Gradio-style synchronous call: submits a job and waits for its audio URL."""
    call = read_call(body.data, settings.max_voice_upload_bytes)
    async with waiter.slot():
        deadline = time.monotonic() + settings.predict_timeout_seconds
        if call.upload is not None:
            voice_id = await run_in_threadpool(_new_voice, settings, call, caller)
            if not await _voice_ready(settings, voice_id, deadline, request):
                link = f"{settings.public_base_url.rstrip('/')}/v1/voices/{voice_id}"
                return JSONResponse(
                    {
                        "data": [None],
                        "voice_id": str(voice_id),
                        "is_generating": True,
                        "links": {"voice": link},
                    },
                    status_code=202,
                )
            call = dataclasses.replace(call, voice_id=voice_id, upload=None)
        job_id = await run_in_threadpool(_submit, settings, call, caller)
        left = max(0.0, deadline - time.monotonic())
        await waiter.wait(job_id, left, request.is_disconnected)
    view = await run_in_threadpool(_view, settings, job_id)
    if view["status"] == JobStatus.succeeded:
        result = view["result"]
        return JSONResponse(
            {
                "data": [result["url"]],
                "job_id": view["id"],
                "duration": result["duration_s"],
                "is_generating": False,
            }
        )
    if not JobStatus(view["status"]).is_terminal():
        return JSONResponse(
            {"data": [None], "job_id": view["id"], "is_generating": True, "links": view["links"]},
            status_code=202,
        )
    # A failed job is data, not an HTTP error.
    return JSONResponse(
        {
            "data": [None],
            "job_id": view["id"],
            "is_generating": False,
            "error": view["error"] or {"code": view["status"], "message": view["status"]},
        }
    )


def _new_voice(settings: Settings, call: PredictCall, caller: Caller) -> uuid.UUID:
    fields = voice_fields("predict prompt", call.transcript, None, settings)
    with session_scope(settings.database_url) as session:
        storage = get_storage(settings)
        voice = submit_voice(session, storage, fields, call.upload or b"", caller.tenant_id)
        voice_id: uuid.UUID = voice.id
    return voice_id


async def _voice_ready(
    settings: Settings, voice_id: uuid.UUID, deadline: float, request: Request
) -> bool:
    """Wait (without a thread) until the new voice is ready; its failure is the client's 422."""
    while time.monotonic() < deadline and not await request.is_disconnected():
        voice = await run_in_threadpool(_voice_state, settings, voice_id)
        if voice[0] == VoiceStatus.ready:
            return True
        if voice[0] == VoiceStatus.failed:
            raise VoiceUnusable(
                f"the prompt recording was refused ({voice[1]}): {voice[2]}", field="data"
            )
        await asyncio.sleep(VOICE_POLL_SECONDS)
    return False


def _voice_state(settings: Settings, voice_id: uuid.UUID) -> tuple[str, str | None, str | None]:
    with session_scope(settings.database_url) as session:
        voice = session.get(Voice, voice_id)
        if voice is None:
            return (VoiceStatus.failed.value, "voice_gone", "the voice was deleted")
        return (voice.status, voice.error_code, voice.error_message)


def _submit(settings: Settings, call: PredictCall, caller: Caller) -> uuid.UUID:
    with session_scope(settings.database_url) as session:
        engines = catalog(settings, registered_specs(session))
        try:
            job_in = JobCreate(
                text=call.text,
                engine=_engine_for(call.mode, engines, settings),
                mode=call.mode,
                voice_id=call.voice_id,
                instruction=call.instruction,
            )
        except PydanticValidationError as exc:
            raise validation_error(exc.errors()) from None
        job, _ = submit(session, settings, job_in, caller)
        job_id: uuid.UUID = job.id
    return job_id


def _view(settings: Settings, job_id: uuid.UUID) -> dict[str, Any]:
    with session_scope(settings.database_url) as session:
        return job_view(q.get_job(session, job_id), settings.public_base_url)

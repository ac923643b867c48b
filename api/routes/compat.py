"""`POST /api/predict`: the Gradio-style call of the CosyVoice WebUI, for existing scripts.

    {"data": ["自然语言控制", null, "她[h][ào]干净", "用兴奋的语气说这句话"]}
    -> {"data": ["<audio url>"], "job_id": "...", "duration": 1.9}

data = [mode, prompt audio, text, instruction]. It submits an ordinary job and waits for it
(up to VOICEFARM_PREDICT_TIMEOUT_SECONDS); past that it answers 202 with the job to poll. The
wait holds no thread and no database connection (api/waiter.py), ends when the client goes
away (the job itself carries on), and at most VOICEFARM_PREDICT_MAX_WAITING calls wait at once
per API process: past that, 429 with Retry-After. New clients should use /v1/jobs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from api.deps import SettingsDep, WaiterDep
from api.errors import responses, validation_error
from api.schemas import JobCreate
from api.submit import submit
from core.engines import EngineSpec, catalog
from core.enums import JobMode, JobStatus
from core.errors import (
    IdempotencyConflict,
    MarkupInvalid,
    ServiceUnavailable,
    TextEmpty,
    TextTooLong,
    TooManyWaiting,
    UnsupportedMode,
    ValidationFailed,
)
from core.settings import Settings
from db import jobs as q
from db.engines import registered_specs
from db.session import session_scope
from db.views import job_view

router = APIRouter(tags=["compat"])

# The WebUI's mode names (and plain English ones) -> job modes.
MODES = {
    "预训练音色": JobMode.preset,
    "preset": JobMode.preset,
    "3s极速复刻": JobMode.clone,
    "clone": JobMode.clone,
    "跨语种复刻": JobMode.cross_lingual,
    "cross_lingual": JobMode.cross_lingual,
    "自然语言控制": JobMode.instruct,
    "instruct": JobMode.instruct,
}


class PredictIn(BaseModel):
    model_config = ConfigDict(extra="allow")  # Gradio clients also send fn_index, session_hash

    data: list[Any] = Field(
        ...,
        min_length=3,
        description="[mode, prompt voice (a voice id) or null, text, instruction]",
    )


@dataclass(frozen=True)
class PredictCall:
    mode: JobMode
    text: str
    voice_id: uuid.UUID | None
    instruction: str | None


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
        ),
    },
)
async def predict(
    body: PredictIn, request: Request, settings: SettingsDep, waiter: WaiterDep
) -> JSONResponse:
    """Gradio-style synchronous call: submits a job and waits for its audio URL."""
    call = _job_request(body)
    async with waiter.slot():
        job_id = await run_in_threadpool(_submit, settings, call)
        await waiter.wait(job_id, settings.predict_timeout_seconds, request.is_disconnected)
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


def _job_request(body: PredictIn) -> PredictCall:
    name, prompt, text = body.data[0], body.data[1], body.data[2]
    instruction = body.data[3] if len(body.data) > 3 else None
    if not isinstance(name, str) or not isinstance(text, str):
        raise ValidationFailed("data must be [mode, prompt voice, text, instruction]", field="data")
    mode = MODES.get(name.strip())
    if mode is None:
        raise UnsupportedMode(f"mode must be one of {sorted(MODES)}", field="data")
    if instruction is not None and not isinstance(instruction, str):
        raise ValidationFailed("the instruction (data[3]) must be text", field="data")
    voice_id = None
    if prompt is not None:
        # A voice uploaded with POST /v1/voices (3-15 s and its transcript), named by its id.
        try:
            voice_id = uuid.UUID(str(prompt)) if isinstance(prompt, str) else None
        except ValueError:
            voice_id = None
        if voice_id is None:
            raise ValidationFailed(
                "the prompt (data[1]) must be a voice id from POST /v1/voices, or null",
                field="data",
            )
    return PredictCall(
        mode, text, voice_id, (instruction or None) if mode == JobMode.instruct else None
    )


def _submit(settings: Settings, call: PredictCall) -> uuid.UUID:
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
        job, _ = submit(session, settings, job_in)
        job_id: uuid.UUID = job.id
    return job_id


def _view(settings: Settings, job_id: uuid.UUID) -> dict[str, Any]:
    with session_scope(settings.database_url) as session:
        return job_view(q.get_job(session, job_id), settings.public_base_url)

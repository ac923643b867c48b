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
from core.engines import catalog
from core.enums import JobStatus
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
from db.session import session_scope
from db.views import job_view

router = APIRouter(tags=["compat"])

CLONE_MODES = ("3s极速复刻", "跨语种复刻", "clone", "cross_lingual")
INSTRUCT_MODES = ("自然语言控制", "instruct")


class PredictIn(BaseModel):
    model_config = ConfigDict(extra="allow")  # Gradio clients also send fn_index, session_hash

    data: list[Any] = Field(
        ..., min_length=3, description="[mode, prompt audio, text, instruction]"
    )


def _engine_for(mode: str, settings: Settings) -> str:
    if mode not in INSTRUCT_MODES:
        return settings.default_engine
    engines = catalog(settings)
    if "instruct" in engines[settings.default_engine].modes:
        return settings.default_engine
    for name, spec in engines.items():
        if "instruct" in spec.modes:
            return name
    raise UnsupportedMode(
        "no enabled engine takes natural-language instructions (enable cosyvoice)", field="data"
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
    job_in = _job_request(body, settings)
    async with waiter.slot():
        job_id = await run_in_threadpool(_submit, settings, job_in)
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


def _job_request(body: PredictIn, settings: Settings) -> JobCreate:
    mode, prompt_audio, text = body.data[0], body.data[1], body.data[2]
    instruction = body.data[3] if len(body.data) > 3 else None
    if not isinstance(mode, str) or not isinstance(text, str):
        raise ValidationFailed("data must be [mode, prompt audio, text, instruction]", field="data")
    if prompt_audio is not None or mode in CLONE_MODES:
        raise UnsupportedMode(
            "voice cloning from reference audio is not available through this API yet",
            field="data",
        )
    if instruction is not None and not isinstance(instruction, str):
        raise ValidationFailed("the instruction (data[3]) must be text", field="data")
    try:
        return JobCreate(
            text=text,
            engine=_engine_for(mode, settings),
            instruction=(instruction or None) if mode in INSTRUCT_MODES else None,
        )
    except PydanticValidationError as exc:
        raise validation_error(exc.errors()) from None


def _submit(settings: Settings, job_in: JobCreate) -> uuid.UUID:
    with session_scope(settings.database_url) as session:
        job, _ = submit(session, settings, job_in)
        job_id: uuid.UUID = job.id
    return job_id


def _view(settings: Settings, job_id: uuid.UUID) -> dict[str, Any]:
    with session_scope(settings.database_url) as session:
        return job_view(q.get_job(session, job_id), settings.public_base_url)

"""`POST /api/predict`: the Gradio-style call of the CosyVoice WebUI, for existing scripts.

    {"data": ["自然语言控制", null, "她[h][ào]干净", "用兴奋的语气说这句话"]}
    -> {"data": ["<audio url>"], "job_id": "...", "duration": 1.9}

data = [mode, prompt audio, text, instruction]. It submits an ordinary job and waits for it
(up to VOICEFARM_PREDICT_TIMEOUT_SECONDS); past that it answers 202 with the job to poll. New
clients should use /v1/jobs, which never holds a connection open.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from api.deps import SessionDep, SettingsDep
from api.errors import responses
from api.schemas import JobCreate
from api.submit import submit
from core.engines import catalog
from core.enums import JobStatus
from core.errors import UnsupportedMode, ValidationFailed
from core.settings import Settings
from db import jobs as q
from db.models import Job
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
        **responses(UnsupportedMode, ValidationFailed),
    },
)
def predict(body: PredictIn, session: SessionDep, settings: SettingsDep) -> JSONResponse:
    """Gradio-style synchronous call: submits a job and waits for its audio URL."""
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
    job_in = JobCreate(
        text=text,
        engine=_engine_for(mode, settings),
        instruction=(instruction or None) if mode in INSTRUCT_MODES else None,
    )
    job, _ = submit(session, settings, job_in)
    job_id: uuid.UUID = job.id
    deadline = time.monotonic() + settings.predict_timeout_seconds
    while time.monotonic() < deadline:
        status = session.scalar(select(Job.status).where(Job.id == job_id))
        session.rollback()  # hold no transaction while waiting
        if status is None or JobStatus(status).is_terminal():
            break
        time.sleep(0.2)
    job = q.get_job(session, job_id)
    view = job_view(job, settings.public_base_url)
    if job.status == JobStatus.succeeded:
        result = view["result"]
        return JSONResponse(
            {
                "data": [result["url"]],
                "job_id": view["id"],
                "duration": result["duration_s"],
                "is_generating": False,
            }
        )
    if not JobStatus(job.status).is_terminal():
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
            "error": view["error"] or {"code": job.status, "message": job.status},
        }
    )

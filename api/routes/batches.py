"""/v1/batches: submit up to 10,000 jobs at once, follow them, cancel, manifest, joined audio."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, StreamingResponse

from api.batch_submit import submit_batch
from api.deps import CallerDep, SessionDep, SettingsDep, StorageDep, json_response
from api.errors import responses
from api.routes.jobs import _open
from api.schemas_batches import BatchItemOut, BatchItems, BatchOut
from core.errors import (
    AudioNotReady,
    BatchAudioNotRequested,
    BatchInvalid,
    BatchNotCancelable,
    BatchNotFound,
    IdempotencyConflict,
    QuotaExceeded,
    RequestTooLarge,
    TooManyAuthFailures,
    Unauthorized,
    ValidationFailed,
    WebhookUrlForbidden,
    WebhookUrlInvalid,
)
from db import batches as bq

router = APIRouter(
    prefix="/v1/batches", tags=["batches"], responses=responses(Unauthorized, TooManyAuthFailures)
)
_ITEM = {"$ref": "#/components/schemas/JobCreate"}


@router.post(
    "",
    status_code=202,
    response_model=BatchOut,
    responses=responses(
        BatchInvalid,
        IdempotencyConflict,
        ValidationFailed,
        WebhookUrlInvalid,
        WebhookUrlForbidden,
        RequestTooLarge,
        QuotaExceeded,
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["items"],
                        "properties": {
                            "items": {"type": "array", "items": _ITEM, "maxItems": 10000},
                            "webhook_url": {"type": "string"},
                            "concatenate": {"type": "boolean", "default": False},
                            "metadata": {"type": "object"},
                        },
                    }
                },
            },
        }
    },
)
async def create_batch(
    request: Request,
    settings: SettingsDep,
    caller: CallerDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Response:
    """Submit a batch: JSON `{items, webhook_url?, concatenate?}`, or JSONL (one item a line,
    `Content-Type: application/x-ndjson`, options as query parameters `webhook_url` and
    `concatenate`); all items are admitted or none (422 `batch_invalid` lists them by index).
    With an `Idempotency-Key`, sending the same request again answers the same batch
    (`Idempotent-Replayed: true`) and writes nothing; the key with another request is a 409."""
    raw = await request.body()
    view, replayed = await run_in_threadpool(
        submit_batch,
        settings,
        caller,
        raw,
        request.headers.get("content-type", "application/json"),
        dict(request.query_params),
        idempotency_key,
    )
    headers = {"Location": view["links"]["self"]}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(
        json.dumps(view), status_code=202, media_type="application/json", headers=headers
    )


@router.get("", response_model=list[BatchOut])
def list_batches(
    session: SessionDep,
    settings: SettingsDep,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Response:
    """The newest batches, with counts by status."""
    rows = bq.list_batches(session, caller.sees, limit, None)
    out = [_view(session, b, settings.public_base_url) for b in rows]
    return json_response(out)


def _view(session: Any, batch: Any, base_url: str) -> BatchOut:
    return BatchOut.model_validate(
        bq.batch_view(batch, bq.status_counts(session, batch.id), base_url)
    )


@router.get("/{batch_id}", response_model=BatchOut, responses=responses(BatchNotFound))
def get_batch(
    batch_id: uuid.UUID, session: SessionDep, settings: SettingsDep, caller: CallerDep
) -> Response:
    """A batch: counts by status, cancel state, concatenated audio state."""
    batch = bq.get_batch(session, batch_id, caller.sees)
    return json_response(_view(session, batch, settings.public_base_url))


@router.get("/{batch_id}/items", response_model=BatchItems, responses=responses(BatchNotFound))
def get_items(
    batch_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    caller: CallerDep,
    cursor: Annotated[int, Query(ge=-1, description="`next_cursor` of the last page")] = -1,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """One page of items in input order: index, job id, status, error, audio URL."""
    bq.get_batch(session, batch_id, caller.sees)
    rows = bq.items_page(session, batch_id, cursor, limit)
    items = [BatchItemOut.model_validate(item_view(r, settings.public_base_url)) for r in rows]
    next_cursor = rows[-1].batch_index if len(rows) == limit else None
    return json_response(BatchItems(items=items, next_cursor=next_cursor))


def item_view(r: Any, base_url: str) -> dict[str, Any]:
    url = f"{base_url.rstrip('/')}/v1/jobs/{r.id}/audio" if r.status == "succeeded" else None
    error = {"code": r.error_code, "message": r.error_message or ""} if r.error_code else None
    return {
        "index": r.batch_index,
        "job_id": str(r.id),
        "status": r.status,
        "audio_url": url,
        "error": error,
        "duration_s": r.result_duration_s,
    }


@router.post(
    "/{batch_id}/cancel",
    response_model=BatchOut,
    responses=responses(BatchNotFound, BatchNotCancelable),
)
def cancel_batch(
    batch_id: uuid.UUID, session: SessionDep, settings: SettingsDep, caller: CallerDep
) -> Response:
    """Cancel every queued item at once; running items stop at their next segment."""
    batch = bq.get_batch(session, batch_id, caller.sees)
    bq.cancel_batch(session, batch, settings.public_base_url)
    batch = bq.get_batch(session, batch_id, caller.sees)
    return json_response(_view(session, batch, settings.public_base_url))


@router.get(
    "/{batch_id}/manifest",
    responses={
        200: {"content": {"application/x-ndjson": {}}, "description": "one item a line"},
        **responses(BatchNotFound),
    },
    response_model=None,
)
def get_manifest(
    batch_id: uuid.UUID, session: SessionDep, settings: SettingsDep, caller: CallerDep
) -> StreamingResponse:
    """JSONL, one line per item in order: index, job_id, status, audio_url, error, duration_s."""
    bq.get_batch(session, batch_id, caller.sees)
    base = settings.public_base_url

    def lines() -> Iterator[bytes]:
        for r in bq.iter_items(settings.database_url, batch_id):
            yield (json.dumps(item_view(r, base)) + "\n").encode()

    return StreamingResponse(
        lines(),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{batch_id}.jsonl"'},
    )


@router.get(
    "/{batch_id}/audio",
    responses={
        200: {"content": {"audio/wav": {}}, "description": "every item's audio, in order"},
        **responses(BatchNotFound, BatchAudioNotRequested, AudioNotReady),
    },
    response_model=None,
)
def get_audio(
    batch_id: uuid.UUID,
    session: SessionDep,
    storage: StorageDep,
    caller: CallerDep,
) -> Response:
    """The single WAV of a `concatenate: true` batch, once every item succeeded."""
    batch = bq.get_batch(session, batch_id, caller.sees)
    if not batch.concatenate:
        raise BatchAudioNotRequested(f"batch {batch_id} was submitted without concatenate")
    if batch.audio_status != "ready" or not batch.audio_key:
        detail = f": {batch.audio_error}" if batch.audio_error else ""
        raise AudioNotReady(f"the audio of batch {batch_id} is {batch.audio_status}{detail}")
    url, chunks = _open(storage, batch.audio_key, batch_id)
    if url is not None:
        return RedirectResponse(url, status_code=307)
    return StreamingResponse(chunks, media_type="audio/wav")

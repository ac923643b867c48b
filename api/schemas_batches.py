"""The shapes of /v1/batches answers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class BatchAudio(BaseModel):
    status: str | None
    error: str | None
    duration_s: float | None
    url: str | None


class BatchLinks(BaseModel):
    self: str
    items: str
    manifest: str
    cancel: str


class BatchOut(BaseModel):
    id: str
    status: str
    items: int
    total_chars: int
    counts: dict[str, int]
    concatenate: bool
    metadata: dict[str, Any]
    created_at: datetime
    canceled_at: datetime | None
    completed_at: datetime | None
    audio: BatchAudio | None
    links: BatchLinks


class ItemError(BaseModel):
    code: str
    message: str


class BatchItemOut(BaseModel):
    index: int
    job_id: str
    status: str
    audio_url: str | None
    error: ItemError | None
    duration_s: float | None


class BatchItems(BaseModel):
    items: list[BatchItemOut]
    next_cursor: int | None

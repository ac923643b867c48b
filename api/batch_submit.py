"""Submitting a batch: parse (JSON or JSONL), admit every item, insert all in one transaction.

All or nothing: if any item fails admission the whole batch is refused with a 422
`batch_invalid` listing the first failures by index, and nothing is written. A client fixes the
listed lines and sends the same file again; item indexes always equal input line numbers.

Runs entirely in one threadpool thread (the route awaits it): parsing and validating 10,000
items never holds the event loop, so /healthz and other requests are served meanwhile.
"""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import quotas as api_quotas
from api.admission import admit
from api.auth import Caller
from api.errors import validation_error
from api.schemas import JobCreate
from core.enums import JobStatus, Priority
from core.errors import (
    BatchInvalid,
    IdempotencyConflict,
    QuotaExceeded,
    ValidationFailed,
    VoicefarmError,
)
from core.settings import Settings
from core.webhooks import check_webhook_url
from db import batches as bq
from db import quotas as q
from db.jobs import JOB_COLUMNS
from db.models import Batch
from db.session import after_commit, session_scope
from tasks.dispatch import dispatch

JSONL_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines")
# How many item failures a 422 lists (the count of all is in the message).
MAX_REPORTED = 50
_COLUMNS = [key for key, _ in JOB_COLUMNS]


class BatchOptions(BaseModel):
    webhook_url: str | None = None
    concatenate: bool = False
    metadata: dict[str, Any] | None = None


def parse(raw: bytes, content_type: str, query: dict[str, str]) -> tuple[BatchOptions, list[Any]]:
    """(options, raw items). JSON: {items, webhook_url?, concatenate?, metadata?}; JSONL: one
    item per line, options from the query string."""
    try:
        if content_type.split(";")[0].strip().lower() in JSONL_TYPES:
            items = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
            opts: dict[str, Any] = {
                "webhook_url": query.get("webhook_url"),
                "concatenate": query.get("concatenate", "false").lower() in ("1", "true", "yes"),
            }
        else:
            body = json.loads(raw)
            if not isinstance(body, dict) or not isinstance(body.get("items"), list):
                raise ValidationFailed("body must be an object with an `items` list", field="items")
            items = body.pop("items")
            opts = body
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationFailed(f"request body is not valid JSON or JSONL: {exc}") from exc
    try:
        return BatchOptions.model_validate(opts), items
    except ValidationError as exc:
        raise validation_error(exc.errors()) from exc


def request_hash(raw: bytes, content_type: str, query: dict[str, str]) -> str:
    """What an Idempotency-Key is bound to: the body byte for byte, its media type and (JSONL's
    options) the query string. A retry sends the same bytes; anything else is another request."""
    media = content_type.split(";")[0].strip().lower()
    options = json.dumps(sorted(query.items()), separators=(",", ":"))
    return hashlib.sha256(b"\0".join((media.encode(), options.encode(), raw))).hexdigest()


def submit_batch(
    settings: Settings,
    caller: Caller,
    raw: bytes,
    content_type: str,
    query: dict[str, str],
    idempotency_key: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Admit and insert the batch; returns (its view, replayed). Commits (its own session: the
    boundary). With an Idempotency-Key used before by the tenant: that batch's view as it is
    now, and nothing written; 409 if the key came with another request."""
    digest = request_hash(raw, content_type, query) if idempotency_key else None
    if idempotency_key:
        replayed = _replay(settings, caller, idempotency_key, digest)
        if replayed is not None:
            return replayed, True
    try:
        return _submit(settings, caller, raw, content_type, query, idempotency_key, digest), False
    except IntegrityError:
        # A concurrent request with the same key won the insert; this one wrote nothing.
        replayed = _replay(settings, caller, idempotency_key or "", digest)
        if replayed is None:
            raise
        return replayed, True


def _replay(
    settings: Settings, caller: Caller, key: str, digest: str | None
) -> dict[str, Any] | None:
    with session_scope(settings.database_url) as s:
        batch = bq.find_by_idempotency_key(s, caller.tenant_id, key)
        if batch is None:
            return None
        if batch.request_hash != digest:
            raise IdempotencyConflict(
                "this Idempotency-Key was already used with a different batch"
            )
        return bq.batch_view(batch, bq.status_counts(s, batch.id), settings.public_base_url)


def _submit(
    settings: Settings,
    caller: Caller,
    raw: bytes,
    content_type: str,
    query: dict[str, str],
    idempotency_key: str | None,
    digest: str | None,
) -> dict[str, Any]:
    options, items = parse(raw, content_type, query)
    if not items:
        raise ValidationFailed("a batch needs at least one item", field="items")
    if len(items) > settings.batch_max_items:
        raise ValidationFailed(
            f"a batch takes at most {settings.batch_max_items} items; this one has {len(items)}",
            field="items",
        )
    if options.webhook_url is not None:
        check_webhook_url(options.webhook_url, allow_private=settings.webhook_allow_private)
    batch_id = uuid.uuid4()
    with session_scope(settings.database_url) as s:
        rows, errors, bad = _admit_items(s, settings, caller, items, batch_id, options)
        if bad:
            shown = "; ".join(f"item {e['index']}: {e['message']}" for e in errors[:3])
            raise BatchInvalid(f"{bad} of {len(items)} items were refused: {shown}", errors)
        total = sum(len(r["text"]) for r in rows)
        check_quota(s, settings, caller.tenant_id, len(rows), total)
        batch = Batch(
            id=batch_id,
            tenant_id=caller.tenant_id,
            items=len(rows),
            total_chars=total,
            webhook_url=options.webhook_url,
            concatenate=options.concatenate,
            metadata_=options.metadata or {},
            idempotency_key=idempotency_key,
            request_hash=digest,
        )
        bq.insert_batch(s, batch, rows)
        s.refresh(batch)
        counts = {st.value: 0 for st in JobStatus} | {JobStatus.queued.value: len(rows)}
        view = bq.batch_view(batch, counts, settings.public_base_url)
        # One dispatch per queue after commit: the dispatcher publishes `ahead` at a time.
        for engine, pool in {(r["engine"], r["pool"]) for r in rows}:
            after_commit(
                s,
                functools.partial(
                    dispatch, settings.database_url, engine, pool, settings.dispatch_ahead
                ),
            )
    return view


def _admit_items(
    s: Session,
    settings: Settings,
    caller: Caller,
    items: list[Any],
    batch_id: uuid.UUID,
    options: BatchOptions,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    rows: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    bad = 0
    for index, raw_item in enumerate(items):
        try:
            if not isinstance(raw_item, dict):
                raise ValidationFailed("an item must be a JSON object")
            try:
                body = JobCreate.model_validate({**raw_item, "priority": Priority.batch.value})
            except ValidationError as exc:
                raise validation_error(exc.errors()) from exc
            if body.webhook_url is not None:
                raise ValidationFailed(
                    "items send no webhooks of their own; set the batch's webhook_url "
                    "(batch.completed)",
                    field="webhook_url",
                )
            if options.concatenate and body.format != "wav":
                raise ValidationFailed("concatenate: true takes wav items only", field="format")
            job = admit(s, body, settings, caller.tenant_id)
        except VoicefarmError as exc:
            bad += 1
            if len(errors) < MAX_REPORTED:
                errors.append(
                    {"index": index, "code": exc.code, "message": exc.message, "field": exc.field}
                )
            continue
        if bad:
            continue  # refused anyway: only look for more failures
        row = {k: getattr(job, k) for k in _COLUMNS}
        row.update(
            id=uuid.uuid4(),
            status=JobStatus.queued.value,
            dispatched_at=None,
            batch_id=batch_id,
            batch_index=index,
            metadata_=job.metadata_ or {},
        )
        for k in ("created_at", "updated_at"):
            row.pop(k, None)
        rows.append(row)
    return rows, errors, bad


def check_quota(s: Session, settings: Settings, tenant_id: uuid.UUID, n: int, chars: int) -> None:
    """A batch counts all its items against active jobs and all its characters against the
    day's; it is one submission for jobs-per-minute (its items are not counted there)."""
    tenant = q.lock_tenant(s, tenant_id)
    active = api_quotas._limit(tenant, "max_running", settings.tenant_max_active_jobs)
    if active:
        running = q.active_jobs(s, tenant_id)
        if running + n > active:
            raise QuotaExceeded(
                f"this batch of {n} items with the tenant's {running} active jobs would pass its "
                f"limit max_active_jobs of {active}",
                retry_after=api_quotas.ACTIVE_RETRY_AFTER,
            )
    # Then the single job's checks with the batch's characters: its active-jobs check passes
    # (running + n fit above), jobs-per-minute counts the tenant's single jobs (db/quotas.py).
    api_quotas.check_job(s, settings, tenant_id, chars)

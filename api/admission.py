"""Admission: everything a job must pass before a row is written. Each failure is a 4xx."""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from typing import Any

from pydantic import BaseModel
from sqlalchemy.orm import Session

from api.modes import NeedsDatabase, choose
from api.schemas import JobCreate
from core.engines import (
    BIT_DEPTHS,
    BUILTIN,
    DEFAULT_BIT_DEPTH,
    LOUDNESS_RANGE_LUFS,
    OPUS_SAMPLE_RATES,
    EngineSpec,
    catalog,
)
from core.errors import (
    MarkupInvalid,
    TextTooLong,
    UnknownEngine,
    UnknownVoice,
    UnsupportedFormat,
    ValidationFailed,
    VoicefarmError,
)
from core.settings import Settings
from core.text import markup_kinds, normalize
from db.engines import registered_specs
from db.models import DEFAULT_TENANT_ID, Job
from db.pools import pool_for

SAMPLE_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)


def _session(session: Session | None) -> Session:
    if session is None:
        raise NeedsDatabase
    return session


def request_hash(body: JobCreate) -> str:
    raw = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()


def _bad_value(value: Any, path: str) -> tuple[str, str] | None:
    """(field path, problem) for the first value PostgreSQL could not store: a string with a
    lone UTF-16 surrogate (JSON allows `"\\ud800"`, UTF-8 does not) or a number that is not
    finite (`NaN`, `Infinity`, `1e999`)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path, "contains a lone surrogate (invalid Unicode)"
    elif isinstance(value, float) and not math.isfinite(value):
        return path, "must be a finite number"
    elif isinstance(value, dict):
        for key, item in value.items():
            found = _bad_value(key, path) or _bad_value(item, f"{path}.{key}")
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _bad_value(item, f"{path}[{i}]")
            if found:
                return found
    return None


def check_storable(body: BaseModel) -> None:
    """Refuse with a 422 any field PostgreSQL would refuse with an error (a 500 otherwise)."""
    for name in type(body).model_fields:
        found = _bad_value(getattr(body, name), name)
        if found:
            field, problem = found
            raise ValidationFailed(f"{field} {problem}", field=field.split(".")[0])


def check_markup(text: str, spec: EngineSpec) -> None:
    """422 `markup_invalid` for bad markup, or for a kind (pinyin, ARPAbet, tags) the engine
    cannot honour (Piper: ARPAbet only)."""
    unsupported = markup_kinds(text) - spec.markup
    if unsupported:
        raise MarkupInvalid(
            f"engine {spec.name!r} does not understand {', '.join(sorted(unsupported))} markup; "
            f"it takes {', '.join(sorted(spec.markup)) or 'none'}",
            field="text",
        )


def check_output(body: JobCreate) -> int | None:
    """422 for a bit depth the format does not take, an Opus sample rate Opus cannot encode, or a
    loudness target out of range. Returns the bit depth to record (None for lossy formats)."""
    depths = BIT_DEPTHS.get(body.format)
    if body.bit_depth is not None and (depths is None or body.bit_depth not in depths):
        offered = (
            f"choose one of {list(depths)}"
            if depths
            else f"only {', '.join(sorted(BIT_DEPTHS))} take one"
        )
        raise UnsupportedFormat(
            f"bit_depth {body.bit_depth} is not offered for {body.format}; {offered}",
            field="bit_depth",
        )
    if (
        body.format == "opus"
        and body.sample_rate is not None
        and body.sample_rate not in OPUS_SAMPLE_RATES
    ):
        raise UnsupportedFormat(
            f"opus cannot encode at {body.sample_rate} Hz; choose one of "
            f"{[r for r in OPUS_SAMPLE_RATES if r in SAMPLE_RATES]} or leave sample_rate out",
            field="sample_rate",
        )
    lo, hi = LOUDNESS_RANGE_LUFS
    if body.loudness is not None and not lo <= body.loudness <= hi:
        raise ValidationFailed(f"loudness must be between {lo:g} and {hi:g} LUFS", field="loudness")
    if depths is None:
        return None
    return body.bit_depth or DEFAULT_BIT_DEPTH


# Registered engine specs, per process, for a moment: a request never waits on a stale one
# (below), and a worker registers its spec once, when it starts.
SPECS_TTL_SECONDS = 2.0
_specs: dict[str, tuple[float, dict[str, EngineSpec]]] = {}
# Catalogs built, by the settings and the registered specs they were built from (the same
# objects give the same engines): catalog() parses settings and builds specs on every call, 3.5%
# of admission's CPU. A few entries: the process's settings, with and without the registered
# specs of the moment (tests make more settings; the dict is cleared past a handful).
_built: dict[tuple[int, int], tuple[object, object, dict[str, EngineSpec]]] = {}


def _engines(settings: Settings, registered: dict[str, EngineSpec] | None) -> dict[str, EngineSpec]:
    key = (id(settings), id(registered))
    hit = _built.get(key)
    # Identity checked too: an id is reused once its object is gone.
    if hit is not None and hit[0] is settings and hit[1] is registered:
        return hit[2]
    engines = catalog(settings, registered)
    if len(_built) >= 8:
        _built.clear()
    _built[key] = (settings, registered, engines)
    return engines


def _catalog(
    session: Session | None, settings: Settings, engine: str, fresh: bool
) -> dict[str, EngineSpec]:
    """The engines; a built-in one's capabilities are its class's (catalog() never lets a
    registration override them), so no query for those. Extra engines read what workers
    registered, from this process's copy unless `fresh` or older than SPECS_TTL_SECONDS."""
    engines = _engines(settings, None)
    if not fresh and engines.get(engine) is BUILTIN.get(engine, False):
        return engines
    url = settings.database_url
    now = time.monotonic()
    hit = _specs.get(url)
    if fresh or hit is None or now - hit[0] > SPECS_TTL_SECONDS:
        hit = _specs[url] = (now, registered_specs(_session(session)))
    return _engines(settings, hit[1])


def admit(
    session: Session | None,
    body: JobCreate,
    settings: Settings,
    tenant_id: uuid.UUID = DEFAULT_TENANT_ID,
) -> Job:
    """Validate `body` against settings and engine capabilities; return an unsaved Job of
    `tenant_id`, routed to its voice's or its tenant's pool (db/pools.py).

    Without a session (`None`) the same checks run with no query: the job's `pool` is left
    unset (the caller's statement reads the tenant's), and a check that needs the database
    raises NeedsDatabase, as does any refusal (a session would decide it on fresh specs)."""
    check_storable(body)
    engine_name = body.engine or settings.default_engine
    try:
        return _admit(
            session, body, settings, tenant_id, _catalog(session, settings, engine_name, False)
        )
    except VoicefarmError:
        # Refused on what may be an old copy of the specs (a worker registered since, or the
        # refusal lists every engine's modes): decide again on fresh ones, only on this path.
        return _admit(
            session, body, settings, tenant_id, _catalog(session, settings, engine_name, True)
        )


def _admit(
    session: Session | None,
    body: JobCreate,
    settings: Settings,
    tenant_id: uuid.UUID,
    engines: dict[str, EngineSpec],
) -> Job:
    text = normalize(body.text)
    if len(text) > settings.max_text_chars:
        raise TextTooLong(
            f"text has {len(text)} characters; the limit is {settings.max_text_chars}. "
            "Split it into several jobs.",
            field="text",
        )
    engine_name = body.engine or settings.default_engine
    spec = engines.get(engine_name)
    if spec is None:
        raise UnknownEngine(
            f"engine {engine_name!r} is not available; choose one of {sorted(engines)}",
            field="engine",
        )
    for field, value in (("voice", body.voice), ("webhook_url", body.webhook_url)):
        if value is not None and "\x00" in value:
            raise ValidationFailed(f"{field} contains a NUL character", field=field)
    voice = body.voice or spec.default_voice
    if body.voice is not None and spec.voices is not None and body.voice not in spec.voices:
        raise UnknownVoice(
            f"voice {body.voice!r} is not offered by engine {engine_name!r}; "
            f"choose one of {sorted(spec.voices)}",
            field="voice",
        )
    speaking = choose(session, body, spec, engines, settings, tenant_id)
    if body.format not in spec.formats:
        raise UnsupportedFormat(
            f"format {body.format!r} is not supported; choose one of {list(spec.formats)}",
            field="format",
        )
    check_markup(text, spec)
    lo, hi = spec.speed_range
    if not lo <= body.speed <= hi:
        raise ValidationFailed(f"speed must be between {lo} and {hi}", field="speed")
    if body.sample_rate is not None and body.sample_rate not in SAMPLE_RATES:
        raise ValidationFailed(
            f"sample_rate must be one of {list(SAMPLE_RATES)}", field="sample_rate"
        )
    bit_depth = check_output(body)
    # The webhook URL is checked (and its host resolved) by api/submit.py before any query.
    metadata = body.metadata or {}
    encoded = json.dumps(metadata)
    if "\\u0000" in encoded:
        raise ValidationFailed("metadata contains a NUL character", field="metadata")
    if len(encoded) > settings.max_metadata_bytes:
        raise ValidationFailed(
            f"metadata is larger than {settings.max_metadata_bytes} bytes of JSON",
            field="metadata",
        )
    job = Job()
    # Into the new instance's dict, not through 21 instrumented attributes (55 us against 6):
    # a transient job's state is its dict, and that is what every insert reads (db/jobs.py
    # create_job, db/batches.py, db/admission.py).
    job.__dict__.update(
        tenant_id=tenant_id,
        engine=engine_name,
        voice=voice,
        mode=speaking.mode.value,
        voice_id=speaking.voice_id,
        language=speaking.language,
        instruction=speaking.instruction,
        text=text,
        format=body.format,
        sample_rate=body.sample_rate,
        speed=body.speed,
        priority=body.priority.value,
        webhook_url=body.webhook_url,
        metadata_=metadata,
        max_attempts=settings.max_attempts,
        attempts=0,
        segments_done=0,
        subtitles=body.subtitles,
        bit_depth=bit_depth,
        loudness_target=body.loudness,
    )
    if session is not None:
        job.pool = pool_for(session, tenant_id, speaking.voice_id)
    return job

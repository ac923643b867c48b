"""Admission of how a job speaks: its mode, and the cloned voice that mode needs.

The rules follow the engine's declared capabilities (core.engines.EngineSpec): a mode the
engine does not declare is refused with the modes it does; a mode that speaks with a cloned
voice takes the job's `voice_id`, else the farm's default voice, else `voice_required`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.orm import Session

from api.schemas import JobCreate
from core.engines import EngineSpec
from core.enums import JobMode
from core.errors import (
    UnknownVoice,
    UnsupportedMode,
    ValidationFailed,
    VoiceNotReady,
    VoiceRequired,
)
from core.settings import Settings
from db.models import Voice


class NeedsDatabase(Exception):
    """Admission without a session (the async lane, api/submit.py `submit_plain`) reached a
    decision that reads the database: a cloned voice, a stale copy of the registered engines.
    The caller admits the job again the usual way, with a session."""


@dataclass(frozen=True)
class Speaking:
    mode: JobMode
    voice_id: uuid.UUID | None
    instruction: str | None
    language: str | None


def _default_mode(body: JobCreate, instruction: str | None) -> JobMode:
    if instruction:
        return JobMode.instruct
    if body.voice_id is not None:
        return JobMode.clone
    return JobMode.preset


def choose(
    session: Session | None,
    body: JobCreate,
    spec: EngineSpec,
    engines: dict[str, EngineSpec],
    settings: Settings,
    tenant_id: uuid.UUID,
) -> Speaking:
    instruction = body.instruction.strip() if body.instruction else None
    mode = body.mode or _default_mode(body, instruction)
    if mode not in spec.modes:
        able = sorted(n for n, s in engines.items() if mode in s.modes)
        raise UnsupportedMode(
            f"engine {spec.name!r} does not support mode {mode.value!r}; it supports "
            f"{sorted(spec.modes)}. Engines with {mode.value!r}: {able}",
            field="mode" if body.mode else ("instruction" if instruction else "voice_id"),
        )
    if instruction and mode != JobMode.instruct:
        raise ValidationFailed(
            f"instruction applies to mode 'instruct', not {mode.value!r}", field="instruction"
        )
    if mode == JobMode.instruct:
        if not instruction:
            raise ValidationFailed("mode 'instruct' needs an instruction", field="instruction")
        if len(instruction) > settings.max_instruction_chars or "\x00" in instruction:
            raise ValidationFailed(
                f"instruction must be at most {settings.max_instruction_chars} characters of text",
                field="instruction",
            )
    language = body.language
    if language and spec.languages and language.split("-")[0] not in spec.languages:
        raise ValidationFailed(
            f"engine {spec.name!r} does not speak {language!r}; it speaks {sorted(spec.languages)}",
            field="language",
        )
    voice_id = _voice_for(session, body, mode, spec, settings, tenant_id)
    return Speaking(mode, voice_id, instruction, language)


def _voice_for(
    session: Session | None,
    body: JobCreate,
    mode: JobMode,
    spec: EngineSpec,
    settings: Settings,
    tenant_id: uuid.UUID,
) -> uuid.UUID | None:
    if mode not in spec.voice_modes:
        if body.voice_id is not None:
            raise UnsupportedMode(
                f"engine {spec.name!r} does not speak with cloned voices in mode "
                f"{mode.value!r}; modes that do: {sorted(spec.voice_modes) or 'none'}",
                field="voice_id",
            )
        return None
    if body.voice_id is not None and body.voice is not None:
        raise ValidationFailed("give either voice (a preset) or voice_id, not both", field="voice")
    if body.voice is not None and mode == JobMode.preset:
        return None  # a speaker the model itself holds (the worker checks the name)
    voice_id = body.voice_id or settings.default_voice_id
    if voice_id is None:
        raise VoiceRequired(
            f"mode {mode.value!r} on engine {spec.name!r} speaks with a cloned voice: pass "
            "voice_id (upload one with POST /v1/voices), or set VOICEFARM_DEFAULT_VOICE_ID",
            field="voice_id",
        )
    if session is None:
        raise NeedsDatabase
    voice = session.get(Voice, voice_id)
    field = "voice_id" if body.voice_id else None
    # The job's tenant's voices only: another tenant's id is as unknown as a missing one. The
    # operator's VOICEFARM_DEFAULT_VOICE_ID is shared by every tenant on purpose.
    foreign = voice is not None and voice.tenant_id != tenant_id
    if foreign and voice_id != settings.default_voice_id:
        voice = None
    if voice is None:
        raise UnknownVoice(f"no voice with id {voice_id}", field=field)
    if voice.status != "ready":
        raise VoiceNotReady(
            f"voice {voice_id} is {voice.status}"
            + (f" ({voice.error_code})" if voice.error_code else "")
            + "; jobs can use it once it is ready",
            field=field,
        )
    return voice_id

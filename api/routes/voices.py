"""/v1/voices: upload a voice to clone, read, list, correct its transcript, delete it."""

from __future__ import annotations

import functools
import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Header, Response, UploadFile

from api.deps import CallerDep, PageCursor, PageLimit, SessionDep, SettingsDep, StorageDep
from api.errors import responses
from api.schemas import VoiceList, VoiceOut, VoicePatch
from api.voice_input import (
    FORM_OVERHEAD_BYTES,
    MAX_NAME_CHARS,
    check_language,
    clean_text,
    is_multipart,
    read_audio,
    voice_fields,
)
from api.voice_submit import submit_voice
from core.enums import VoiceStatus
from core.errors import (
    AudioEmpty,
    AudioMissing,
    InvalidCursor,
    QuotaExceeded,
    RequestTooLarge,
    StorageError,
    TooManyAuthFailures,
    Unauthorized,
    UnknownLanguage,
    UnsupportedMediaType,
    ValidationFailed,
    VoiceInUse,
    VoiceNotFound,
)
from core.settings import Settings
from core.storage import Storage, voice_folder, voice_prefix
from db import voices as q
from db.models import Voice
from db.session import after_commit
from db.views import iso
from tasks.send import send_forget_voice

log = logging.getLogger("voicefarm.api")
router = APIRouter(
    prefix="/v1/voices", tags=["voices"], responses=responses(Unauthorized, TooManyAuthFailures)
)

UPLOAD_DESCRIPTION = """Upload a 3-15 s recording of one speaker and exactly what it says.

Answers 202 at once with the voice in `processing`; a worker then decodes the recording
(WAV, FLAC or Ogg), mixes it to mono, trims leading and trailing silence and checks it: at least
16 kHz (`sample_rate_too_low`), not clipped (`clipped`), not silent (`too_quiet`), 3-15 s of
speech after trimming (`too_short`, `too_long`: a longer recording is refused, not cut, since
its transcript must match the audio exactly). It stores the prompt (mono WAV at the upload's
rate, at most 48 kHz), computes a speaker embedding, and moves the voice to `ready`, or to
`failed` with one of those codes (`audio_undecodable` for anything it cannot decode).
Poll `GET /v1/voices/{id}`."""


def upload_body_limit(settings: Settings) -> int:
    """The body size POST /v1/voices accepts (api.security.BodyLimit)."""
    return settings.max_voice_upload_bytes + FORM_OVERHEAD_BYTES


def voice_out(voice: Voice, base_url: str) -> VoiceOut:
    error = None
    if voice.error_code:
        error = {"code": voice.error_code, "message": voice.error_message or ""}
    return VoiceOut.model_validate(
        {
            "id": str(voice.id),
            "name": voice.name,
            "transcript": voice.transcript,
            "language": voice.language,
            "status": voice.status,
            "revision": voice.revision,
            "attempts": voice.attempts,
            "error": error,
            "sample_rate": voice.sample_rate,
            "duration_s": voice.duration_s,
            "audio_sha256": voice.audio_sha256,
            "upload_bytes": voice.upload_bytes,
            "embedding_dim": len(voice.embedding) if voice.embedding else None,
            "created_at": iso(voice.created_at),
            "updated_at": iso(voice.updated_at),
            "links": {"self": f"{base_url.rstrip('/')}/v1/voices/{voice.id}"},
        }
    )


def _json(body: VoiceOut | VoiceList, status_code: int = 200, **headers: str) -> Response:
    # Serialised in the route's own thread, as in api/routes/jobs.py (see its _json).
    return Response(
        body.model_dump_json(), status_code=status_code, media_type="application/json",
        headers=headers or None,
    )  # fmt: skip


def require_multipart(
    content_type: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    if not is_multipart(content_type):
        raise UnsupportedMediaType(
            "send the voice as multipart/form-data with the parts `audio`, `transcript`, `name` "
            "and optionally `language`"
        )


@router.post(
    "",
    status_code=202,
    response_model=VoiceOut,
    description=UPLOAD_DESCRIPTION,
    dependencies=[Depends(require_multipart)],
    responses=responses(
        AudioMissing,
        AudioEmpty,
        UnknownLanguage,
        ValidationFailed,
        UnsupportedMediaType,
        RequestTooLarge,
        StorageError,
        QuotaExceeded,
    ),
)
def create_voice(
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    caller: CallerDep,
    audio: Annotated[UploadFile, File(description="The recording: WAV, FLAC or Ogg, 3-15 s.")],
    transcript: Annotated[str, Form(description="Exactly what the recording says.")],
    name: Annotated[str, Form(description=f"1-{MAX_NAME_CHARS} characters.")],
    language: Annotated[str | None, Form(description="ISO 639-1, e.g. `zh`, `en`.")] = None,
) -> Response:
    """Upload a voice to clone; answers at once with the voice in `processing`."""
    fields = voice_fields(name, transcript, language, settings)
    data = read_audio(audio.file, settings.max_voice_upload_bytes)
    voice = submit_voice(session, storage, fields, data, caller.tenant_id)
    out = voice_out(voice, settings.public_base_url)
    return _json(out, 202, Location=out.links.self)


@router.get("", response_model=VoiceList, responses=responses(InvalidCursor))
def list_voices(
    session: SessionDep,
    settings: SettingsDep,
    caller: CallerDep,
    status: VoiceStatus | None = None,
    limit: PageLimit = 50,
    cursor: PageCursor = None,
) -> Response:
    """List voices, newest first; pass `next_cursor` back as `cursor` for the next page."""
    rows, next_cursor = q.list_voices(
        session, status=status, limit=limit, cursor=cursor, tenant_id=caller.sees
    )
    items = [voice_out(v, settings.public_base_url) for v in rows]
    return _json(VoiceList(items=items, next_cursor=next_cursor))


@router.get("/{voice_id}", response_model=VoiceOut, responses=responses(VoiceNotFound))
def get_voice(
    voice_id: uuid.UUID, session: SessionDep, settings: SettingsDep, caller: CallerDep
) -> Response:
    """Read a voice: status, error, prompt details."""
    voice = q.get_voice(session, voice_id, tenant_id=caller.sees)
    return _json(voice_out(voice, settings.public_base_url))


@router.patch(
    "/{voice_id}",
    response_model=VoiceOut,
    responses=responses(VoiceNotFound, UnknownLanguage, ValidationFailed),
)
def update_voice(
    voice_id: uuid.UUID,
    body: VoicePatch,
    session: SessionDep,
    settings: SettingsDep,
    caller: CallerDep,
) -> Response:
    """Rename a voice or correct its transcript (a new transcript bumps `revision`)."""
    given = body.model_fields_set
    name = clean_text(body.name, "name", MAX_NAME_CHARS) if body.name is not None else None
    transcript = None
    if body.transcript is not None:
        transcript = clean_text(body.transcript, "transcript", settings.max_voice_transcript_chars)
    if "name" in given and body.name is None:
        raise ValidationFailed("name cannot be removed", field="name")
    if "transcript" in given and body.transcript is None:
        raise ValidationFailed("transcript cannot be removed", field="transcript")
    voice = q.update_voice(
        session,
        voice_id,
        name=name,
        transcript=transcript,
        language=check_language(body.language),
        clear_language="language" in given and not (body.language or "").strip(),
        tenant_id=caller.sees,
    )
    return _json(voice_out(voice, settings.public_base_url))


@router.delete("/{voice_id}", status_code=204, responses=responses(VoiceNotFound, VoiceInUse))
def delete_voice(
    voice_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    caller: CallerDep,
) -> Response:
    """Delete a voice no queued or running job uses (409 `voice_in_use` otherwise); finished
    jobs keep their audio. Its stored recording and prompts go once the row is gone."""
    voice = q.delete_voice(session, voice_id, tenant_id=caller.sees)
    # Beside its upload, whichever layout it was stored in (before tenants: voices/<id>/).
    prefix = (
        voice_folder(voice.upload_key)
        if voice.upload_key
        else voice_prefix(str(voice.tenant_id), str(voice_id))
    )
    after_commit(session, functools.partial(_delete_objects, storage, prefix))
    if voice.audio_sha256:
        # Prompts prepared from the recording (storage and Redis) go too: the ops worker.
        after_commit(session, functools.partial(send_forget_voice, voice.audio_sha256))
    return Response(status_code=204)


def _delete_objects(storage: Storage, prefix: str) -> None:
    # After commit: a failure leaves orphans for maintenance.sweep_orphans, never a row that
    # points at nothing.
    for obj in list(storage.list_keys(prefix)):
        try:
            storage.delete(obj.key)
        except Exception:
            log.warning("event=api.voice_object_delete_failed key=%s", obj.key, exc_info=True)

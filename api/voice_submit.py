"""Creating a voice: the upload is stored, then the row, then `voices.prepare` is sent after the
commit. Shared by POST /v1/voices and the Gradio-style /api/predict, which takes the prompt
recording inline."""

from __future__ import annotations

import functools
import hashlib
import logging
import uuid

from sqlalchemy.orm import Session

from api import quotas
from api.voice_input import VoiceFields
from core.errors import StorageError
from core.settings import get_settings
from core.storage import Storage, voice_upload_key
from db import voices as q
from db.models import Voice
from db.session import after_commit
from tasks.send import send_prepare_voice

log = logging.getLogger("voicefarm.api")


def submit_voice(
    session: Session, storage: Storage, fields: VoiceFields, data: bytes, tenant_id: uuid.UUID
) -> Voice:
    """A new voice of `tenant_id` in `processing`. Only flushes: the caller's boundary commits."""
    voice = Voice(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        name=fields.name,
        transcript=fields.transcript,
        language=fields.language,
        revision=1,
        attempts=0,
        upload_bytes=len(data),
        upload_sha256=hashlib.sha256(data).hexdigest(),
    )
    quotas.check_voice(session, get_settings(), tenant_id)
    voice.upload_key = voice_upload_key(str(tenant_id), str(voice.id))
    # The object first, then the row: a row never points at nothing. Should the commit fail,
    # the object is an orphan that maintenance.sweep_orphans deletes.
    _put(storage, voice.upload_key, data)
    q.create_voice(session, voice)
    after_commit(session, functools.partial(send_prepare_voice, voice.id))
    return voice


def _put(storage: Storage, key: str, data: bytes) -> None:
    try:
        storage.put(key, data, "application/octet-stream")
    except Exception as exc:
        log.warning("event=api.storage_failed key=%s error=%s", key, type(exc).__name__)
        raise StorageError(
            "the recording could not be stored; retry shortly", retry_after=5
        ) from exc

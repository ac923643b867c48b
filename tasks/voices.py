"""`voices.prepare`: validate an uploaded recording, store its prompt, compute its speaker
embedding. Thin: the work is in workers/voices/prepare.py. Consumed by the ops worker."""

from __future__ import annotations

import uuid

from core.enums import TaskName
from core.settings import get_settings
from core.storage import get_storage
from tasks.app import celery_app


@celery_app.task(name=TaskName.prepare_voice.value, ignore_result=True)
def prepare(voice_id: str) -> str:
    from workers.voices.prepare import prepare_voice

    settings = get_settings()
    return prepare_voice(uuid.UUID(voice_id), settings, get_storage(settings))

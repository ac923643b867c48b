"""`voices.prepare`: validate an uploaded recording, store its prompt, compute its speaker
embedding. Thin: the work is in workers/voices/prepare.py. Consumed by the ops worker."""

from __future__ import annotations

import uuid

from core.enums import TaskName
from core.settings import get_settings
from core.storage import PROMPT_REDIS_PREFIX, PROMPTS_PREFIX, get_storage
from tasks.app import celery_app


@celery_app.task(name=TaskName.prepare_voice.value, ignore_result=True)
def prepare(voice_id: str) -> str:
    from workers.voices.prepare import prepare_voice

    settings = get_settings()
    return prepare_voice(uuid.UUID(voice_id), settings, get_storage(settings))


@celery_app.task(name=TaskName.forget_voice.value, ignore_result=True)
def forget(audio_sha256: str) -> int:
    """Delete the prompts prepared from a deleted voice's recording, in storage and in Redis: a
    voice print must not outlive its voice. Idempotent; the ops worker runs it (no torch).
    Another voice with the very same recording just prepares its prompt again."""
    import redis

    settings = get_settings()
    storage = get_storage(settings)
    marker = f"/{audio_sha256}-"
    removed = 0
    for obj in list(storage.list_keys(PROMPTS_PREFIX)):
        if marker in obj.key:
            storage.delete(obj.key)
            removed += 1
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    try:
        for key in client.scan_iter(match=f"{PROMPT_REDIS_PREFIX}*{marker}*", count=500):
            removed += int(client.delete(key))
    finally:
        client.close()
    return removed

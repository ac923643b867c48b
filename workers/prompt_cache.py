"""Prepared voice prompts, made once per (engine, model revision, audio, transcript).

Preparing a prompt (CosyVoice: speech tokens, mel features and speaker embedding of the
recording) costs a second or more on a GPU; a job should not pay it again. The bytes an engine
returns from `prepare_voice` live in Redis (bounded per entry, with a TTL) and, behind it, in
storage (`prompts/<engine>/<revision>/<audio sha256>-<transcript hash>.bin`), so a Redis flush
costs one reload from storage, never a recompute. A new transcript (PATCH /v1/voices) or new
weights make a new key; stale entries simply age out.

Storage is written before Redis, and both writes are whole-object, so a worker killed while
preparing leaves nothing half-made: the job's next attempt prepares again.
"""

from __future__ import annotations

import hashlib
import io
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.settings import Settings
from core.storage import PROMPT_REDIS_PREFIX, Storage, prompt_object_key
from workers import metrics
from workers.engines.base import Engine, PreparedVoice, VoicePrompt

log = logging.getLogger("voicefarm.prompts")


@dataclass(frozen=True)
class VoiceRef:
    """A ready voice as the job's row names it (no audio yet)."""

    id: uuid.UUID
    revision: int
    transcript: str
    language: str | None
    prompt_key: str
    audio_sha256: str
    embedding: list[float] | None


def cache_key(engine: Engine, voice: VoiceRef) -> str:
    text = hashlib.sha256(voice.transcript.encode()).hexdigest()[:16]
    return f"{engine.name}/{engine.revision}/{voice.audio_sha256}-{text}"


class PromptCache:
    def __init__(self, settings: Settings, storage: Storage, redis_client: Any) -> None:
        self.settings = settings
        self.storage = storage
        self.redis = redis_client

    def prepared(self, engine: Engine, voice: VoiceRef) -> PreparedVoice:
        key = cache_key(engine, voice)
        data = self._from_redis(key)
        result = "hit"
        if data is None:
            data = self._from_storage(key)
            result = "reload"
            if data is None:
                data = engine.prepare_voice(self._prompt(voice))
                result = "compute"
                self.storage.put(prompt_object_key(key), data, "application/octet-stream")
            self._to_redis(key, data)
        metrics.PROMPT_CACHE.labels(engine.name, result).inc()
        log.info(
            "event=prompts.%s engine=%s voice=%s bytes=%d", result, engine.name, voice.id, len(data)
        )
        return PreparedVoice(key, data, str(voice.id), voice.transcript, voice.language)

    def _redis_key(self, key: str) -> str:
        return f"{PROMPT_REDIS_PREFIX}{key}"

    def _from_redis(self, key: str) -> bytes | None:
        try:
            value = self.redis.get(self._redis_key(key))
        except Exception as exc:  # a cache: Redis down means go to storage
            log.warning("event=prompts.redis_unavailable error=%s", type(exc).__name__)
            return None
        return bytes(value) if value is not None else None

    def _to_redis(self, key: str, data: bytes) -> None:
        if len(data) > self.settings.prompt_cache_max_bytes:
            return  # too big for the shared cache: storage alone keeps it
        try:
            self.redis.set(
                self._redis_key(key), data, ex=int(self.settings.prompt_cache_ttl_seconds)
            )
        except Exception as exc:
            log.warning("event=prompts.redis_unavailable error=%s", type(exc).__name__)

    def _from_storage(self, key: str) -> bytes | None:
        path = prompt_object_key(key)
        if not self.storage.exists(path):
            return None
        return b"".join(self.storage.iter_bytes(path))

    def _prompt(self, voice: VoiceRef) -> VoicePrompt:
        import soundfile

        raw = b"".join(self.storage.iter_bytes(voice.prompt_key))
        samples, rate = soundfile.read(io.BytesIO(raw), dtype="float32", always_2d=True)
        mono = np.ascontiguousarray(samples.mean(axis=1), dtype=np.float32)
        return VoicePrompt(
            voice_id=str(voice.id),
            revision=voice.revision,
            transcript=voice.transcript,
            language=voice.language,
            audio_sha256=voice.audio_sha256,
            samples=mono,
            sample_rate=int(rate),
        )

"""The work of `voices.prepare`: claim the voice, make its prompt, embed it, record the outcome.

Safe to run twice and to be killed anywhere: the claim counts the attempt and restarts the
reconciler's clock; the prompt object is written under a fixed key before the row says `ready`;
every write after the claim is fenced by the attempt. A worker killed mid-way leaves the voice in
`processing`, and the reconciler publishes it again once VOICEFARM_VOICE_PREPARE_TIMEOUT_SECONDS
have passed (failing it with `max_attempts_exceeded` after VOICEFARM_MAX_ATTEMPTS)."""

from __future__ import annotations

import hashlib
import logging
import uuid

from core.enums import VoiceErrorCode, VoiceStatus
from core.settings import Settings
from core.storage import PROMPT_NAME, Storage, voice_folder
from db import voices as q
from db.session import session_scope
from workers.audio import encode_wav
from workers.voices.audio import Limits, VoiceRejected, make_prompt
from workers.voices.encoder import embed

log = logging.getLogger("voicefarm.voices")


def prepare_voice(voice_id: uuid.UUID, settings: Settings, storage: Storage) -> str:
    """Prepare one voice; returns what happened (`ready`, `failed`, `skipped`, `fenced`).

    Errors other than a rejected recording (storage or database down) propagate: the voice stays
    `processing` and the reconciler publishes it again."""
    with session_scope(settings.database_url) as s:
        claim = q.claim_voice(s, voice_id, settings.max_attempts)
    if claim is None:
        log.info("event=voices.prepare_skipped voice_id=%s (not processing)", voice_id)
        return "skipped"
    log.info("event=voices.prepare_started voice_id=%s attempt=%d", voice_id, claim.attempt)
    gone = "the uploaded recording is no longer in storage; upload the voice again"
    if not storage.exists(claim.upload_key):  # checked first: S3 has no FileNotFoundError
        return _fail(settings, claim, VoiceErrorCode.storage_error, gone)
    try:
        data = b"".join(storage.iter_bytes(claim.upload_key))
    except FileNotFoundError:  # deleted in between
        return _fail(settings, claim, VoiceErrorCode.storage_error, gone)
    limits = Limits(settings.voice_min_seconds, settings.voice_max_seconds)
    try:
        prompt = make_prompt(data, limits)
    except VoiceRejected as exc:
        return _fail(settings, claim, exc.code, exc.message)
    wav = encode_wav(prompt)
    key = voice_folder(claim.upload_key) + PROMPT_NAME
    storage.put(key, wav, "audio/wav")
    embedding = embed(prompt.samples, prompt.sample_rate)
    result = q.PreparedPrompt(
        prompt_key=key,
        audio_sha256=hashlib.sha256(wav).hexdigest(),
        sample_rate=prompt.sample_rate,
        duration_s=round(prompt.duration_s, 3),
        embedding=[float(x) for x in embedding],
    )
    with session_scope(settings.database_url) as s:
        done = q.finish_ready(s, claim, result)
    outcome = VoiceStatus.ready.value if done else "fenced"
    log.info(
        "event=voices.prepared voice_id=%s attempt=%d outcome=%s duration_s=%.2f rate=%d",
        voice_id,
        claim.attempt,
        outcome,
        prompt.duration_s,
        prompt.sample_rate,
    )
    return outcome


def _fail(settings: Settings, claim: q.VoiceClaim, code: VoiceErrorCode, message: str) -> str:
    with session_scope(settings.database_url) as s:
        done = q.finish_failed(s, claim, code.value, message)
    log.info(
        "event=voices.failed voice_id=%s attempt=%d code=%s", claim.voice_id, claim.attempt, code
    )
    return VoiceStatus.failed.value if done else "fenced"

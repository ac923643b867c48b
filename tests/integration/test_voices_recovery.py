"""Voices are never lost: a lost `voices.prepare` message and a worker killed mid-preparation
both end in a ready voice through the reconciler; a voice out of attempts fails with a code.
Orphaned voice objects are swept."""

from __future__ import annotations

import signal
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from core.settings import get_settings
from core.storage import get_storage
from db.models import DEFAULT_TENANT_ID
from db.session import get_engine, session_scope
from tasks.maintenance import reconcile, sweep_orphan_objects
from tests.fixtures import voice_audio as va
from tests.fixtures.processes import start_worker, wait_until
from tests.integration.test_voices import upload, vdb, voice_row, wait_voice

__all__ = ["vdb"]  # the fixture, imported for this module's tests


def _age(url: str, voice_id: str) -> None:
    """As if the voice's last dispatch or claim was long ago."""
    with session_scope(url) as s:
        s.execute(
            text("UPDATE voices SET dispatched_at = now() - interval '1 hour' WHERE id = :id"),
            {"id": voice_id},
        )


def test_lost_message_and_killed_worker_are_recovered(
    client: Any, vdb: str, redis_client: Any, log_dir: Path
) -> None:
    vid = upload(client, va.speech()).json()["id"]
    assert redis_client.llen("voices") == 1
    redis_client.delete("voices")  # the message is lost (Redis restarted empty)
    assert reconcile()["voices"] == 0  # within the timeout: nothing to do yet
    _age(vdb, vid)
    # A solo worker answers no ping while it works: start it before the message is published.
    worker = start_worker(log_dir, "tone", name="voices-kill", extra_queues="voices")
    try:
        assert reconcile()["voices"] == 1  # published again
        assert reconcile()["voices"] == 0  # once per timeout
        # Claimed (attempt 1) and still preparing: the first embedding loads the encoder.
        wait_until(lambda: voice_row(vdb, vid).attempts == 1, timeout=60, what="the worker's claim")
        worker.signal(signal.SIGKILL)
        worker.popen.wait(timeout=10)
    finally:
        worker.stop()
    voice = voice_row(vdb, vid)
    assert voice.status == "processing" and voice.attempts == 1, (voice.status, worker.tail())

    _age(vdb, vid)
    assert reconcile()["voices"] == 1
    worker = start_worker(log_dir, "tone", name="voices-again", extra_queues="voices")
    try:
        ready = wait_voice(client, vid)
    finally:
        worker.stop()
    assert ready["status"] == "ready" and ready["attempts"] == 2, ready


def test_voice_out_of_attempts_fails_with_a_code(client: Any, vdb: str, redis_client: Any) -> None:
    vid = upload(client, va.speech()).json()["id"]
    redis_client.delete("voices")
    with session_scope(vdb) as s:
        s.execute(
            text("UPDATE voices SET attempts = :n WHERE id = :id"),
            {"n": get_settings().max_attempts, "id": vid},
        )
    _age(vdb, vid)
    counts = reconcile()
    assert counts["voices"] == 0 and counts["voices_failed"] == 1
    voice = client.get(f"/v1/voices/{vid}").json()
    assert voice["status"] == "failed"
    assert voice["error"]["code"] == "max_attempts_exceeded"
    assert redis_client.llen("voices") == 0


def test_orphaned_voice_objects_are_swept(client: Any, vdb: str, redis_client: Any) -> None:
    kept = upload(client, va.speech()).json()["id"]
    storage = get_storage(get_settings())
    gone, tenant = str(uuid.uuid4()), str(DEFAULT_TENANT_ID)
    storage.put(f"voices/{tenant}/{gone}/upload", b"RIFF", "application/octet-stream")
    storage.put(f"voices/{tenant}/{gone}/prompt.wav", b"RIFF", "audio/wav")
    storage.put(f"voices/{gone}/upload", b"RIFF", "application/octet-stream")  # before tenants
    storage.put("voices/not-a-uuid/upload", b"RIFF", "application/octet-stream")
    deleted = sweep_orphan_objects(
        storage, get_settings().database_url, datetime.now(UTC) + timedelta(seconds=5)
    )
    # The store is shared by the session: earlier tests' voices (rows truncated since) are
    # orphans too. Only the one voice with a row may remain.
    assert deleted >= 4
    assert [o.key for o in storage.list_keys("voices/")] == [f"voices/{tenant}/{kept}/upload"]
    with get_engine(vdb).connect() as c:
        assert c.execute(text("SELECT count(*) FROM voices")).scalar_one() == 1


def test_prepare_is_idempotent_and_a_lost_upload_fails_with_a_code(
    client: Any, vdb: str, redis_client: Any
) -> None:
    """The task's work run in-process: a second run of a prepared voice changes nothing."""
    from workers.voices.prepare import prepare_voice

    settings, storage = get_settings(), get_storage(get_settings())
    vid = upload(client, va.speech()).json()["id"]
    lost = upload(client, va.speech()).json()["id"]
    redis_client.delete("voices")
    assert prepare_voice(uuid.UUID(vid), settings, storage) == "ready"
    before = client.get(f"/v1/voices/{vid}").json()
    assert prepare_voice(uuid.UUID(vid), settings, storage) == "skipped"
    assert client.get(f"/v1/voices/{vid}").json() == before
    assert prepare_voice(uuid.uuid4(), settings, storage) == "skipped"  # no such voice

    storage.delete(voice_row(vdb, lost).upload_key or "")
    assert prepare_voice(uuid.UUID(lost), settings, storage) == "failed"
    voice = client.get(f"/v1/voices/{lost}").json()
    assert voice["error"]["code"] == "storage_error" and voice["attempts"] == 1

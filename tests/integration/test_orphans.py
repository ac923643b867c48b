"""The orphan sweep on both backends: objects under jobs/ that no row points at are deleted once
they are older than any running attempt; everything a row points at, or that is fresh, stays.
Keys carry the tenant (`jobs/<tenant_id>/<job_id>/...`); the layout before tenants
(`jobs/<job_id>/...`) is still understood."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from core.storage import FileStorage, Storage, job_audio_key
from db import jobs as q
from db.models import DEFAULT_TENANT_ID, Job
from db.session import session_scope
from tasks.maintenance import sweep_orphan_objects, sweep_orphans
from tests.fixtures.processes import wait_until
from tests.fixtures.s3 import TEST_BUCKET_PREFIX, moto_server
from tests.integration.test_reconciler import _new_job
from tests.integration.test_storage import _s3


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url


T = str(DEFAULT_TENANT_ID)


def _old_layout_key(job_id: uuid.UUID, attempt: int) -> str:
    return f"jobs/{job_id}/{attempt}.wav"


def _succeeded(url: str, job_id: uuid.UUID, attempt: int, key: str | None = None) -> str:
    key = key or job_audio_key(T, str(job_id), attempt, "wav")
    with session_scope(url) as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status="succeeded", attempts=attempt, result_key=key)
        )
    return key


def _sweep_scenario(storage: Storage, db: str) -> None:
    done = _new_job(db, engine="tone")
    kept = _succeeded(db, done, 2)
    other_attempt = job_audio_key(T, str(done), 1, "wav")  # uploaded, then lost its fence
    deleted_job = job_audio_key(T, str(uuid.uuid4()), 1, "wav")  # its row is gone
    running = _new_job(db, engine="tone")
    with session_scope(db) as s:
        assert q.claim_job(s, running, "w", 30)
    in_flight = job_audio_key(T, str(running), 1, "wav")  # uploaded; finish not recorded yet
    # Stored before tenants: a job whose row points at the old key keeps it; an old-layout
    # object of a deleted job goes.
    old_done = _new_job(db, engine="tone")
    old_kept = _succeeded(db, old_done, 1, _old_layout_key(old_done, 1))
    old_deleted = _old_layout_key(uuid.uuid4(), 1)
    for key in (kept, other_attempt, deleted_job, in_flight, old_kept, old_deleted):
        storage.put(key, b"RIFF old", "audio/wav")
    # S3 keeps whole seconds: the cutoff is a second past the newest old object, and the fresh
    # orphan is written once the clock has reached it.
    cutoff = max(o.modified for o in storage.list_keys("jobs/")) + timedelta(seconds=1)
    wait_until(lambda: time.time() >= cutoff.timestamp(), timeout=5, what="the cutoff")
    fresh = job_audio_key(T, str(uuid.uuid4()), 1, "wav")  # an upload whose row may come soon
    storage.put(fresh, b"RIFF new", "audio/wav")

    assert sweep_orphan_objects(storage, db, cutoff) == 3
    left = {o.key for o in storage.list_keys("jobs/")}
    assert left == {kept, in_flight, fresh, old_kept}
    assert sweep_orphan_objects(storage, db, cutoff) == 0


def test_sweep_deletes_only_old_unreferenced_files(db: str, tmp_path: Path) -> None:
    _sweep_scenario(FileStorage(tmp_path), db)


def test_sweep_deletes_only_old_unreferenced_s3_objects(db: str, s3_endpoint: str) -> None:
    storage = _s3(s3_endpoint, f"{TEST_BUCKET_PREFIX}-{uuid.uuid4().hex[:8]}")
    storage.check()
    _sweep_scenario(storage, db)


def test_s3_listing_pages_through_every_key(s3_endpoint: str) -> None:
    storage = _s3(s3_endpoint, f"{TEST_BUCKET_PREFIX}-{uuid.uuid4().hex[:8]}")
    storage.check()
    keys = {f"jobs/{i:04d}/1.wav" for i in range(1005)}  # past one page of 1000
    for key in keys:
        storage.put(key, b"x", "audio/wav")
    storage.put("elsewhere/1.wav", b"x", "audio/wav")
    assert {o.key for o in storage.list_keys("jobs/")} == keys


def test_the_beat_task_keeps_anything_younger_than_lease_plus_deadline(db: str) -> None:
    """`maintenance.sweep_orphans` with the configured storage (the test folder): an orphan
    written now survives; the same orphan aged past lease + deadline, and a stale half-written
    temporary file, are deleted."""
    from core.settings import get_settings

    settings = get_settings()
    root = settings.storage_dir
    orphan = root / job_audio_key(T, str(uuid.uuid4()), 1, "wav")
    temp = orphan.parent / ".tmp-crashed"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"RIFF")
    temp.write_bytes(b"RI")
    assert sweep_orphans() == 0 and orphan.exists()
    old = time.time() - settings.lease_seconds - settings.job_deadline_seconds - 60
    for path in (orphan, temp):
        os.utime(path, (old, old))
    assert sweep_orphans() == 2
    assert not orphan.exists() and not temp.exists()

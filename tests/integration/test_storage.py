"""Both storage backends: the local folder and S3 (moto's server on loopback, over HTTP)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from core.errors import StorageError
from core.settings import Settings
from core.storage import FileStorage, S3Storage, Storage, job_audio_key
from tests.fixtures.audio_checks import assert_speech
from tests.fixtures.processes import start_worker
from tests.fixtures.s3 import TEST_BUCKET_PREFIX, moto_server, s3_env


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url


def _s3(endpoint: str, bucket: str) -> S3Storage:
    return S3Storage(
        Settings(
            **{k.removeprefix("VOICEFARM_").lower(): v for k, v in s3_env(endpoint, bucket).items()}
        )
    )


def _roundtrip(storage: Storage) -> None:
    key = job_audio_key(str(uuid.uuid4()), str(uuid.uuid4()), 1, "wav")
    assert not storage.exists(key)
    storage.put(key, b"RIFF0000WAVEdata", "audio/wav")
    assert storage.exists(key)
    assert b"".join(storage.iter_bytes(key, chunk=4)) == b"RIFF0000WAVEdata"
    storage.delete(key)
    assert not storage.exists(key)


def test_file_storage_roundtrip_and_refuses_escaping_keys(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    storage.check()
    _roundtrip(storage)
    assert storage.presigned_url("jobs/x/1.wav") is None
    with pytest.raises(StorageError):
        storage.put("../outside.wav", b"x", "audio/wav")
    assert not (tmp_path.parent / "outside.wav").exists()


def test_s3_creates_its_bucket_and_presigns_a_working_url(s3_endpoint: str) -> None:
    storage = _s3(s3_endpoint, f"{TEST_BUCKET_PREFIX}-{uuid.uuid4().hex[:8]}")
    storage.check()  # bucket created if missing
    _roundtrip(storage)
    storage.put("jobs/a/1.wav", b"hello", "audio/wav")
    url = storage.presigned_url("jobs/a/1.wav")
    assert url and url.startswith(s3_endpoint) and "X-Amz-Signature" in url
    r = httpx.get(url)
    assert r.status_code == 200 and r.content == b"hello"


def test_s3_unreachable_is_a_storage_error() -> None:
    storage = _s3("http://127.0.0.1:1", f"{TEST_BUCKET_PREFIX}-down")
    with pytest.raises(StorageError):
        storage.check()


def test_job_audio_lands_in_s3_and_the_api_redirects_to_it(
    s3_endpoint: str, db: str, log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker process configured for S3 uploads; the API answers /audio with a presigned URL."""
    from api.main import create_app
    from core.settings import get_settings
    from tests.integration.test_worker_jobs import wait_job

    env = s3_env(s3_endpoint, f"{TEST_BUCKET_PREFIX}-{uuid.uuid4().hex[:8]}")
    proc = start_worker(
        log_dir,
        "piper",
        name="s3worker",
        extra_queues="",
        env={**env, "VOICEFARM_WORKER_ENGINES": "piper"},
    )
    try:
        for k, v in env.items():
            monkeypatch.setitem(os.environ, k, v)
        get_settings.cache_clear()
        with TestClient(create_app()) as client:
            job = client.post("/v1/jobs", json={"text": "Stored in the bucket."}).json()
            done = wait_job(client, job["id"])
            assert done["status"] == "succeeded", proc.tail()
            r = client.get(f"/v1/jobs/{job['id']}/audio", follow_redirects=False)
            assert r.status_code == 307 and r.headers["location"].startswith(s3_endpoint)
            audio = httpx.get(r.headers["location"])
            assert audio.status_code == 200
            assert_speech(audio.content, rate=22050, words=4)
            assert client.get("/readyz").json()["checks"]["storage"] == "ok"
    finally:
        proc.stop()
        get_settings.cache_clear()


def _big_file(path: Path, size: int) -> str:
    import hashlib

    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_file_put_file_copies_atomically(tmp_path: Path) -> None:
    import hashlib

    storage = FileStorage(tmp_path / "store")
    src = tmp_path / "audio.wav"
    digest = _big_file(src, 3 * 1024 * 1024 + 7)
    storage.put_file("jobs/a/1.wav", src, "audio/wav")
    assert src.exists()  # the caller owns (and removes) its temporary file
    stored = b"".join(storage.iter_bytes("jobs/a/1.wav"))
    assert hashlib.sha256(stored).hexdigest() == digest
    assert [p.name for p in (tmp_path / "store" / "jobs" / "a").iterdir()] == ["1.wav"]
    with pytest.raises(StorageError):
        storage.put_file("../escape.wav", src, "audio/wav")


def test_s3_put_file_uploads_large_files_in_parts(s3_endpoint: str, tmp_path: Path) -> None:
    import hashlib

    from boto3.s3.transfer import TransferConfig

    storage = _s3(s3_endpoint, f"{TEST_BUCKET_PREFIX}-{uuid.uuid4().hex[:8]}")
    mib = 1024 * 1024
    # S3's smallest part is 5 MiB; the production threshold is 8 MiB.
    storage.transfer = TransferConfig(multipart_threshold=5 * mib, multipart_chunksize=5 * mib)
    src = tmp_path / "long.wav"
    digest = _big_file(src, 11 * mib)
    storage.put_file("jobs/b/1.wav", src, "audio/wav")
    head = storage.client.head_object(Bucket=storage.bucket, Key="jobs/b/1.wav")
    assert head["ETag"].strip('"').endswith("-3")  # three parts
    assert head["ContentType"] == "audio/wav" and head["ContentLength"] == 11 * mib
    stored = b"".join(storage.iter_bytes("jobs/b/1.wav", chunk=mib))
    assert hashlib.sha256(stored).hexdigest() == digest
    small = tmp_path / "short.wav"
    _big_file(small, 1000)
    storage.put_file("jobs/b/2.wav", small, "audio/wav")  # below the threshold: one PUT
    assert storage.exists("jobs/b/2.wav")


def test_s3_put_file_to_an_unreachable_endpoint_is_a_storage_error(tmp_path: Path) -> None:
    storage = _s3("http://127.0.0.1:1", f"{TEST_BUCKET_PREFIX}-down")
    src = tmp_path / "a.wav"
    src.write_bytes(b"RIFF")
    with pytest.raises(StorageError):
        storage.put_file("jobs/c/1.wav", src, "audio/wav")

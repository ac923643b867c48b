"""Voices end to end: multipart upload through the API, a real worker process preparing each
recording (real Piper speech and variants of it that fail one way each), PATCH and DELETE."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from sqlalchemy import text

from core.settings import get_settings
from core.storage import get_storage, voice_prompt_key, voice_upload_key
from db.models import DEFAULT_TENANT_ID, Job, Voice
from db.session import get_engine, session_scope
from tests.fixtures import voice_audio as va
from tests.fixtures.processes import Proc, start_worker, wait_until

TRANSCRIPT = " ".join(va.SENTENCES)


@pytest.fixture(scope="module")
def voice_worker(database: str, redis_client: object, log_dir: Path) -> Iterator[Proc]:
    """One real worker that serves only the `voices` queue (as the ops worker does)."""
    proc = start_worker(log_dir, "tone", name="voices", extra_queues="voices")
    yield proc
    proc.stop()


@pytest.fixture
def vdb(db: str) -> str:
    with get_engine(db).begin() as c:
        c.execute(text("TRUNCATE voices CASCADE"))
    for obj in list(get_storage(get_settings()).list_keys("voices/")):
        get_storage(get_settings()).delete(obj.key)
    return db


def upload(client: Any, data: bytes, **fields: str) -> Any:
    form = {"transcript": TRANSCRIPT, "name": "joe", **fields}
    return client.post("/v1/voices", data=form, files={"audio": ("voice.wav", data)})


def wait_voice(client: Any, voice_id: str, timeout: float = 90.0) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/v1/voices/{voice_id}").json()
        return body if body["status"] != "processing" else None

    return wait_until(done, timeout=timeout, what=f"voice {voice_id} to be prepared")  # type: ignore[no-any-return]


def voice_row(url: str, voice_id: str) -> Voice:
    with session_scope(url) as s:
        voice = s.get(Voice, uuid.UUID(voice_id))
        assert voice is not None
        s.expunge(voice)
        return voice


def written(url: str, redis_client: Any) -> tuple[int, int, int]:
    """(voice rows, stored voice objects, messages waiting on the voices queue)."""
    with get_engine(url).connect() as c:
        rows = c.execute(text("SELECT count(*) FROM voices")).scalar_one()
    objects = len(list(get_storage(get_settings()).list_keys("voices/")))
    return rows, objects, int(redis_client.llen("voices"))


def _multipart(boundary: str, parts: list[tuple[str, str | None, bytes]]) -> bytes:
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def test_malformed_uploads_are_refused_and_write_nothing(
    client: Any, vdb: str, redis_client: Any
) -> None:
    """First in the module, before its worker starts: a message sent by mistake would still be
    waiting on the queue."""
    limit = get_settings().max_voice_upload_bytes
    good = va.speech()
    fields = {"transcript": TRANSCRIPT, "name": "joe"}
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("json", {"json": {"transcript": "x", "name": "y"}}, 415, "unsupported_media_type"),
        ("urlencoded", {"data": fields}, 415, "unsupported_media_type"),
        ("no audio", {"data": fields, "files": {"other": ("a.wav", good)}}, 422, "audio_missing"),
        ("empty audio", {"data": fields, "files": {"audio": ("a.wav", b"")}}, 422, "audio_empty"),
        (
            "no transcript",
            {"data": {"name": "joe"}, "files": {"audio": ("a.wav", good)}},
            422,
            "validation_failed",
        ),
        (
            "blank name",
            {"data": {**fields, "name": "  "}, "files": {"audio": ("a.wav", good)}},
            422,
            "validation_failed",
        ),
        (
            "long transcript",
            {"data": {**fields, "transcript": "a" * 5000}, "files": {"audio": ("a.wav", good)}},
            422,
            "validation_failed",
        ),
        (
            "NUL",
            {"data": {**fields, "transcript": "a\x00b"}, "files": {"audio": ("a.wav", good)}},
            422,
            "validation_failed",
        ),
        (
            "language",
            {"data": {**fields, "language": "klingon"}, "files": {"audio": ("a.wav", good)}},
            422,
            "unknown_language",
        ),
        (
            "audio over the limit",
            {"data": fields, "files": {"audio": ("a.wav", b"\0" * (limit + 1))}},
            413,
            "request_too_large",
        ),
        (
            "body over the limit",
            {
                "content": _multipart("b0", [("audio", "a.wav", b"\0" * (limit + 100_000))]),
                "headers": {"Content-Type": "multipart/form-data; boundary=b0"},
            },
            413,
            "request_too_large",
        ),
        (
            "broken multipart",
            {
                "content": b'--b1\r\nContent-Disposition: form-data; name="audio"',
                "headers": {"Content-Type": "multipart/form-data; boundary=b1"},
            },
            422,
            "",
        ),
    ]
    for name, kwargs, status, code in cases:
        r = client.post("/v1/voices", **kwargs)
        assert r.status_code == status, (name, r.status_code, r.text)
        if code:
            assert r.json()["error"]["code"] == code, (name, r.text)
        assert written(vdb, redis_client) == (0, 0, 0), name


def test_upload_is_prepared_into_a_ready_voice(client: Any, vdb: str, voice_worker: Proc) -> None:
    r = upload(client, va.speech(), language="en")
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "processing" and body["revision"] == 1
    assert r.headers["Location"] == body["links"]["self"]
    ready = wait_voice(client, body["id"])
    assert ready["status"] == "ready", ready
    assert ready["error"] is None and ready["attempts"] == 1
    assert ready["sample_rate"] == va.RATE
    assert 5.0 <= ready["duration_s"] <= 8.5  # the half seconds of silence around it are gone
    assert ready["embedding_dim"] == 256

    voice = voice_row(vdb, body["id"])
    assert voice.embedding is not None and len(voice.embedding) == 256
    assert abs(float(np.linalg.norm(voice.embedding)) - 1.0) < 1e-4
    storage = get_storage(get_settings())
    assert voice.prompt_key == voice_prompt_key(str(voice.tenant_id), body["id"])
    prompt = b"".join(storage.iter_bytes(voice.prompt_key))
    samples, rate = sf.read(io.BytesIO(prompt), dtype="float32")
    assert rate == va.RATE and samples.ndim == 1
    assert abs(len(samples) / rate - ready["duration_s"]) < 0.01
    import hashlib

    assert voice.audio_sha256 == ready["audio_sha256"] == hashlib.sha256(prompt).hexdigest()
    original = b"".join(storage.iter_bytes(voice_upload_key(str(voice.tenant_id), body["id"])))
    assert original == va.speech() and voice.upload_sha256 == hashlib.sha256(original).hexdigest()

    listed = client.get("/v1/voices").json()
    assert [v["id"] for v in listed["items"]] == [body["id"]]


BAD_RECORDINGS = {
    "too_short": (va.too_short, "too_short"),
    "silence": (va.silence, "too_quiet"),
    "clipped": (va.clipped, "clipped"),
    "low_rate": (va.low_rate, "sample_rate_too_low"),
    "garbage": (va.garbage, "audio_undecodable"),
    "long": (va.long_recording, "too_long"),
}


def test_each_bad_recording_fails_with_its_code(client: Any, vdb: str, voice_worker: Proc) -> None:
    ids = {}
    for name, (make, _) in BAD_RECORDINGS.items():
        r = upload(client, make(), name=name)
        assert r.status_code == 202, (name, r.text)
        ids[name] = r.json()["id"]
    stereo = upload(client, va.flac_stereo(), name="flac").json()["id"]
    for name, (_, code) in BAD_RECORDINGS.items():
        voice = wait_voice(client, ids[name])
        assert voice["status"] == "failed", (name, voice)
        assert voice["error"]["code"] == code, (name, voice["error"])
        assert voice["error"]["message"], name
        assert voice["embedding_dim"] is None
    flac = wait_voice(client, stereo)
    assert flac["status"] == "ready", flac  # FLAC, two channels mixed to mono


def test_patch_corrects_the_transcript_and_bumps_the_revision(client: Any, vdb: str) -> None:
    vid = upload(client, va.speech()).json()["id"]
    r = client.patch(f"/v1/voices/{vid}", json={"name": "Joe"})
    assert r.status_code == 200 and r.json()["name"] == "Joe" and r.json()["revision"] == 1
    r = client.patch(f"/v1/voices/{vid}", json={"transcript": "  The corrected text.  "})
    assert r.json()["transcript"] == "The corrected text." and r.json()["revision"] == 2
    r = client.patch(f"/v1/voices/{vid}", json={"transcript": "The corrected text."})
    assert r.json()["revision"] == 2  # unchanged text: prepared prompts stay valid
    r = client.patch(f"/v1/voices/{vid}", json={"language": "zh"})
    assert r.json()["language"] == "zh" and r.json()["revision"] == 2
    assert client.patch(f"/v1/voices/{vid}", json={"language": None}).json()["language"] is None
    bad = client.patch(f"/v1/voices/{vid}", json={"language": "zz"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "unknown_language"
    bad = client.patch(f"/v1/voices/{vid}", json={"transcript": ""})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "transcript"
    missing = client.patch(f"/v1/voices/{uuid.uuid4()}", json={"name": "x"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "voice_not_found"


def _job(url: str, voice_id: str, status: str) -> uuid.UUID:
    with session_scope(url) as s:
        job = Job(
            engine="tone",
            text="hello",
            status=status,
            mode="clone",
            voice_id=uuid.UUID(voice_id),
            metadata_={},
        )
        s.add(job)
        s.flush()
        return job.id


def test_delete_refuses_while_queued_jobs_use_the_voice(
    client: Any, vdb: str, voice_worker: Proc
) -> None:
    vid = upload(client, va.speech()).json()["id"]
    assert wait_voice(client, vid)["status"] == "ready"
    finished = _job(vdb, vid, "succeeded")
    queued = _job(vdb, vid, "queued")
    r = client.delete(f"/v1/voices/{vid}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "voice_in_use"
    assert client.get(f"/v1/voices/{vid}").status_code == 200
    storage = get_storage(get_settings())
    folder = f"voices/{DEFAULT_TENANT_ID}/{vid}/"  # the default tenant's: auth is off here
    assert len(list(storage.list_keys(folder))) == 2  # upload and prompt

    with session_scope(vdb) as s:
        s.execute(text("UPDATE jobs SET status = 'canceled' WHERE id = :id"), {"id": queued})
    assert client.delete(f"/v1/voices/{vid}").status_code == 204
    assert client.get(f"/v1/voices/{vid}").json()["error"]["code"] == "voice_not_found"
    assert list(storage.list_keys(folder)) == []
    with session_scope(vdb) as s:
        kept = s.get(Job, finished)
        assert kept is not None and kept.voice_id is None and kept.status == "succeeded"
    assert client.delete(f"/v1/voices/{vid}").status_code == 404

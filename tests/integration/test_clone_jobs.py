"""Jobs that speak with cloned voices: admission by mode and engine capability, the voice a job
resolves to, and the prepared-prompt cache (Redis in front of storage) in a real worker.

The `clonetone` fixture engine declares the modes CosyVoice declares and logs what reaches it;
it stands in here because the job plumbing is under test. CosyVoice itself runs against the
official code in test_cosyvoice_real.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from core.settings import get_settings
from core.storage import get_storage
from db.models import Job, Voice
from db.session import get_sessionmaker
from tests.fixtures.api import use_settings
from tests.fixtures.processes import Proc, start_worker, wait_until
from tests.fixtures.voices import add_voice

TERMINAL = ("succeeded", "failed", "canceled")


def _jobs(db: str) -> int:
    with get_sessionmaker(db)() as s:
        return s.scalar(select(func.count()).select_from(Job)) or 0


def test_modes_are_checked_against_the_engine(client: TestClient, db: str) -> None:
    voice = add_voice(db)
    r = client.post("/v1/jobs", json={"text": "hi", "mode": "clone", "voice_id": str(voice)})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unsupported_mode"
    assert "'piper'" in r.json()["error"]["message"] and "preset" in r.json()["error"]["message"]
    r = client.post("/v1/jobs", json={"text": "hi", "voice_id": str(voice)})  # clone implied
    assert r.status_code == 422 and r.json()["error"]["code"] == "unsupported_mode"

    use_settings(client, engines="piper,cosyvoice")
    r = client.post(
        "/v1/jobs", json={"text": "你好", "engine": "cosyvoice", "instruction": "用四川话说这句话"}
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "voice_required"
    r = client.post("/v1/jobs", json={"text": "你好", "engine": "cosyvoice"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "voice_required"
    r = client.post(
        "/v1/jobs", json={"text": "hi", "engine": "cosyvoice", "voice_id": str(uuid.uuid4())}
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_voice"
    pending = add_voice(db, status="processing")
    r = client.post(
        "/v1/jobs", json={"text": "hi", "engine": "cosyvoice", "voice_id": str(pending)}
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "voice_not_ready"
    r = client.post(
        "/v1/jobs",
        json={"text": "hi", "engine": "cosyvoice", "mode": "clone", "instruction": "loudly"},
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_failed"
    r = client.post("/v1/jobs", json={"text": "hi", "engine": "cosyvoice", "language": "EN!"})
    assert r.status_code == 422
    assert _jobs(db) == 0

    ok = client.post(
        "/v1/jobs",
        json={
            "text": "你好",
            "engine": "cosyvoice",
            "voice_id": str(voice),
            "instruction": "用四川话说这句话",
        },
    )
    assert ok.status_code == 202, ok.text
    job = ok.json()
    assert job["mode"] == "instruct" and job["voice_id"] == str(voice)


def test_a_job_without_a_voice_uses_the_default_voice(client: TestClient, db: str) -> None:
    voice = add_voice(db)
    use_settings(client, engines="piper,cosyvoice", default_voice_id=str(voice))
    r = client.post("/v1/jobs", json={"text": "你好", "engine": "cosyvoice"})
    assert r.status_code == 202, r.text
    assert r.json()["mode"] == "preset" and r.json()["voice_id"] == str(voice)


@pytest.fixture
def clone_worker(db: str, log_dir: Path, tmp_path: Path) -> Iterator[tuple[Proc, Path, Path]]:
    prepares, synths = tmp_path / "prepare.jsonl", tmp_path / "synth.jsonl"
    proc = start_worker(
        log_dir,
        "clonetone",
        name="clone",
        extra_queues="voices,maintenance",
        env={"FIXTURE_PREPARE_LOG": str(prepares), "FIXTURE_SYNTH_LOG": str(synths)},
    )
    yield proc, prepares, synths
    proc.stop()


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _run(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/v1/jobs", json={"engine": "clonetone", **body})
    assert r.status_code == 202, r.text

    def done() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v1/jobs/{r.json()['id']}").json()
        return job if job["status"] in TERMINAL else None

    return wait_until(done, timeout=60, what="the job")


def test_prompts_are_prepared_once_and_survive_a_redis_flush(
    client: TestClient,
    db: str,
    redis_client: Any,
    clone_worker: tuple[Proc, Path, Path],
) -> None:
    proc, prepares, synths = clone_worker
    voice = add_voice(db, transcript="The quick brown fox.")
    first = _run(client, {"text": "One. Two.", "voice_id": str(voice)})
    assert first["status"] == "succeeded", proc.tail()
    assert first["mode"] == "clone"
    assert len(_lines(prepares)) == 1
    calls = _lines(synths)
    assert calls and all(c["prompt"]["transcript"] == "The quick brown fox." for c in calls)
    assert all(c["mode"] == "clone" for c in calls)

    assert _run(client, {"text": "Again.", "voice_id": str(voice)})["status"] == "succeeded"
    assert len(_lines(prepares)) == 1  # a Redis hit

    assert redis_client.flushdb()  # Redis restarted empty: reload from storage, no recompute
    again = _run(client, {"text": "Once more.", "voice_id": str(voice)})
    assert again["status"] == "succeeded", proc.tail()
    assert len(_lines(prepares)) == 1
    log = proc.log.read_text()
    assert log.count("event=prompts.compute") == 1 and log.count("event=prompts.hit") == 1
    assert log.count("event=prompts.reload") == 1

    # A corrected transcript is a new prompt: prepared again, and used.
    with get_sessionmaker(db)() as s:
        row = s.get(Voice, voice)
        assert row is not None
        row.transcript, row.revision = "The quick brown dog.", 2
        s.commit()
    fixed = _run(client, {"text": "Fixed.", "voice_id": str(voice), "mode": "cross_lingual"})
    assert fixed["status"] == "succeeded" and fixed["mode"] == "cross_lingual"
    assert [p["transcript"] for p in _lines(prepares)] == [
        "The quick brown fox.",
        "The quick brown dog.",
    ]
    assert _lines(synths)[-1]["prompt"]["transcript"] == "The quick brown dog."


def test_instruct_reaches_the_engine_and_a_deleted_voice_fails_the_job(
    client: TestClient, db: str, clone_worker: tuple[Proc, Path, Path]
) -> None:
    proc, _, synths = clone_worker
    done = _run(client, {"text": "她[h][ào]干净", "instruction": "用兴奋的语气说这句话"})
    assert done["status"] == "succeeded", proc.tail()
    assert _lines(synths)[-1] == {
        "mode": "instruct",
        "text": "她[h][ào]干净",
        "instruction": "用兴奋的语气说这句话",
        "prompt": None,
    }
    voice = add_voice(db)
    r = client.post("/v1/jobs", json={"engine": "clonetone", "text": "hi", "voice_id": str(voice)})
    assert r.status_code == 202
    proc.signal(19)  # SIGSTOP: hold the job in the queue while its voice goes away
    try:
        with get_sessionmaker(db)() as s:
            row = s.get(Voice, voice)
            assert row is not None
            row.status = "failed"
            s.commit()
    finally:
        proc.signal(18)  # SIGCONT
    job = wait_until(
        lambda: (j := client.get(f"/v1/jobs/{r.json()['id']}").json())["status"] in TERMINAL and j,
        timeout=60,
        what="the job",
    )
    assert job["status"] == "failed" and job["error"]["code"] == "invalid_input"
    assert job["attempts"] == 1


def test_clone_jobs_record_speaker_similarity(
    client: TestClient, db: str, clone_worker: tuple[Proc, Path, Path]
) -> None:
    """The fixture engine speaks a voice's own recording (a perfect clone); the job records how
    close its output is to the voice's embedding, from the same encoder the voices use."""
    from tests.fixtures.voice_audio import speech_samples
    from workers.voices import embed

    proc = clone_worker[0]
    recording = speech_samples()
    same = add_voice(db, samples=recording, embedding=embed(recording, 22050))
    # The same recording filed under another speaker's embedding: a poor match.
    unrelated = np.sin(np.linspace(0, 4000, 22050 * 4)).astype(np.float32) * 0.3
    other = add_voice(db, samples=recording, embedding=embed(unrelated, 22050))
    good = _run(client, {"text": "Hello.", "voice_id": str(same)})
    bad = _run(client, {"text": "Hello.", "voice_id": str(other)})
    assert good["status"] == bad["status"] == "succeeded", proc.tail()
    assert good["quality"]["speaker_similarity"] > 0.9
    assert bad["quality"]["speaker_similarity"] < good["quality"]["speaker_similarity"] - 0.2
    # A voice-less job has nothing to compare with (its other quality figures are recorded).
    plain = _run(client, {"text": "Plain."})
    assert plain["status"] == "succeeded" and "speaker_similarity" not in plain["quality"]


def _data_url(wav: bytes) -> str:
    import base64

    return "data:audio/wav;base64," + base64.b64encode(wav).decode()


def test_predict_clones_from_an_inline_recording_or_a_voice_id(
    client: TestClient, db: str, clone_worker: tuple[Proc, Path, Path]
) -> None:
    """The WebUI's 3s极速复刻 and 跨语种复刻 through /api/predict: the recording inline (a voice is
    made from it first, by the real voices pipeline) or a voice id."""
    from tests.fixtures.voice_audio import speech, too_short

    proc, prepares, _ = clone_worker
    transcript = "The farm never loses a job."
    r = client.post(
        "/api/predict", json={"data": ["3s极速复刻", _data_url(speech()), "Hello.", transcript]}
    )
    assert r.status_code == 200, (r.text, proc.tail())
    job = client.get(f"/v1/jobs/{r.json()['job_id']}").json()
    assert job["mode"] == "clone" and job["engine"] == "clonetone" and job["status"] == "succeeded"
    voice = client.get(f"/v1/voices/{job['voice_id']}").json()
    assert voice["status"] == "ready" and voice["transcript"] == transcript
    assert [p["transcript"] for p in _lines(prepares)] == [transcript]

    r = client.post("/api/predict", json={"data": ["跨语种复刻", voice["id"], "Bonjour.", None]})
    assert r.status_code == 200, r.text
    again = client.get(f"/v1/jobs/{r.json()['job_id']}").json()
    assert again["mode"] == "cross_lingual" and again["voice_id"] == voice["id"]

    r = client.post(
        "/api/predict", json={"data": ["3s极速复刻", _data_url(too_short()), "Hi.", "Hi."]}
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "voice_unusable"
    assert "too_short" in r.json()["error"]["message"]
    bad = [
        ["自然语言控制", _data_url(speech()), "Hi.", "excited"],  # inline audio needs a clone mode
        ["3s极速复刻", _data_url(speech()), "Hi.", None],  # and its transcript
        ["3s极速复刻", "data:audio/wav;base64,@@@", "Hi.", "Hi."],
        ["3s极速复刻", {"path": "/etc/passwd"}, "Hi.", "Hi."],
        ["3s极速复刻", None, "Hi.", None],  # cloning needs a voice
    ]
    for data in bad:
        r = client.post("/api/predict", json={"data": data})
        assert r.status_code == 422, (data[0], r.text)
    assert len(client.get("/v1/voices").json()["items"]) == 2  # the good one and the short one


def test_deleting_a_voice_erases_its_prepared_prompts(
    client: TestClient, db: str, redis_client: Any, clone_worker: tuple[Proc, Path, Path]
) -> None:
    """A voice print must not outlive its voice: the prompts prepared from its recording go
    from storage and from Redis once the voice is deleted."""
    from core.storage import PROMPT_REDIS_PREFIX, PROMPTS_PREFIX

    proc = clone_worker[0]
    t = np.arange(4 * 22050) / 22050
    unique = (0.3 * np.sin(2 * np.pi * (300 + 100 * np.random.rand()) * t)).astype(np.float32)
    voice = add_voice(db, samples=unique)
    assert _run(client, {"text": "Remember me.", "voice_id": str(voice)})["status"] == "succeeded"
    storage = get_storage(get_settings())
    with get_sessionmaker(db)() as s:
        row = s.get(Voice, voice)
        assert row is not None and row.audio_sha256
        sha = row.audio_sha256

    def stored() -> list[str]:
        return [o.key for o in storage.list_keys(PROMPTS_PREFIX) if f"/{sha}-" in o.key]

    def cached() -> list[bytes]:
        return list(redis_client.scan_iter(match=f"{PROMPT_REDIS_PREFIX}*/{sha}-*"))

    assert len(stored()) == 1 and len(cached()) == 1
    assert client.delete(f"/v1/voices/{voice}").status_code == 204
    wait_until(lambda: not stored() and not cached(), timeout=30, what="the prompts to go")
    assert "voices.forget" in proc.log.read_text()

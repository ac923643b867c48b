"""Jobs through a real Celery worker process: API -> PostgreSQL -> Redis -> worker -> storage."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.settings import get_settings
from core.webhooks import verify
from db.models import DEFAULT_TENANT_ID
from tests.fixtures.api import use_settings
from tests.fixtures.audio_checks import assert_speech, read_wav
from tests.fixtures.processes import Proc, wait_until
from tests.fixtures.receiver import Receiver

TERMINAL = ("succeeded", "failed", "canceled")


def wait_job(
    client: TestClient, job_id: str, timeout: float = 60.0, states: tuple[str, ...] = TERMINAL
) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in states else None

    return wait_until(done, timeout=timeout, what=f"job {job_id} to reach {states}")


def test_piper_job_succeeds_with_real_speech_and_progress(client: TestClient, worker: Proc) -> None:
    text = "The farm never loses a job. Every segment is tracked. The audio lands in storage."
    job = client.post("/v1/jobs", json={"text": text}).json()
    done = wait_job(client, job["id"])
    assert done["status"] == "succeeded", (done, worker.tail())
    assert done["attempts"] == 1
    assert done["progress"] == {"segments_done": 1, "segments_total": 1}
    assert done["started_at"] and done["finished_at"]
    result = done["result"]
    audio = client.get(f"/v1/jobs/{job['id']}/audio")
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/wav"
    assert len(audio.content) == result["bytes"]
    duration = assert_speech(audio.content, rate=22050, words=len(text.split()))
    assert abs(duration - result["duration_s"]) < 0.01
    # The worker's per-job timings line (bench/efficiency.py reads it): the engine calls' wall
    # time and the calling thread's CPU in them, which cannot exceed it.
    line = wait_until(
        lambda: next(
            (x for x in worker.tail(400).splitlines() if f"jobs.timings job={job['id']}" in x), None
        ),
        timeout=10,
        what="the job's timings line",
    )
    phases = {k: float(v) for k, v in re.findall(r"(\w+)_ms=([\d.]+)", line)}
    assert 0 < phases["synthesize_cpu"] <= phases["synthesize"] + 0.1, line


def test_long_text_is_segmented_and_resampled(client: TestClient, worker: Proc) -> None:
    sentences = [f"This is sentence number {i}, spoken by the worker." for i in range(12)]
    text = " ".join(sentences)  # > 400 characters: several segments
    job = client.post("/v1/jobs", json={"text": text, "sample_rate": 16000}).json()
    done = wait_job(client, job["id"], timeout=120)
    assert done["status"] == "succeeded", worker.tail()
    p = done["progress"]
    assert p["segments_total"] >= 2 and p["segments_done"] == p["segments_total"]
    assert done["result"]["sample_rate"] == 16000
    audio = client.get(f"/v1/jobs/{job['id']}/audio").content
    assert_speech(audio, rate=16000, words=len(text.split()))


def test_engine_failure_is_retried_then_recorded(client: TestClient, worker: Proc) -> None:
    job = client.post("/v1/jobs", json={"text": "boom", "engine": "fail"}).json()
    done = wait_job(client, job["id"])
    assert done["status"] == "failed" and done["attempts"] == 3
    assert done["error"]["code"] == "max_attempts_exceeded"
    assert "RuntimeError: fixture engine failure" in done["error"]["message"]
    assert done["result"] is None


def test_oom_frees_and_retries_with_smaller_segments(client: TestClient, worker: Proc) -> None:
    """The fixture raises torch's CUDA OOM type for long segments (no GPU here); the task must
    split the segment and finish in the same attempt."""
    job = client.post(
        "/v1/jobs", json={"text": "a segment well over twenty characters long", "engine": "oomlong"}
    ).json()
    done = wait_job(client, job["id"])
    assert done["status"] == "succeeded" and done["attempts"] == 1, worker.tail()


def test_oom_split_of_chinese_text_keeps_pinyin_markup_whole(
    client: TestClient, worker: Proc, log_dir: Path
) -> None:
    """Chinese without spaces and with pinyin runs, 36 characters in one segment: the fixture
    raises torch's CUDA OOM type until every piece is 20 characters or less (no GPU here), so
    the task splits twice. The pieces are cut beside the markup, never inside it, so each passes
    validation and the job succeeds in its first attempt; the fixture logs what it synthesized
    (a retry synthesizes every piece again, so the last pieces logged make up the text)."""
    import json

    from core.text import parse_markup

    text = "大家都说她[h][ào]干净又[h][ào]客所以邻居们都很喜欢她的样子"
    assert len(text) > 20 and " " not in text
    job = client.post("/v1/jobs", json={"text": text, "engine": "oomlong"}).json()
    done = wait_job(client, job["id"])
    assert done["status"] == "succeeded" and done["attempts"] == 1, (done, worker.tail())
    logged = (log_dir / "oomlong-segments.jsonl").read_text(encoding="utf-8").splitlines()
    pieces = [p for p in map(json.loads, logged) if p in text]
    final = next(pieces[i:] for i in range(len(pieces)) if "".join(pieces[i:]) == text)
    assert len(final) >= 3, pieces
    for piece in pieces:
        parse_markup(piece)
    assert all(len(p) <= 20 for p in final)
    # Each run stays with the character it annotates.
    assert any("她[h][ào]" in p for p in final) and any("又[h][ào]" in p for p in final)


def test_cancel_running_job_stops_at_next_segment(
    client: TestClient, worker: Proc, tmp_root: Path
) -> None:
    text = " ".join(f"Sentence {i} is here." for i in range(40))
    job = client.post("/v1/jobs", json={"text": text, "engine": "slow"}).json()
    wait_until(
        lambda: client.get(f"/v1/jobs/{job['id']}").json()["progress"]["segments_done"] >= 1,
        timeout=30,
        what="first segment",
    )
    r = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    time.sleep(1.5)  # the worker notices at its next segment boundary
    final = client.get(f"/v1/jobs/{job['id']}").json()
    assert final["status"] == "canceled" and final["result"] is None
    assert final["progress"]["segments_done"] < final["progress"]["segments_total"]
    assert not list((tmp_root / "storage" / "jobs").glob(f"{job['id']}/*"))
    # The worker is free again: a new job runs.
    nxt = client.post("/v1/jobs", json={"text": "next", "engine": "tone"}).json()
    assert wait_job(client, nxt["id"])["status"] == "succeeded"


def test_duplicate_message_claims_nothing(client: TestClient, worker: Proc) -> None:
    from tasks.send import send_synthesize

    job = client.post("/v1/jobs", json={"text": "only once", "engine": "tone"}).json()
    send_synthesize(job["id"], "tone", "interactive")
    send_synthesize(job["id"], "tone", "interactive")
    done = wait_job(client, job["id"])
    time.sleep(1.0)
    again = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == again["status"] == "succeeded" and again["attempts"] == 1


def test_signed_webhooks_with_retries_and_attempt_log(
    client: TestClient, worker: Proc, receiver: Receiver
) -> None:
    from tasks.maintenance import reconcile

    receiver.script = [500, 503]  # the first two POSTs fail, whatever event they carry
    job = client.post(
        "/v1/jobs", json={"text": "hook me", "engine": "tone", "webhook_url": receiver.url}
    ).json()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        reconcile()  # what beat runs every few seconds: dispatches due retries
        events = {r.json["type"] for r in receiver.requests}
        if {"job.queued", "job.started", "job.succeeded"} <= events and not receiver.script:
            hooks = client.get(f"/v1/jobs/{job['id']}/webhooks").json()
            if all(h["status"] == "delivered" for h in hooks):
                break
        time.sleep(0.3)
    hooks = client.get(f"/v1/jobs/{job['id']}/webhooks").json()
    assert sorted(h["event"] for h in hooks) == ["job.queued", "job.started", "job.succeeded"]
    assert all(h["status"] == "delivered" for h in hooks), hooks
    history = [a for h in hooks for a in h["history"]]
    assert sorted(a["status_code"] for a in history if not a["succeeded"]) == [500, 503]
    secret = get_settings().webhook_secret.get_secret_value()
    for req in receiver.requests:
        h = req.headers
        assert verify(
            secret, h["webhook-id"], int(h["webhook-timestamp"]), req.body, h["webhook-signature"]
        )
    # A retried event keeps its webhook-id, so receivers can deduplicate.
    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert len(set(ids)) == 3 and len(ids) == 5
    succeeded = next(r.json for r in receiver.requests if r.json["type"] == "job.succeeded")
    assert succeeded["data"]["id"] == job["id"]
    assert succeeded["data"]["result"]["url"].endswith(f"/v1/jobs/{job['id']}/audio")


def test_410_gone_disables_the_endpoint(
    client: TestClient, worker: Proc, receiver: Receiver
) -> None:
    receiver.script = [410]
    job = client.post(
        "/v1/jobs", json={"text": "go away", "engine": "tone", "webhook_url": receiver.url}
    ).json()
    assert wait_job(client, job["id"])["status"] == "succeeded"
    time.sleep(1.0)
    hooks = client.get(f"/v1/jobs/{job['id']}/webhooks").json()
    # Events written after the 410 are never queued; those already waiting are dropped.
    assert hooks and all(h["status"] == "disabled" for h in hooks), hooks
    assert len(receiver.requests) == 1


def test_wav_bytes_on_disk_match_the_recorded_hash(
    client: TestClient, worker: Proc, tmp_root: Path
) -> None:
    import hashlib

    job = client.post("/v1/jobs", json={"text": "hash me", "engine": "tone"}).json()
    done = wait_job(client, job["id"])
    path = tmp_root / "storage" / "jobs" / str(DEFAULT_TENANT_ID) / job["id"] / "1.wav"
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == done["result"]["sha256"]
    samples, rate = read_wav(data)
    assert rate == 16000 and len(samples) > 0


def test_delivery_rechecks_the_target_at_send_time(
    db: str, receiver: Receiver, monkeypatch: Any
) -> None:
    """A row that points at loopback (allowed when it was written) is refused when the policy
    says no at send time: a failed attempt is recorded and nothing reaches the receiver."""
    import os

    from db import webhooks as wq
    from db.models import WebhookDelivery
    from db.session import get_sessionmaker
    from tasks.webhooks import deliver
    from tests.integration.test_db_lifecycle import _new_job

    job_id = _new_job(db, webhook_url=receiver.url)
    with get_sessionmaker(db)() as s:
        delivery_id = s.query(WebhookDelivery.id).filter_by(job_id=job_id).scalar()
    monkeypatch.setitem(os.environ, "VOICEFARM_WEBHOOK_ALLOW_PRIVATE", "false")
    get_settings.cache_clear()
    try:
        deliver(delivery_id)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert receiver.requests == []
    with get_sessionmaker(db)() as s:
        (attempt,) = wq.attempts_for(s, [delivery_id])
        assert attempt.error and attempt.error.startswith("webhook_url_forbidden")
        assert s.get(WebhookDelivery, delivery_id).status == "pending"  # retried later


def test_pinned_request_reaches_the_checked_address_under_the_original_host(
    receiver: Receiver,
) -> None:
    """The name in the URL is never resolved again: the request goes to the pinned address."""
    import httpx

    from core.webhooks import Target, pinned_request

    port = receiver.server.server_address[1]
    url, headers, ext = pinned_request(Target(f"http://hooks.invalid:{port}/hooks", "127.0.0.1"))
    with httpx.Client() as c:
        assert c.post(url, content=b"{}", headers=headers, extensions=ext).status_code == 200
    assert receiver.requests[0].headers["host"] == f"hooks.invalid:{port}"


def test_progress_events_for_multi_segment_jobs(
    client: TestClient, worker: Proc, receiver: Receiver
) -> None:
    text = " ".join(
        f"Sentence number {i} carries a little more text than before." for i in range(20)
    )
    job = client.post(
        "/v1/jobs", json={"text": text, "engine": "tone", "webhook_url": receiver.url}
    ).json()
    receiver.wait_for(lambda r: r.json["type"] == "job.succeeded", timeout=60)
    total = client.get(f"/v1/jobs/{job['id']}").json()["progress"]["segments_total"]
    assert total >= 3
    progress = receiver.wait_for(lambda r: r.json["type"] == "job.progress")
    done = sorted(r.json["data"]["progress"]["segments_done"] for r in progress)
    assert done == list(range(1, total))  # one per boundary (throttle 0 here), none at the end


def test_retention_deletes_old_finished_jobs_and_their_audio(
    client: TestClient, db: str, tmp_root: Path, monkeypatch: Any, worker: Proc
) -> None:
    import os

    from sqlalchemy import text

    from db.session import get_engine
    from tasks.maintenance import retention

    old = client.post("/v1/jobs", json={"text": "old news", "engine": "tone"}).json()
    new = client.post("/v1/jobs", json={"text": "fresh", "engine": "tone"}).json()
    for j in (old, new):
        assert wait_job(client, j["id"])["status"] == "succeeded"
    with get_engine(db).begin() as c:
        c.execute(
            text("UPDATE jobs SET finished_at = now() - interval '40 days' WHERE id = :i"),
            {"i": old["id"]},
        )
    audio = tmp_root / "storage" / "jobs" / str(DEFAULT_TENANT_ID) / old["id"] / "1.wav"
    assert audio.exists()
    assert retention() == 0  # retention is off by default
    monkeypatch.setitem(os.environ, "VOICEFARM_RETENTION_DAYS", "30")
    get_settings.cache_clear()
    try:
        assert retention() == 1
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert not audio.exists()
    assert client.get(f"/v1/jobs/{old['id']}").status_code == 404
    assert client.get(f"/v1/jobs/{new['id']}").json()["status"] == "succeeded"


def test_cosyvoice_job_with_pinyin_through_a_worker_process(
    client: TestClient, db: str, log_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker process runs the CosyVoice engine over the stand-in of the official module
    (tests/fixtures/cosyvoice_stub, upstream's behaviour; the official code itself runs in
    tests/integration/test_cosyvoice_real.py): a preset job names an SFT speaker of the model
    directory and carries pinyin markup, which reaches the model as written."""
    import json

    import torch

    from tests.fixtures.processes import ROOT, start_worker

    (tmp_path / "cosyvoice2.yaml").write_text("sample_rate: 24000\n")
    torch.save({"中文女": {"embedding": torch.ones(1, 192)}}, tmp_path / "spk2info.pt")
    stub_log = tmp_path / "calls.jsonl"
    monkeypatch.delenv("VOICEFARM_COSYVOICE_SRC", raising=False)  # the stand-in, not upstream
    proc = start_worker(
        log_dir,
        "cosyvoice",
        name="cosy",
        extra_queues="",
        env={
            "PYTHONPATH": str(ROOT / "tests" / "fixtures" / "cosyvoice_stub"),
            "VOICEFARM_COSYVOICE_MODEL_DIR": str(tmp_path),
            "COSYVOICE_STUB_LOG": str(stub_log),
        },
    )
    try:
        use_settings(client, engines="piper,cosyvoice")
        r = client.post(
            "/v1/jobs", json={"text": "她[h][ào]干净。", "engine": "cosyvoice", "voice": "中文女"}
        )
        assert r.status_code == 202, r.text
        done = wait_job(client, r.json()["id"])
        assert done["status"] == "succeeded", proc.tail()
        assert done["result"]["sample_rate"] == 24000
        (call,) = [json.loads(line) for line in stub_log.read_text().splitlines()]
        assert call["text"] == [ord(c) for c in "她[h][ào]干净。"]  # the stand-in's ids
        # A voice the model lacks fails at once, without burning the retry budget.
        r = client.post("/v1/jobs", json={"text": "你好", "engine": "cosyvoice", "voice": "nobody"})
        done = wait_job(client, r.json()["id"])
        assert done["status"] == "failed" and done["attempts"] == 1
        assert done["error"]["code"] == "invalid_input" and "nobody" in done["error"]["message"]
    finally:
        proc.stop()


def test_gradio_style_predict_waits_and_returns_the_audio_url(
    client: TestClient, worker: Proc
) -> None:
    """The call the seed document shows, against the real Piper engine."""
    r = client.post(
        "/api/predict/",
        json={"data": ["预训练音色", None, "Hello from Gradio.", None], "fn_index": 0},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["data"][0].endswith(f"/v1/jobs/{body['job_id']}/audio") and body["duration"] > 0
    audio = client.get(f"/v1/jobs/{body['job_id']}/audio")
    assert_speech(audio.content, rate=22050, words=3)

    # Instruct mode picks an engine that takes instructions (here a fixture engine).
    r = client.post(
        "/api/predict",
        json={"data": ["自然语言控制", None, "她[h][ào]干净", "用兴奋的语气说这句话"]},
    )
    assert r.status_code == 200, r.text
    job = client.get(f"/v1/jobs/{r.json()['job_id']}").json()
    assert job["instruction"] == "用兴奋的语气说这句话" and job["engine"] != "piper"


def test_predict_errors_and_timeout(client: TestClient, worker: Proc) -> None:

    def call(data: list[Any]) -> Any:
        return client.post("/api/predict", json={"data": data})

    # A file path is not a recording: the server never reads paths or fetches URLs it is given.
    assert call(["3s极速复刻", {"path": "prompt.wav"}, "hi", None]).json()["error"]["code"] == (
        "validation_failed"
    )
    assert call(["朗读", None, "hi", None]).json()["error"]["code"] == "unsupported_mode"
    assert call(["x", None]).json()["error"]["code"] == "validation_failed"
    assert call([1, None, 2]).json()["error"]["code"] == "validation_failed"
    assert call(["预训练音色", None, "", None]).json()["error"]["code"] == "text_empty"
    use_settings(client, extra_engines="")
    r = call(["自然语言控制", None, "hi", "say it"])
    assert r.status_code == 422 and r.json()["error"]["code"] == "unsupported_mode"
    use_settings(client, predict_timeout_seconds=0.05)
    text = " ".join(f"Sentence {i} is slow." for i in range(30))
    client.post("/v1/jobs", json={"text": "warm", "engine": "slow"})  # occupy the worker
    r = call(["预训练音色", None, text, None])
    assert r.status_code == 202 and r.json()["is_generating"] is True
    assert r.json()["links"]["self"].endswith(r.json()["job_id"])


def test_each_tenant_signs_its_webhooks_with_its_own_secret(
    client: TestClient, db: str, worker: Proc, receiver: Receiver
) -> None:
    """One tenant cannot sign events another tenant's receiver trusts: a tenant's webhooks carry
    its own secret (`voicefarm tenants webhook-secret NAME`), not the farm's."""
    from core.settings import get_settings
    from core.webhooks import verify
    from db import tenants as tq
    from db.session import session_scope
    from tests.fixtures.tenants import tenant_with_key

    key = tenant_with_key(db, "signer")
    use_settings(client, auth_enabled=True)
    r = client.post(
        "/v1/jobs",
        json={"text": "sign me", "engine": "tone", "webhook_url": receiver.url},
        headers=key.headers,
    )
    assert r.status_code == 202, r.text
    (hook,) = receiver.wait_for(lambda x: x.json["type"] == "job.succeeded", timeout=60)
    with session_scope(db) as s:
        secret = tq.get_tenant_by_name(s, "signer").webhook_secret
    assert secret and secret.startswith("whsec_")
    farm = get_settings().webhook_secret.get_secret_value()
    h = hook.headers
    args = (h["webhook-id"], int(h["webhook-timestamp"]), hook.body, h["webhook-signature"])
    assert verify(secret, *args)
    assert not verify(farm, *args)

"""The API against real PostgreSQL and Redis, no worker: admission, errors, listing, cancel."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from core.engines import AUDIO_FORMATS
from db.models import Job, WebhookDelivery
from db.session import get_sessionmaker
from tests.fixtures.api import use_settings
from tests.fixtures.processes import wait_until


def _count(url: str) -> tuple[int, int]:
    with get_sessionmaker(url)() as s:
        return (
            s.scalar(select(func.count()).select_from(Job)) or 0,
            s.scalar(select(func.count()).select_from(WebhookDelivery)) or 0,
        )


def _queued_messages(redis_client: Any) -> int:
    return int(redis_client.llen("synth.piper")) + int(redis_client.llen("synth.piper.batch"))


def _published(redis_client: Any, queue: str = "synth.piper") -> int:
    """The messages in `queue` once the admission's dispatch has published: a plain job is
    answered before its publish (api/submit.py `submit_plain`), so the test waits for it."""
    return int(
        wait_until(lambda: redis_client.llen(queue), timeout=10, what=f"a message in {queue}")
    )


def test_submit_commits_the_row_and_publishes_one_message(
    client: TestClient, db: str, redis_client: Any
) -> None:
    r = client.post("/v1/jobs", json={"text": "Hello there.", "metadata": {"order": 7}})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["engine"] == "piper"
    assert job["voice"] == "en_US-joe-medium" and job["metadata"] == {"order": 7}
    assert r.headers["location"].endswith(f"/v1/jobs/{job['id']}")
    assert _count(db) == (1, 0)
    assert _published(redis_client) == 1 and _queued_messages(redis_client) == 1
    got = client.get(f"/v1/jobs/{job['id']}").json()
    assert got["status"] == "queued" and got["progress"] == {
        "segments_done": 0,
        "segments_total": None,
    }


def test_batch_priority_goes_to_the_batch_queue(client: TestClient, redis_client: Any) -> None:
    assert client.post("/v1/jobs", json={"text": "x", "priority": "batch"}).status_code == 202
    assert _published(redis_client, "synth.piper.batch") == 1
    assert redis_client.llen("synth.piper") == 0


BAD: list[tuple[dict[str, Any], int, str]] = [
    ({"text": ""}, 422, "text_empty"),
    ({"text": "   \n "}, 422, "text_empty"),
    ({"text": "a" * 5001}, 422, "text_too_long"),
    ({"text": "hi", "engine": "nope"}, 422, "unknown_engine"),
    ({"text": "hi", "voice": "nobody"}, 422, "unknown_voice"),
    ({"text": "hi", "format": "aac"}, 422, "unsupported_format"),
    ({"text": "她[h][ào]干净"}, 422, "markup_invalid"),  # piper has no pinyin
    ({"text": "bad [QQ1]"}, 422, "markup_invalid"),
    ({"text": "hi", "webhook_url": "not-a-url"}, 422, "webhook_url_invalid"),
    ({"text": "hi", "webhook_url": "ftp://example.com/x"}, 422, "webhook_url_invalid"),
    ({"text": "hi", "speed": 9}, 422, "validation_failed"),
    ({"text": "hi", "instruction": "say it loudly"}, 422, "unsupported_mode"),
    ({"text": "hi", "voice": "v" * 129}, 422, "validation_failed"),
    ({"text": "hi", "voice": "a\u0000b"}, 422, "validation_failed"),
    ({"text": "hi", "webhook_url": "https://93.184.216.34/a\u0000b"}, 422, "validation_failed"),
    ({"text": "hi", "sample_rate": 12345}, 422, "validation_failed"),
    ({"text": "hi", "priority": "urgent"}, 422, "validation_failed"),
    ({"text": "hi", "surprise": 1}, 422, "validation_failed"),
    ({"text": 5}, 422, "validation_failed"),
    ({"text": "hi", "metadata": {"k": "v" * 5000}}, 422, "validation_failed"),
    ({"text": "hi\u0000there"}, 422, "markup_invalid"),
    ({"text": "hi", "metadata": {"k": "nul\u0000"}}, 422, "validation_failed"),
    ({"text": "hi", "webhook_url": "https://a..b.com/hook"}, 422, "webhook_url_invalid"),
    ({"text": "hi", "webhook_url": "https://" + "x" * 70 + ".com/"}, 422, "webhook_url_invalid"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD)
def test_bad_input_is_a_4xx_with_a_code_and_writes_nothing(
    client: TestClient, db: str, redis_client: Any, body: dict[str, Any], status: int, code: str
) -> None:
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    assert _count(db) == (0, 0)
    assert _queued_messages(redis_client) == 0


def test_malformed_json_is_a_422(client: TestClient, db: str) -> None:
    r = client.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_failed"
    assert _count(db) == (0, 0)


def test_private_webhook_refused_unless_allowed(
    client: TestClient, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:

    use_settings(client, webhook_allow_private=False)
    r = client.post("/v1/jobs", json={"text": "hi", "webhook_url": "http://127.0.0.1:9/x"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "webhook_url_forbidden"
    assert "VOICEFARM_WEBHOOK_ALLOW_PRIVATE" in r.json()["error"]["message"]
    assert _count(db) == (0, 0)


def test_webhook_job_writes_its_queued_event_in_the_same_transaction(
    client: TestClient, db: str
) -> None:
    r = client.post("/v1/jobs", json={"text": "hi", "webhook_url": "http://127.0.0.1:9/hook"})
    assert r.status_code == 202
    assert _count(db) == (1, 1)
    hooks = client.get(f"/v1/jobs/{r.json()['id']}/webhooks").json()
    assert [h["event"] for h in hooks] == ["job.queued"]


def test_idempotency_key_returns_the_original_job(
    client: TestClient, db: str, redis_client: Any
) -> None:
    h = {"Idempotency-Key": "order-42"}
    a = client.post("/v1/jobs", json={"text": "once"}, headers=h)
    b = client.post("/v1/jobs", json={"text": "once"}, headers=h)
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] == b.json()["id"] and b.headers["idempotent-replayed"] == "true"
    assert _count(db) == (1, 0) and _published(redis_client) == 1
    c = client.post("/v1/jobs", json={"text": "different"}, headers=h)
    assert c.status_code == 409 and c.json()["error"]["code"] == "idempotency_key_reused"
    assert _count(db) == (1, 0)


def test_list_filters_and_paginates_newest_first(client: TestClient) -> None:
    ids = [client.post("/v1/jobs", json={"text": f"job {i}"}).json()["id"] for i in range(5)]
    client.post(f"/v1/jobs/{ids[0]}/cancel")
    page1 = client.get("/v1/jobs", params={"limit": 2}).json()
    page2 = client.get("/v1/jobs", params={"limit": 2, "cursor": page1["next_cursor"]}).json()
    page3 = client.get("/v1/jobs", params={"limit": 2, "cursor": page2["next_cursor"]}).json()
    seen = [j["id"] for p in (page1, page2, page3) for j in p["items"]]
    assert seen == ids[::-1] and page3["next_cursor"] is None
    canceled = client.get("/v1/jobs", params={"status": "canceled"}).json()["items"]
    assert [j["id"] for j in canceled] == [ids[0]]
    assert client.get("/v1/jobs", params={"cursor": "garbage!"}).json()["error"]["code"] == (
        "invalid_cursor"
    )
    assert client.get("/v1/jobs", params={"status": "weird"}).status_code == 422


def test_cancel_queued_then_cancel_again_is_409(client: TestClient) -> None:
    job = client.post("/v1/jobs", json={"text": "stop me"}).json()
    r = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    again = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_not_cancelable"
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "canceled"


def test_unknown_job_and_audio_not_ready(client: TestClient) -> None:
    missing = uuid.uuid4()
    assert client.get(f"/v1/jobs/{missing}").json()["error"]["code"] == "job_not_found"
    assert client.post(f"/v1/jobs/{missing}/cancel").status_code == 404
    assert client.get("/v1/jobs/not-a-uuid").status_code == 422
    job = client.post("/v1/jobs", json={"text": "later"}).json()
    r = client.get(f"/v1/jobs/{job['id']}/audio")
    assert r.status_code == 409 and r.json()["error"]["code"] == "audio_not_ready"


def test_health_ready_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}
    client.post("/v1/jobs", json={"text": "count me"})
    text = client.get("/metrics").text
    assert 'voicefarm_queue_depth{engine="piper",status="queued"} 1.0' in text
    assert "voicefarm_jobs_submitted_total" in text


def test_readyz_reports_a_dead_broker(client: TestClient) -> None:

    use_settings(client, redis_url="redis://127.0.0.1:1/0")
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["broker"].startswith("error")


def test_oversized_bodies_are_413_before_parsing(client: TestClient, db: str) -> None:
    huge = b'{"text": "' + b"a" * 2_000_000 + b'"}'
    r = client.post("/v1/jobs", content=huge, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"text": "'
        for _ in range(20):
            yield b"a" * 100_000
        yield b'"}'

    r = client.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert _count(db) == (0, 0)


def test_tenant_keys_when_auth_is_on(client: TestClient, db: str) -> None:
    """Auth on (the default outside tests): a tenant key admits a job; none or a wrong one is a
    401 that writes nothing; probes stay open. (Keys and isolation: test_tenants.py.)"""
    from tests.fixtures.tenants import tenant_with_key

    use_settings(client, auth_enabled=True)
    key = tenant_with_key(db, "admission")
    assert client.post("/v1/jobs", json={"text": "hi"}).status_code == 401
    bad = client.post("/v1/jobs", json={"text": "hi"}, headers={"authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "unauthorized"
    ok = client.post("/v1/jobs", json={"text": "hi"}, headers=key.headers)
    assert ok.status_code == 202
    assert client.get("/healthz").status_code == 200  # probes stay open
    assert _count(db) == (1, 0)


def test_broker_down_at_admission_still_answers_202_and_keeps_the_job(
    client: TestClient, db: str, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The publish fails (injected: the broker connection refuses); the committed row waits for
    the reconciler, which publishes it once the broker is back."""
    from kombu.exceptions import OperationalError
    from sqlalchemy import text

    from db.session import get_engine
    from tasks.app import celery_app
    from tasks.maintenance import reconcile

    real_send = celery_app.send_task
    refused = threading.Event()

    def refuse(*a: Any, **k: Any) -> None:
        refused.set()
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    def unmarked() -> bool:
        # The failed publish clears the job's dispatch mark, for the next dispatch to pick it.
        with get_engine(db).begin() as c:
            return c.execute(text("SELECT dispatched_at IS NULL FROM jobs")).scalar_one()

    monkeypatch.setattr(celery_app, "send_task", refuse)
    r = client.post("/v1/jobs", json={"text": "kept safe"})
    assert r.status_code == 202 and _count(db) == (1, 0)
    assert refused.wait(10), "admission never tried to publish"
    wait_until(unmarked, timeout=10, what="the failed publish to clear the dispatch mark")
    assert _queued_messages(redis_client) == 0
    monkeypatch.setattr(celery_app, "send_task", real_send)

    with get_engine(db).begin() as c:  # let the grace period pass
        c.execute(text("UPDATE jobs SET dispatched_at = now() - interval '1 minute'"))
    assert reconcile()["republished"] == 1
    assert _queued_messages(redis_client) == 1


def test_engines_lists_piper_with_its_voice_and_markup(client: TestClient) -> None:
    engines = {e["name"]: e for e in client.get("/v1/engines").json()}
    piper = engines["piper"]
    assert piper["default"] is True and piper["default_voice"] == "en_US-joe-medium"
    assert piper["voices"] == ["en_US-joe-medium"] and piper["markup"] == ["arpabet"]
    assert piper["sample_rate"] == 22050 and piper["formats"] == list(AUDIO_FORMATS)


def test_the_async_lane_writes_the_row_the_session_path_writes(
    client: TestClient, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain job is admitted in the event loop by one asyncpg statement (db/admission.py);
    the same body admitted by the session path (the lane switched off) is the same row, column
    for column, and the same answer."""
    import api.routes.jobs as routes
    from db import admission as lane

    body = {
        "text": "Same row, 1,000 times: naïve “quotes” 你好.",
        "metadata": {"order": [1, "два", None], "nested": {"ok": True}},
        "format": "flac",
        "bit_depth": 24,
        "speed": 1.25,
        "priority": "batch",
        "sample_rate": 16000,
        "subtitles": "srt",
        "loudness": -16.5,
    }
    inserted: list[Any] = []
    real_insert = lane.insert_plain

    async def spy(*a: Any, **k: Any) -> Any:
        inserted.append(await real_insert(*a, **k))
        return inserted[-1]

    monkeypatch.setattr(lane, "insert_plain", spy)
    first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k"})
    assert first.status_code == 202, first.text
    assert len(inserted) == 1 and str(inserted[0].id) == first.json()["id"]

    async def off(*a: Any, **k: Any) -> None:
        return None

    monkeypatch.setattr(routes, "submit_plain", off)
    use_settings(client, max_attempts=3)  # a fresh settings object: no cached catalog either
    second = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k2"})
    assert second.status_code == 202, second.text
    assert len(inserted) == 1

    varying = {"id", "idempotency_key", "created_at", "updated_at", "dispatched_at"}
    with get_sessionmaker(db)() as s:
        rows = {
            str(j.id): {c: v for c, v in j.__dict__.items() if not c.startswith("_")}
            for j in s.scalars(select(Job))
        }
    a, b = rows[first.json()["id"]], rows[second.json()["id"]]
    assert a.keys() == b.keys() and len(a) > 40
    assert {k: v for k, v in a.items() if k not in varying} == {
        k: v for k, v in b.items() if k not in varying
    }
    assert a["pool"] == "default" and a["status"] == "queued" and a["request_hash"]
    answers = [r.json() for r in (first, second)]
    for answer in answers:
        for key in ("id", "created_at", "updated_at", "links"):
            answer.pop(key, None)
    assert answers[0] == answers[1]

"""Per-tenant limits at admission, against real PostgreSQL and Redis (no worker): each limit is a
429 with Retry-After and a message naming it, writes nothing, and lifts when its cause goes;
parallel submissions cannot overshoot."""

from __future__ import annotations

import io
import threading
import wave
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text, update

from db.models import DEFAULT_TENANT_ID, Job, Tenant, Voice, WebhookDelivery
from db.session import get_engine, get_sessionmaker, session_scope
from tests.fixtures.api import use_settings

LIMITS = ("max_running", "jobs_per_minute", "chars_per_day", "max_voices")


@pytest.fixture
def limits(db: str) -> Iterator[Any]:
    """Set the default tenant's own limits (auth is off in tests: every request is that tenant);
    put them back to the farm's defaults afterwards."""

    def set_limits(**values: int | None) -> None:
        with session_scope(db) as s:
            s.execute(update(Tenant).where(Tenant.id == DEFAULT_TENANT_ID).values(**values))

    yield set_limits
    set_limits(**dict.fromkeys(LIMITS))


def _written(url: str, redis_client: Any) -> tuple[int, int, int, int]:
    """(job rows, webhook rows, voice rows, messages on the piper queues)."""
    with get_sessionmaker(url)() as s:
        jobs = s.scalar(select(func.count()).select_from(Job)) or 0
        hooks = s.scalar(select(func.count()).select_from(WebhookDelivery)) or 0
        voices = s.scalar(select(func.count()).select_from(Voice)) or 0
    messages = int(redis_client.llen("synth.piper")) + int(redis_client.llen("synth.piper.batch"))
    return jobs, hooks, voices, messages


def _refused(r: Any, limit: str, value: int) -> int:
    assert r.status_code == 429, r.text
    err = r.json()["error"]
    assert err["code"] == "quota_exceeded"
    assert f"{limit} is {value}" in err["message"], err["message"]
    retry_after = int(r.headers["retry-after"])
    assert retry_after >= 1
    return retry_after


def _age_jobs(url: str, interval: str) -> None:
    with get_engine(url).begin() as c:
        c.execute(text(f"UPDATE jobs SET created_at = created_at - interval '{interval}'"))


def test_active_jobs_limit_refuses_then_recovers_on_cancel(
    client: TestClient, db: str, redis_client: Any, limits: Any
) -> None:
    limits(max_running=2)
    ids = [client.post("/v1/jobs", json={"text": f"job {i}"}).json()["id"] for i in range(2)]
    before = _written(db, redis_client)
    r = client.post("/v1/jobs", json={"text": "one too many"})
    assert _refused(r, "max_active_jobs", 2) <= 10
    assert "2 active (queued or running) jobs" in r.json()["error"]["message"]
    assert _written(db, redis_client) == before  # nothing written, nothing published
    assert client.post(f"/v1/jobs/{ids[0]}/cancel").status_code == 200
    assert client.post("/v1/jobs", json={"text": "room again"}).status_code == 202


def test_jobs_per_minute_refuses_until_the_window_moves(
    client: TestClient, db: str, redis_client: Any, limits: Any
) -> None:
    limits(jobs_per_minute=3)
    for i in range(3):
        assert client.post("/v1/jobs", json={"text": f"job {i}"}).status_code == 202
    before = _written(db, redis_client)
    r = client.post("/v1/jobs", json={"text": "fourth"})
    retry_after = _refused(r, "jobs_per_minute", 3)
    assert 50 <= retry_after <= 60  # the oldest job leaves the window in about a minute
    assert _written(db, redis_client) == before
    _age_jobs(db, "30 seconds")
    assert 20 <= _refused(client.post("/v1/jobs", json={"text": "x"}), "jobs_per_minute", 3) <= 30
    _age_jobs(db, "31 seconds")  # now all a minute old
    assert client.post("/v1/jobs", json={"text": "fourth"}).status_code == 202


def test_chars_per_day_refuses_until_utc_midnight(
    client: TestClient, db: str, redis_client: Any, limits: Any
) -> None:
    limits(chars_per_day=20)
    assert client.post("/v1/jobs", json={"text": "a" * 15}).status_code == 202
    before = _written(db, redis_client)
    r = client.post("/v1/jobs", json={"text": "b" * 6})
    retry_after = _refused(r, "chars_per_day", 20)
    with get_engine(db).connect() as c:
        to_midnight = c.execute(
            text(
                "SELECT extract(epoch FROM (date_trunc('day', now() AT TIME ZONE 'UTC')"
                " + interval '1 day') - (now() AT TIME ZONE 'UTC'))"
            )
        ).scalar_one()
    assert abs(retry_after - float(to_midnight)) <= 5
    assert "15 characters today" in r.json()["error"]["message"]
    assert _written(db, redis_client) == before
    # What fits still passes; yesterday's text no longer counts.
    assert client.post("/v1/jobs", json={"text": "c" * 5}).status_code == 202
    _age_jobs(db, "1 day")
    assert client.post("/v1/jobs", json={"text": "d" * 20}).status_code == 202


def test_farm_default_applies_when_the_tenant_has_no_limit_of_its_own(
    client: TestClient, db: str, limits: Any
) -> None:
    use_settings(client, tenant_max_active_jobs=1)
    assert client.post("/v1/jobs", json={"text": "one"}).status_code == 202
    _refused(client.post("/v1/jobs", json={"text": "two"}), "max_active_jobs", 1)
    limits(max_running=0)  # the tenant's own 0: unlimited, whatever the farm's default
    assert client.post("/v1/jobs", json={"text": "two"}).status_code == 202


def _wav() -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\x01\x00" * 16000 * 4)
    return buf.getvalue()


def _upload(client: TestClient) -> Any:
    form = {"transcript": "hello there", "name": "joe"}
    return client.post("/v1/voices", data=form, files={"audio": ("voice.wav", _wav())})


def test_max_voices_refuses_then_recovers_on_delete(
    client: TestClient, db: str, redis_client: Any, limits: Any
) -> None:
    from core.settings import get_settings
    from core.storage import get_storage

    limits(max_voices=2)
    ids = []
    for _ in range(2):
        r = _upload(client)
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    storage = get_storage(get_settings())
    objects = len(list(storage.list_keys("voices/")))
    before = _written(db, redis_client)
    _refused(_upload(client), "max_voices", 2)
    assert _written(db, redis_client) == before
    assert len(list(storage.list_keys("voices/"))) == objects  # not even the upload is stored
    assert client.delete(f"/v1/voices/{ids[0]}").status_code == 204
    assert _upload(client).status_code == 202


def test_parallel_submissions_cannot_overshoot_the_active_limit(
    client: TestClient, db: str, limits: Any
) -> None:
    limits(max_running=5)
    codes: list[int] = []
    start = threading.Barrier(20)

    def post(i: int) -> None:
        start.wait()
        codes.append(client.post("/v1/jobs", json={"text": f"parallel {i}"}).status_code)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [202] * 5 + [429] * 15
    with get_sessionmaker(db)() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 5

"""The API under hostile input and impatient clients, against real PostgreSQL and Redis and, where
the behaviour lives in the server (slow readers, waiting callers), a real uvicorn process."""

from __future__ import annotations

import asyncio
import base64
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from core.settings import get_settings
from core.storage import FileStorage
from db.models import Job, WebhookDelivery
from db.session import get_engine, get_sessionmaker
from tests.fixtures.api import use_settings
from tests.fixtures.processes import Proc, free_port, start_api, wait_until

JSON = {"content-type": "application/json"}


def _rows(url: str) -> tuple[int, int]:
    with get_sessionmaker(url)() as s:
        return (
            s.scalar(select(func.count()).select_from(Job)) or 0,
            s.scalar(select(func.count()).select_from(WebhookDelivery)) or 0,
        )


RAW_BAD: list[tuple[bytes, str]] = [
    (b'{"text": "abc \\ud800"}', "text"),
    (b'{"text": "hi", "metadata": {"k": "\\udfff"}}', "metadata"),
    (b'{"text": "hi", "metadata": {"\\ud800": 1}}', "metadata"),
    (b'{"text": "hi", "metadata": {"list": ["ok", "\\ud800"]}}', "metadata"),
    (b'{"text": "hi", "\\ud800": 1}', ""),
    (b'{"text": "hi", "engine": "\\ud800"}', "engine"),
    (b'{"text": "hi", "instruction": "\\udbff"}', "instruction"),
    (b'{"text": "hi", "webhook_url": "https://example.com/\\ud800"}', "webhook_url"),
    (b'{"text": "hi", "metadata": {"x": NaN}}', "metadata"),
    (b'{"text": "hi", "metadata": {"x": 1e999}}', "metadata"),
    (b'{"text": "hi", "metadata": {"x": {"y": -Infinity}}}', "metadata"),
    (b'{"text": "hi", "speed": NaN}', "speed"),
]


@pytest.mark.parametrize(("raw", "field"), RAW_BAD)
def test_lone_surrogates_and_non_finite_numbers_are_422(
    client: TestClient, db: str, raw: bytes, field: str
) -> None:
    r = client.post("/v1/jobs", content=raw, headers=JSON)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "validation_failed" and err["message"]
    assert err.get("field", "") == field
    assert _rows(db) == (0, 0)


def test_unparseable_bodies_are_422_with_a_code(client: TestClient, db: str) -> None:
    too_big = b'{"text": "hi", "metadata": {"n": ' + b"9" * 5000 + b"}}"
    for raw in (too_big, b"[" * 100_000, b'{"text": "\xff\xfe"}'):
        r = client.post("/v1/jobs", content=raw, headers=JSON)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "validation_failed"
    assert _rows(db) == (0, 0)


@pytest.mark.parametrize(
    "body",
    [
        {"text": "\u200b\u200b\u200b"},
        {"text": "\ufeff"},
        {"text": "..."},
        {"text": "\u0301\u0302\u0303"},
        {"text": "  \u2060 \n \u200d "},
        {"text": ""},
    ],
)
def test_text_with_nothing_to_say_is_text_empty(
    client: TestClient, db: str, body: dict[str, str]
) -> None:
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "text_empty"
    assert _rows(db) == (0, 0)


def _cursor(ts: str) -> str:
    raw = f"{ts}|00000000-0000-0000-0000-000000000000".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_hand_made_cursors_are_normalised_or_refused(client: TestClient) -> None:
    ids = [client.post("/v1/jobs", json={"text": f"job {i}"}).json()["id"] for i in range(2)]
    # +23:00 is a valid ISO offset that PostgreSQL cannot read; it is turned into UTC first.
    far_future = client.get("/v1/jobs", params={"cursor": _cursor("2999-01-01T00:00:00+23:00")})
    assert far_future.status_code == 200, far_future.text
    assert [j["id"] for j in far_future.json()["items"]] == ids[::-1]
    for ts in ("2026-01-01T00:00:00", "0001-01-01T00:00:00+23:00", "9999-12-31T23:59:59-23:00"):
        r = client.get("/v1/jobs", params={"cursor": _cursor(ts)})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_cursor", ts


def test_predict_refuses_bad_unicode_and_empty_text(client: TestClient, db: str) -> None:
    for raw in (
        '{"data": ["预训练音色", null, "abc \\ud800"]}'.encode(),
        '{"data": ["预训练音色", null, "\\u200b"]}'.encode(),
    ):
        r = client.post("/api/predict", content=raw, headers=JSON)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] in ("validation_failed", "text_empty")
    assert _rows(db) == (0, 0)


def test_options_and_unknown_methods_list_every_allowed_method(client: TestClient) -> None:
    r = client.options("/v1/jobs")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD, POST"
    r = client.request("PUT", "/v1/jobs/00000000-0000-0000-0000-000000000000")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    assert r.json()["error"]["code"] == "method_not_allowed"


def test_database_outage_is_503_with_retry_after(client: TestClient) -> None:
    """PostgreSQL refuses connections (nothing listens on the port): every route that needs it
    answers 503 `service_unavailable` with Retry-After, never a 500."""
    use_settings(client, database_url=f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/x")
    job = "00000000-0000-0000-0000-000000000000"
    calls = [
        ("POST", "/v1/jobs", {"text": "hello"}),
        ("GET", f"/v1/jobs/{job}", None),
        ("GET", "/v1/jobs", None),
        ("POST", f"/v1/jobs/{job}/cancel", None),
        ("GET", f"/v1/jobs/{job}/webhooks", None),
        ("POST", "/api/predict", {"data": ["预训练音色", None, "hello"]}),
    ]
    for method, path, body in calls:
        r = client.request(method, path, json=body)
        assert r.status_code == 503, (path, r.text)
        assert r.json()["error"]["code"] == "service_unavailable"
        assert int(r.headers["retry-after"]) > 0
    ready = client.get("/readyz")
    assert ready.status_code == 503 and int(ready.headers["retry-after"]) > 0
    assert ready.json()["checks"]["database"].startswith("error")


def test_a_failed_commit_is_503_and_sends_no_message(
    client: TestClient, db: str, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit at the request boundary fails (injected: the connection drops at COMMIT):
    the client gets a 503, not an id, and no Celery message for a row that does not exist.
    A job with a webhook, so the usual (session) path admits it."""
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.orm import Session

    def dropped(self: Session) -> None:
        raise OperationalError("COMMIT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(Session, "commit", dropped)
    body = {"text": "never half-written", "webhook_url": "http://127.0.0.1:9/hook"}
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 503 and r.json()["error"]["code"] == "service_unavailable"
    monkeypatch.undo()
    assert _rows(db) == (0, 0)
    assert redis_client.llen("synth.piper") == 0


def test_a_connection_lost_in_the_async_lane_is_503_and_sends_no_message(
    client: TestClient, db: str, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain job's one statement (db/admission.py) loses its connection (injected: asyncpg
    raises as for a server that closed it): a 503 with Retry-After, as on the usual path, and
    no message; the next request gets a new connection and is admitted."""
    import asyncpg

    real = asyncpg.connection.Connection.fetch

    async def dropped(self: Any, *a: Any, **k: Any) -> None:
        raise asyncpg.ConnectionDoesNotExistError(
            "connection was closed in the middle of operation"
        )

    monkeypatch.setattr(asyncpg.connection.Connection, "fetch", dropped)
    r = client.post("/v1/jobs", json={"text": "never half-written"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "service_unavailable"
    assert int(r.headers["retry-after"]) > 0
    monkeypatch.setattr(asyncpg.connection.Connection, "fetch", real)
    assert _rows(db) == (0, 0)
    assert redis_client.llen("synth.piper") == 0
    assert client.post("/v1/jobs", json={"text": "admitted"}).status_code == 202
    assert _rows(db) == (1, 0)


# --- a real server ---------------------------------------------------------------------------


@pytest.fixture
def api(db: str, log_dir: Path) -> Any:
    procs: list[Proc] = []

    def start(**env: str) -> str:
        port = free_port()
        procs.append(start_api(log_dir, port, env))
        return f"http://127.0.0.1:{port}"

    yield start
    for p in procs:
        p.stop()


def _succeeded_job(client: TestClient, db: str, size: int) -> str:
    """A job whose audio is `size` bytes in the file store, as a worker would have left it."""
    job_id: str = client.post("/v1/jobs", json={"text": "big"}).json()["id"]
    key = f"jobs/{job_id}/1.wav"
    FileStorage(get_settings().storage_dir).put(key, b"\0" * size, "audio/wav")
    with get_engine(db).begin() as c:
        c.execute(
            text(
                "UPDATE jobs SET status='succeeded', attempts=1, finished_at=now(), "
                "result_key=:k, result_format='wav', result_sample_rate=22050, "
                "result_duration_s=1, result_bytes=:n, result_sha256='x' WHERE id=:id"
            ),
            {"k": key, "n": size, "id": job_id},
        )
    return job_id


def _idle_in_transaction(db: str) -> int:
    with get_engine(db).connect() as c:
        return int(
            c.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND state LIKE 'idle in transaction%'"
                )
            ).scalar_one()
        )


def test_slow_downloads_hold_no_database_connection(client: TestClient, db: str, api: Any) -> None:
    """Fifteen clients start downloading a large file and stop reading. Before the fix each held
    a pooled connection "idle in transaction" until it finished, so the pool (10) ran dry."""
    base = api()
    job_id = _succeeded_job(client, db, 64 * 1024 * 1024)
    port = int(base.rsplit(":", 1)[1])
    readers = []
    try:
        for _ in range(15):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sock.sendall(f"GET /v1/jobs/{job_id}/audio HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert sock.recv(256).startswith(b"HTTP/1.1 200")
            readers.append(sock)
        with httpx.Client(base_url=base, timeout=20) as http:
            for _ in range(12):  # more requests than the pool has connections
                assert http.get(f"/v1/jobs/{job_id}").status_code == 200
            assert http.get("/v1/jobs").status_code == 200
            assert http.get("/readyz").status_code == 200
        assert _idle_in_transaction(db) == 0
    finally:
        for sock in readers:
            sock.close()


def _metric(base: str, name: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_waiting_predict_calls_hold_no_threads_are_capped_and_stop_when_clients_leave(
    db: str, api: Any
) -> None:
    """60 Gradio-style calls for jobs no worker runs: 50 wait (the cap), 10 get 429 with
    Retry-After and create nothing. While they wait the API answers probes and reads (before
    the fix each waiter held one of 40 threads). A job that ends wakes its caller; callers that
    hang up stop waiting."""
    base = api(VOICEFARM_PREDICT_MAX_WAITING="50", VOICEFARM_PREDICT_TIMEOUT_SECONDS="300")
    body = {"data": ["预训练音色", None, "Wait for me."]}

    async def scenario() -> None:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
            calls = [asyncio.create_task(http.post("/api/predict", json=body)) for _ in range(60)]
            await asyncio.to_thread(
                wait_until,
                lambda: (
                    sum(t.done() for t in calls) == 10
                    and _metric(base, "voicefarm_predict_waiting") == 50
                ),
                60,
                "50 waiters and 10 refusals",
            )
            refused_calls = [t for t in calls if t.done()]
            refused = [t.result() for t in refused_calls]
            assert all(r.status_code == 429 for r in refused), [r.text for r in refused]
            assert all(int(r.headers["retry-after"]) > 0 for r in refused)
            assert refused[0].json()["error"]["code"] == "too_many_waiting"
            async with httpx.AsyncClient(base_url=base, timeout=10) as probe:
                assert (await probe.get("/healthz")).status_code == 200
                assert (await probe.get("/readyz")).status_code == 200

            def fifty() -> list[dict[str, Any]] | None:
                # A caller counts as waiting from its slot on; its row may commit a moment later.
                got = httpx.get(f"{base}/v1/jobs", params={"limit": 200}, timeout=10).json()
                items: list[dict[str, Any]] = got["items"]
                return items if len(items) == 50 else None

            listed = await asyncio.to_thread(wait_until, fifty, 30, "the 50 waiting jobs")
            # One job ends (as a worker would finish it): exactly its caller wakes with the URL.
            done_id = listed[0]["id"]
            with get_engine(db).begin() as c:
                c.execute(
                    text(
                        "UPDATE jobs SET status='failed', error_code='engine_error', "
                        "error_message='boom', finished_at=now() WHERE id=:id"
                    ),
                    {"id": done_id},
                )
            waiting = [t for t in calls if t not in refused_calls]
            woke = await asyncio.to_thread(
                wait_until, lambda: [t for t in waiting if t.done()], 30, "a caller to wake"
            )
            assert len(woke) == 1
            answer = woke[0].result()
            assert answer.status_code == 200 and answer.json()["job_id"] == done_id
            assert answer.json()["error"]["code"] == "engine_error"
            for t in calls:
                t.cancel()  # the remaining 49 callers hang up
            await asyncio.gather(*calls, return_exceptions=True)
        await asyncio.to_thread(
            wait_until,
            lambda: _metric(base, "voicefarm_predict_waiting") == 0,
            30,
            "abandoned waits to end",
        )

    asyncio.run(scenario())
    assert _rows(db)[0] == 50

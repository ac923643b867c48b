"""Defects a hostile probe of a running API found after the first hardening pass: requests that
wait on each other's row locks, input nested past what the serialiser takes, audio whose object
is gone, HEAD on readable resources. Each test failed before its fix."""

from __future__ import annotations

import asyncio
import collections
import inspect
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, get_args, get_type_hints

import httpx
import pytest
from fastapi import Response
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import text

from core.settings import get_settings
from core.storage import FileStorage, get_storage
from db.session import get_engine
from tests.fixtures.api import use_settings
from tests.fixtures.processes import Proc, free_port, start_api
from tests.fixtures.s3 import TEST_BUCKET_PREFIX, moto_server, s3_env

JSON = {"content-type": "application/json"}


@pytest.fixture
def api(db: str, log_dir: Path) -> Iterator[Callable[..., str]]:
    procs: list[Proc] = []

    def start(**env: str) -> str:
        port = free_port()
        procs.append(start_api(log_dir, port, env))
        return f"http://127.0.0.1:{port}"

    yield start
    for p in procs:
        p.stop()


def _burst(base: str, n: int, method: str, path: str, **kw: object) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=n)
        async with httpx.AsyncClient(base_url=base, timeout=90, limits=limits) as http:
            return await asyncio.gather(*[http.request(method, path, **kw) for _ in range(n)])  # type: ignore[arg-type]

    return asyncio.run(run())


def test_a_burst_with_one_idempotency_key_neither_wedges_nor_fails(
    api: Callable[..., str],
) -> None:
    """80 clients send the same Idempotency-Key at once. The first insert holds the key's
    index entry; the others wait on it inside PostgreSQL, each holding one of the threadpool's
    40 threads. Before the fix FastAPI validated the first request's return value in a second
    thread before its session committed: no thread ever came, and the API hung for good."""
    base = api()
    key = str(uuid.uuid4())
    answers = _burst(
        base, 80, "POST", "/v1/jobs", json={"text": "once"}, headers={"Idempotency-Key": key}
    )
    codes = collections.Counter(r.status_code for r in answers)
    assert codes == {202: 80}, (codes, [r.text for r in answers if r.status_code != 202][:3])
    assert len({r.json()["id"] for r in answers}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in answers) == 79
    with httpx.Client(base_url=base, timeout=30) as http:
        assert http.get("/v1/jobs").status_code == 200
        assert http.get("/readyz").status_code == 200


def test_a_burst_of_cancels_of_one_job_answers_once(api: Callable[..., str]) -> None:
    """80 cancels of one job at once: one 200, every other a 409, none a 503 or a hang."""
    base = api()
    with httpx.Client(base_url=base, timeout=30) as http:
        job_id = http.post("/v1/jobs", json={"text": "cancel me"}).json()["id"]
    answers = _burst(base, 80, "POST", f"/v1/jobs/{job_id}/cancel")
    codes = collections.Counter(r.status_code for r in answers)
    assert codes == {200: 1, 409: 79}, (codes, [r.text for r in answers if r.status_code >= 500])
    assert {r.json()["error"]["code"] for r in answers if r.status_code == 409} == {
        "job_not_cancelable"
    }


@pytest.mark.parametrize("depth", [33, 300, 900])
@pytest.mark.parametrize(("opening", "closing"), [(b'{"a":', b"}"), (b"[", b"]")])
def test_metadata_nested_past_the_limit_is_422(
    client: TestClient, db: str, depth: int, opening: bytes, closing: bytes
) -> None:
    """Before the fix, metadata nested ~260 levels deep passed validation and then failed
    pydantic's serialiser as a 500 (the request hash)."""
    raw = b'{"text": "hi", "metadata": {"m": ' + opening * depth + b"1" + closing * depth + b"}}"
    r = client.post("/v1/jobs", content=raw, headers=JSON)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_failed"
    assert r.json()["error"]["field"] == "metadata"
    shallow = b'{"text": "hi", "metadata": {"m": ' + opening * 30 + b"1" + closing * 30 + b"}}"
    assert client.post("/v1/jobs", content=shallow, headers=JSON).status_code == 202


def _succeeded(client: TestClient, db: str) -> tuple[str, str]:
    """(job id, result key) of a job whose row says it succeeded; nothing is stored."""
    job_id: str = client.post("/v1/jobs", json={"text": "stored once"}).json()["id"]
    key = f"jobs/{job_id}/1.wav"
    with get_engine(db).begin() as c:
        c.execute(
            text(
                "UPDATE jobs SET status='succeeded', attempts=1, finished_at=now(), "
                "result_key=:k, result_format='wav', result_sample_rate=22050, "
                "result_duration_s=1, result_bytes=5, result_sha256='x' WHERE id=:id"
            ),
            {"k": key, "id": job_id},
        )
    return job_id, key


def test_audio_missing_from_file_storage_is_410_not_a_broken_200(
    client: TestClient, db: str
) -> None:
    """The row says succeeded, the file is gone. Before the fix: 200 and headers, then the
    body failed with FileNotFoundError and the connection broke mid-response."""
    job_id, key = _succeeded(client, db)
    r = client.get(f"/v1/jobs/{job_id}/audio")
    assert r.status_code == 410, r.text
    assert r.json()["error"]["code"] == "audio_gone"
    FileStorage(get_settings().storage_dir).put(key, b"RIFF!", "audio/wav")
    r = client.get(f"/v1/jobs/{job_id}/audio")
    assert r.status_code == 200 and r.content == b"RIFF!"


def _s3_settings(endpoint: str) -> dict[str, str]:
    env = s3_env(endpoint, f"{TEST_BUCKET_PREFIX}-{uuid.uuid4().hex[:8]}")
    return {k.removeprefix("VOICEFARM_").lower(): v for k, v in env.items()}


def test_audio_missing_from_s3_is_410_and_s3_down_is_502(client: TestClient, db: str) -> None:
    """Before the fix a missing object was redirected to S3's own 404 page, and an unreachable
    S3 endpoint was a 500 at best; now 410 `audio_gone` and 502 `storage_error`."""
    job_id, key = _succeeded(client, db)
    with moto_server() as endpoint:
        s3 = _s3_settings(endpoint)
        use_settings(client, **s3)
        r = client.get(f"/v1/jobs/{job_id}/audio", follow_redirects=False)
        assert r.status_code == 410, r.text
        assert r.json()["error"]["code"] == "audio_gone"
        get_storage(client.app.dependency_overrides[get_settings]()).put(key, b"RIFF!", "a/w")
        r = client.get(f"/v1/jobs/{job_id}/audio", follow_redirects=False)
        assert r.status_code == 307 and httpx.get(r.headers["location"]).content == b"RIFF!"
    use_settings(client, **{**s3, "s3_endpoint_url": f"http://127.0.0.1:{free_port()}"})
    r = client.get(f"/v1/jobs/{job_id}/audio", follow_redirects=False)
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "storage_error"
    assert int(r.headers["retry-after"]) > 0


def test_head_answers_like_get_without_a_body(client: TestClient, db: str) -> None:
    """Before the fix every HEAD was 405 (FastAPI registers GET only), though RFC 9110 expects
    HEAD wherever GET is; uptime checks and load balancers probe with it."""
    job_id, key = _succeeded(client, db)
    FileStorage(get_settings().storage_dir).put(key, b"RIFF!", "audio/wav")
    for path in (
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/engines",
        "/v1/jobs",
        f"/v1/jobs/{job_id}",
        f"/v1/jobs/{job_id}/audio",
        f"/v1/jobs/{job_id}/webhooks",
    ):
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code == 200, (path, head.status_code)
        assert head.content == b"", path
        assert head.headers["content-type"] == got.headers["content-type"], path
    missing = client.head("/v1/jobs/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404 and missing.content == b""
    post_only = client.head("/api/predict")
    assert post_only.status_code == 405 and post_only.headers["allow"] == "POST"


def test_401_names_the_bearer_scheme(client: TestClient, db: str) -> None:
    """Before the fix a 401 had no WWW-Authenticate header, which RFC 9110 requires."""
    from tests.fixtures.tenants import tenant_with_key

    use_settings(client, auth_enabled=True, auth_failures_per_minute=100)
    k = tenant_with_key(db, "probe").key
    for auth in (None, "", "Bearer", "Basic azE=", "Bearer k3", f"Bearer {k},{k}", f"Bearer  {k}"):
        r = client.get("/v1/jobs", headers={} if auth is None else {"Authorization": auth})
        assert r.status_code == 401, auth
        assert r.json()["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"] == 'Bearer realm="voicefarm"'
    assert client.get("/v1/jobs", headers={"Authorization": f"bearer {k}"}).status_code == 200


def _uses(dependant: Any, call: Callable[..., object]) -> bool:
    return any(d.call is call or _uses(d, call) for d in dependant.dependencies)


def _api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):  # FastAPI's lazily included router
            yield from _api_routes(route.original_router.routes)


def test_every_sync_route_with_a_session_returns_a_response() -> None:
    """The convention that keeps the burst tests above green, for every route, present and
    future: a sync route that takes a SessionDep returns a Response (`api.deps.json_response`),
    never a model FastAPI would serialise in a second thread before the session commits."""
    from api.deps import get_db
    from api.main import create_app

    checked = []
    for route in _api_routes(create_app().routes):
        if not _uses(route.dependant, get_db):
            continue
        if inspect.iscoroutinefunction(route.endpoint):
            continue
        returned = get_type_hints(route.endpoint)["return"]
        kinds = get_args(returned) or (returned,)
        assert all(isinstance(k, type) and issubclass(k, Response) for k in kinds), (
            f"{route.path} returns {returned}; return api.deps.json_response(...) instead"
        )
        checked.append(route.path)
    assert "/v1/jobs/{job_id}/cancel" in checked

"""Tenants and API keys: keys made, listed and revoked (CLI included), every kind of bad key a
401, failed auth rate limited per address in Redis, admin scope, and a table-driven check that
tenant B reaches nothing of tenant A's through any endpoint."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from core.settings import Environment, Settings, get_settings
from core.storage import get_storage, job_audio_key
from db.models import DEFAULT_TENANT_ID, ApiKey, Job, Voice
from db.session import session_scope
from tests.fixtures import voice_audio as va
from tests.fixtures.api import use_settings
from tests.fixtures.tenants import IssuedKey, make_key, make_tenant, tenant_with_key

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
    )


def _auth_on(client: TestClient, **overrides: Any) -> None:
    use_settings(client, auth_enabled=True, **overrides)


def test_keys_created_listed_and_revoked_with_the_cli(client: TestClient, db: str) -> None:
    _auth_on(client)
    made = _cli("tenants", "create", "acme", "--max-running", "5", "--weight", "2")
    assert made.returncode == 0, made.stderr
    assert _cli("tenants", "create", "acme").returncode == 2  # names are unique
    assert _cli("tenants", "set", "acme", "--jobs-per-minute", "30").returncode == 0
    tenants = _cli("tenants", "list").stdout
    assert "acme" in tenants and "default" in tenants
    secret = _cli("tenants", "webhook-secret", "acme").stdout.strip()
    assert (
        secret.startswith("whsec_") and secret in _cli("tenants", "webhook-secret", "acme").stdout
    )
    rotated = _cli("tenants", "webhook-secret", "acme", "--rotate").stdout.strip()
    assert rotated.startswith("whsec_") and rotated != secret

    created = _cli("keys", "create", "--tenant", "acme", "--name", "ci")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("vf_") and len(key) == 3 + 8 + 1 + 43
    prefix = key.split("_")[1]
    assert "not shown again" in created.stderr

    listed = _cli("keys", "list", "--tenant", "acme")
    assert listed.returncode == 0 and prefix in listed.stdout and "ci" in listed.stdout
    assert key.split("_", 2)[2] not in listed.stdout  # never the secret
    with session_scope(db) as s:
        row = s.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
        assert row is not None and key not in row.key_hash and len(row.key_hash) == 64
        assert row.last_used_at is None

    ok = client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"})
    assert ok.status_code == 200, ok.text
    with session_scope(db) as s:
        assert s.scalar(select(ApiKey.last_used_at).where(ApiKey.prefix == prefix)) is not None

    revoked = _cli("keys", "revoke", prefix)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert "already" in _cli("keys", "revoke", prefix).stdout
    assert _cli("keys", "revoke", "nosuchkey").returncode == 2
    r = client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert _cli("keys", "list").stdout.count(prefix) == 1

    admin = _cli("keys", "create", "--admin")
    assert admin.returncode == 0 and admin.stdout.startswith("vf_")
    assert "admin" in _cli("keys", "list").stdout
    assert _cli("keys", "create").returncode != 0  # --tenant or --admin


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer not-a-key",
        "Bearer vf_abcdefgh_" + "A" * 43,  # well formed, no such prefix
        "WRONG_SECRET",
        "REVOKED",
    ],
)
def test_every_bad_key_is_a_401(client: TestClient, db: str, header: str | None) -> None:
    _auth_on(client, auth_failures_per_minute=100)
    good = tenant_with_key(db, "t")
    if header == "WRONG_SECRET":
        header = f"Bearer vf_{good.prefix}_" + "B" * 43
    elif header == "REVOKED":
        assert _cli("keys", "revoke", good.prefix).returncode == 0
        header = f"Bearer {good.key}"
    r = client.get("/v1/jobs", headers={} if header is None else {"Authorization": header})
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "unauthorized"
    assert r.headers["www-authenticate"] == 'Bearer realm="voicefarm"'
    for path in ("/healthz", "/metrics"):  # probes and Prometheus stay open
        assert client.get(path).status_code == 200


def test_failed_auth_is_rate_limited_per_address_and_recovers(
    client: TestClient, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import api.auth

    _auth_on(client, auth_failures_per_minute=3)
    good = tenant_with_key(db, "t")
    wrong = {"Authorization": "Bearer vf_abcdefgh_" + "A" * 43}
    for _ in range(3):
        assert client.get("/v1/jobs", headers=wrong).status_code == 401
    for headers in (wrong, good.headers):  # once limited, even a good key waits
        r = client.get("/v1/jobs", headers=headers)
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_auth_failures"
        assert 1 <= int(r.headers["retry-after"]) <= 60
    # The counters live in Redis (shared by every API process), keyed by the minute.
    real = api.auth.time.time
    monkeypatch.setattr(api.auth.time, "time", lambda: real() + 61)
    assert client.get("/v1/jobs", headers=good.headers).status_code == 200


def test_redis_down_never_fails_auth(client: TestClient, db: str) -> None:
    """The limiter fails open: with Redis unreachable a bad key is still a 401, a good one 200."""
    _auth_on(client, auth_failures_per_minute=1, redis_url="redis://127.0.0.1:1/0")
    good = tenant_with_key(db, "t")
    for _ in range(3):
        r = client.get("/v1/jobs", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401
    assert client.get("/v1/jobs", headers=good.headers).status_code == 200


def test_a_database_outage_is_a_503_not_a_bad_key(
    client: TestClient, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key lookup (db/keys.py, asyncpg in the event loop) loses its connection (injected:
    asyncpg raises as for a server that closed it): 503 with Retry-After, not a 401, and the
    address is not charged a failed authentication; the next request authenticates."""
    import asyncpg

    _auth_on(client, auth_failures_per_minute=1)
    good = tenant_with_key(db, "t")
    real = asyncpg.connection.Connection.fetch

    async def dropped(self: Any, *a: Any, **k: Any) -> None:
        raise asyncpg.ConnectionDoesNotExistError(
            "connection was closed in the middle of operation"
        )

    monkeypatch.setattr(asyncpg.connection.Connection, "fetch", dropped)
    for _ in range(2):  # past the limit of 1 failure, were they counted as failures
        r = client.get("/v1/jobs", headers=good.headers)
        assert r.status_code == 503 and r.json()["error"]["code"] == "service_unavailable"
        assert int(r.headers["retry-after"]) > 0
    monkeypatch.setattr(asyncpg.connection.Connection, "fetch", real)
    assert client.get("/v1/jobs", headers=good.headers).status_code == 200


def test_auth_off_acts_as_the_default_tenant_and_production_refuses_it(
    client: TestClient, db: str
) -> None:
    r = client.post("/v1/jobs", json={"text": "hi"})  # the suite runs with auth off
    assert r.status_code == 202
    with session_scope(db) as s:
        assert s.scalar(select(Job.tenant_id)) == DEFAULT_TENANT_ID
    prod: dict[str, Any] = {
        "environment": Environment.production,
        "webhook_secret": "whsec_" + "cHJvZHVjdGlvbi1zZWNyZXQtMTIzNDU2",
        "flower_basic_auth": "ops:s3cret",
    }
    assert Settings(**prod, auth_enabled=True).auth_enabled
    with pytest.raises(ValueError, match="VOICEFARM_AUTH_ENABLED"):
        Settings(**prod, auth_enabled=False)
    Settings(**prod, auth_enabled=False, allow_auth_disabled_in_production=True)


def test_admin_scope_sees_every_tenant(client: TestClient, db: str) -> None:
    _auth_on(client)
    a, b, admin = tenant_with_key(db, "a"), tenant_with_key(db, "b"), make_key(db)
    ja = client.post("/v1/jobs", json={"text": "from a"}, headers=a.headers).json()["id"]
    jb = client.post("/v1/jobs", json={"text": "from b"}, headers=b.headers).json()["id"]
    listed = {j["id"] for j in client.get("/v1/jobs", headers=admin.headers).json()["items"]}
    assert {ja, jb} <= listed
    assert client.get(f"/v1/jobs/{ja}", headers=admin.headers).status_code == 200
    assert client.get(f"/v1/jobs/{jb}/webhooks", headers=admin.headers).status_code == 200
    own = {j["id"] for j in client.get("/v1/jobs", headers=a.headers).json()["items"]}
    assert own == {ja}
    assert client.post(f"/v1/jobs/{jb}/cancel", headers=admin.headers).status_code == 200


def test_jobs_name_their_tenant_and_admins_filter_by_it(client: TestClient, db: str) -> None:
    """Every job says whose it is; `?tenant_id=` narrows an admin's list to one tenant, and a
    tenant key asking for another tenant's jobs gets none (never another tenant's rows)."""
    _auth_on(client)
    a, b, admin = tenant_with_key(db, "a"), tenant_with_key(db, "b"), make_key(db)
    ja = client.post("/v1/jobs", json={"text": "from a"}, headers=a.headers).json()
    jb = client.post("/v1/jobs", json={"text": "from b"}, headers=b.headers).json()
    assert (ja["tenant_id"], jb["tenant_id"]) == (str(a.tenant_id), str(b.tenant_id))

    def listed(key: IssuedKey, tenant: object) -> list[str]:
        r = client.get("/v1/jobs", params={"tenant_id": str(tenant)}, headers=key.headers)
        assert r.status_code == 200, r.text
        return [j["id"] for j in r.json()["items"]]

    assert listed(admin, b.tenant_id) == [jb["id"]]
    assert listed(admin, a.tenant_id) == [ja["id"]]
    assert listed(a, a.tenant_id) == [ja["id"]]
    assert listed(a, b.tenant_id) == []
    bad = client.get("/v1/jobs", params={"tenant_id": "acme"}, headers=admin.headers)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_failed"


# --- isolation --------------------------------------------------------------------------------


@dataclass
class World:
    a: IssuedKey
    b: IssuedKey
    job: str  # A's job, succeeded, with audio in storage
    queued: str  # A's queued job
    voice: str  # A's ready voice
    cursor: str  # from A's job list
    voice_cursor: str


def _world(client: TestClient, db: str) -> World:
    _auth_on(client, engines="piper,cosyvoice")
    a, b = tenant_with_key(db, "tenant-a"), tenant_with_key(db, "tenant-b")
    ids = []
    for text in ("one", "two", "three"):
        r = client.post(
            "/v1/jobs", json={"text": text}, headers={**a.headers, "Idempotency-Key": text}
        )
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    tenant_a = a.tenant_id
    assert tenant_a is not None
    key = job_audio_key(str(tenant_a), ids[0], 1, "wav")
    get_storage(get_settings()).put(key, b"RIFF....WAVE", "audio/wav")
    with session_scope(db) as s:
        s.execute(
            update(Job)
            .where(Job.id == uuid.UUID(ids[0]))
            .values(
                status="succeeded", attempts=1, result_key=key, result_format="wav",
                result_bytes=12, result_sha256="0" * 64,
            )
        )  # fmt: skip
    voices = []
    for name in ("v1", "v2"):
        r = client.post(
            "/v1/voices",
            files={"audio": ("p.wav", va.speech(), "audio/wav")},
            data={"transcript": "Hello there.", "name": name},
            headers=a.headers,
        )
        assert r.status_code == 202, r.text
        voices.append(r.json()["id"])
        assert r.json()["id"] in r.headers["location"]
    with session_scope(db) as s:
        s.execute(update(Voice).values(status="ready"))
        assert {str(t) for t in s.scalars(select(Voice.tenant_id))} == {str(tenant_a)}
        upload = s.scalar(select(Voice.upload_key).where(Voice.id == uuid.UUID(voices[0])))
        assert upload == f"voices/{tenant_a}/{voices[0]}/upload"  # storage keys carry the tenant
    cursor = client.get("/v1/jobs?limit=1", headers=a.headers).json()["next_cursor"]
    vcursor = client.get("/v1/voices?limit=1", headers=a.headers).json()["next_cursor"]
    assert cursor and vcursor
    return World(a, b, ids[0], ids[1], voices[0], cursor, vcursor)


Probe = Callable[[TestClient, World, dict[str, str]], Any]

# (what B tries with A's ids, the status B must get, the code B must get or None for a 2xx
# that must show only B's own rows)
CASES: list[tuple[str, Probe, int, str | None]] = [
    ("get job", lambda c, w, h: c.get(f"/v1/jobs/{w.job}", headers=h), 404, "job_not_found"),
    ("head job", lambda c, w, h: c.head(f"/v1/jobs/{w.job}", headers=h), 404, None),
    (
        "cancel job",
        lambda c, w, h: c.post(f"/v1/jobs/{w.queued}/cancel", headers=h),
        404,
        "job_not_found",
    ),
    ("audio", lambda c, w, h: c.get(f"/v1/jobs/{w.job}/audio", headers=h), 404, "job_not_found"),
    (
        "webhooks",
        lambda c, w, h: c.get(f"/v1/jobs/{w.job}/webhooks", headers=h),
        404,
        "job_not_found",
    ),
    (
        "get voice",
        lambda c, w, h: c.get(f"/v1/voices/{w.voice}", headers=h),
        404,
        "voice_not_found",
    ),
    (
        "patch voice",
        lambda c, w, h: c.patch(f"/v1/voices/{w.voice}", json={"name": "mine"}, headers=h),
        404,
        "voice_not_found",
    ),
    (
        "delete voice",
        lambda c, w, h: c.delete(f"/v1/voices/{w.voice}", headers=h),
        404,
        "voice_not_found",
    ),
    (
        "job with A's voice",
        lambda c, w, h: c.post(
            "/v1/jobs",
            json={"text": "hi", "engine": "cosyvoice", "voice_id": w.voice},
            headers=h,
        ),
        422,
        "unknown_voice",
    ),
    (
        "predict with A's voice",
        lambda c, w, h: c.post(
            "/api/predict", json={"data": ["3s极速复刻", w.voice, "hi", None]}, headers=h
        ),
        422,
        "unknown_voice",
    ),
    ("list jobs", lambda c, w, h: c.get("/v1/jobs", headers=h), 200, None),
    ("jobs cursor", lambda c, w, h: c.get(f"/v1/jobs?cursor={w.cursor}", headers=h), 200, None),
    ("list voices", lambda c, w, h: c.get("/v1/voices", headers=h), 200, None),
    (
        "voices cursor",
        lambda c, w, h: c.get(f"/v1/voices?cursor={w.voice_cursor}", headers=h),
        200,
        None,
    ),
    (
        "same Idempotency-Key",
        lambda c, w, h: c.post(
            "/v1/jobs", json={"text": "one"}, headers={**h, "Idempotency-Key": "one"}
        ),
        202,
        None,
    ),
]


def _snapshot(db: str) -> list[tuple[Any, ...]]:
    with session_scope(db) as s:
        jobs = s.execute(select(Job.id, Job.status, Job.tenant_id, Job.text).order_by(Job.id)).all()
        voices = s.execute(
            select(Voice.id, Voice.name, Voice.status, Voice.revision).order_by(Voice.id)
        ).all()
        return [tuple(r) for r in jobs] + [tuple(r) for r in voices]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_tenant_b_reaches_nothing_of_tenant_a(
    client: TestClient, db: str, case: tuple[str, Probe, int, str | None]
) -> None:
    name, probe, status, code = case
    w = _world(client, db)
    before = [row for row in _snapshot(db)]
    r = probe(client, w, w.b.headers)
    assert r.status_code == status, (name, r.status_code, r.text)
    if code is not None:
        assert r.json()["error"]["code"] == code, (name, r.text)
    a_ids = {w.job, w.queued, w.voice}
    if r.status_code == 200 and "items" in r.json():
        assert r.json()["items"] == [], name  # B has nothing: A's rows never show
    if r.status_code == 202:  # B's own new job, not A's replayed one
        assert r.json()["id"] not in a_ids and "idempotent-replayed" not in r.headers
    assert not a_ids & set(r.text.split('"')), name  # no A id anywhere in the answer
    after = _snapshot(db)
    a_rows = [row for row in before if str(row[0]) in a_ids]
    assert [row for row in after if str(row[0]) in a_ids] == a_rows, name  # A's unchanged
    # ... and A still sees and uses all of it.
    assert client.get(f"/v1/jobs/{w.job}/audio", headers=w.a.headers).status_code == 200
    assert client.get(f"/v1/voices/{w.voice}", headers=w.a.headers).status_code == 200


def test_tenant_names_label_submitted_jobs(client: TestClient, db: str) -> None:
    _auth_on(client)
    a = tenant_with_key(db, "metrics-a")
    make_tenant(db, "metrics-b")
    assert client.post("/v1/jobs", json={"text": "hi"}, headers=a.headers).status_code == 202
    text = client.get("/metrics").text
    assert 'voicefarm_jobs_submitted_total{engine="piper",tenant="metrics-a"}' in text

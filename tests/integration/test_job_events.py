"""Server-sent events of jobs (api/routes/events.py) against a real uvicorn and the shared worker:
one job's stream sends its status changes and progress and then closes; the list stream sends
the caller's jobs as they change; another tenant's job is a 404; past the cap, 429."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.fixtures.api import use_settings
from tests.fixtures.live_api import live_api
from tests.fixtures.processes import Proc
from tests.fixtures.tenants import tenant_with_key

# Segments are cut at about 400 characters: this is several, half a second each (`slow`).
TEXT = " ".join(f"Sentence number {i} is spoken here, at an unhurried pace." for i in range(40))


@pytest.fixture(scope="module")
def api(database: str, redis_client: object, log_dir: Path) -> Iterator[str]:
    with live_api(log_dir) as base:
        yield base


def read_events(response: httpx.Response, until: str | None = None) -> Iterator[tuple[str, Any]]:
    """(event, data) pairs of a text/event-stream body; comments and `retry:` are skipped."""
    name, data = "message", []
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            yield name, json.loads("\n".join(data))
            if name == until:
                return
            name, data = "message", []


def test_job_stream_sends_status_and_progress_then_closes(api: str, worker: Proc, db: str) -> None:
    with httpx.Client(base_url=api, timeout=30) as http:
        job = http.post("/v1/jobs", json={"text": TEXT, "engine": "slow"}).json()
        started = time.monotonic()
        with http.stream("GET", f"/v1/jobs/{job['id']}/events") as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            events = list(read_events(r))  # the server closes after `done`
    assert time.monotonic() - started < 30, worker.tail()
    names = [n for n, _ in events]
    statuses = [d["status"] for n, d in events if n == "status"]
    assert statuses[0] in ("queued", "running")
    assert statuses[-1] == "succeeded", (events, worker.tail())
    assert "running" in statuses
    assert names[-1] == "done" and events[-1][1] == {"id": job["id"], "status": "succeeded"}
    final = [d for n, d in events if n == "status"][-1]
    assert final["result"]["url"] == f"{api}/v1/jobs/{job['id']}/audio"
    progress = [d["progress"]["segments_done"] for n, d in events if n == "progress"]
    assert progress, "a job of several segments reports progress"
    assert progress == sorted(progress)


def test_job_stream_of_a_finished_job_ends_at_once(api: str, worker: Proc, db: str) -> None:
    with httpx.Client(base_url=api, timeout=30) as http:
        job = http.post("/v1/jobs", json={"text": "Short.", "engine": "fail"}).json()
        with http.stream("GET", f"/v1/jobs/{job['id']}/events") as r:
            events = list(read_events(r))
        with http.stream("GET", f"/v1/jobs/{job['id']}/events") as r:
            again = list(read_events(r))
    assert events[-2][1]["status"] == "failed" and events[-2][1]["error"]["code"]
    assert [n for n, _ in again] == ["status", "done"]


def test_list_stream_sends_the_callers_jobs_as_they_change(api: str, worker: Proc, db: str) -> None:
    seen: dict[str, list[str]] = {}
    with httpx.Client(base_url=api, timeout=30) as http:
        with http.stream("GET", "/v1/jobs/events") as r:
            assert r.status_code == 200
            job = http.post("/v1/jobs", json={"text": "List me.", "engine": "tone"}).json()
            deadline = time.monotonic() + 30
            for name, data in read_events(r):
                assert name == "job"
                seen.setdefault(data["id"], []).append(data["status"])
                if seen.get(job["id"], [""])[-1] == "succeeded" or time.monotonic() > deadline:
                    break
        # The client left: the stream's place is given back (the next one is served).
        with http.stream("GET", f"/v1/jobs/{job['id']}/events") as r:
            assert [n for n, _ in read_events(r)][-1] == "done"
    assert seen[job["id"]][-1] == "succeeded", (seen, worker.tail())


def test_another_tenants_job_is_404_and_the_cap_is_429(client: TestClient, db: str) -> None:
    from api.job_events import JobEvents

    use_settings(client, auth_enabled=True)
    a, b = tenant_with_key(db, "events-a"), tenant_with_key(db, "events-b")
    job = client.post("/v1/jobs", json={"text": "Mine.", "engine": "tone"}, headers=a.headers)
    assert job.status_code == 202
    url = f"/v1/jobs/{job.json()['id']}/events"
    r = client.get(url, headers=b.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
    assert client.get(url).status_code == 401
    app = client.app
    assert isinstance(app, FastAPI)
    app.state.job_events = JobEvents(db, "http://testserver", capacity=0)
    r = client.get(url, headers=a.headers)
    assert r.status_code == 429 and r.headers["Retry-After"]
    assert r.json()["error"]["code"] == "too_many_streams"
    assert client.get("/v1/jobs/events", headers=a.headers).status_code == 429

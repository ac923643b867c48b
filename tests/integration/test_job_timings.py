"""segments.json and subtitle files from a real worker: times that match the audio to the sample,
the routes that serve them (404, 409, tenant scope), and their removal with the job."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from db.models import DEFAULT_TENANT_ID
from tests.fixtures.api import use_settings
from tests.fixtures.audio_checks import read_wav
from tests.fixtures.engines import RATE, tone
from tests.fixtures.processes import Proc, wait_until
from tests.fixtures.tenants import tenant_with_key
from tests.integration.test_worker_jobs import wait_job
from workers.audio import SEGMENT_GAP_S

TEXT = " ".join(f"Sentence number {i} carries a little more text than before." for i in range(24))
_TIME = r"(\d\d):(\d\d):(\d\d)[,.](\d\d\d)"
_CUE = re.compile(rf"^{_TIME} --> {_TIME}$")


def _seconds(groups: tuple[str, ...]) -> float:
    h, m, s, ms = (int(g) for g in groups)
    return h * 3600 + m * 60 + s + ms / 1000


def parse_cues(body: str, fmt: str) -> list[tuple[float, float, str]]:
    """(start, end, text) of each cue; SRT cues must be numbered 1, 2, ... in order."""
    if fmt == "vtt":
        assert body.startswith("WEBVTT\n\n")
        body = body[len("WEBVTT\n\n") :]
    cues = []
    for n, block in enumerate(b for b in body.strip("\n").split("\n\n")):
        lines = block.split("\n")
        if fmt == "srt":
            assert lines.pop(0) == str(n + 1)
        m = _CUE.match(lines[0])
        assert m, block
        cues.append((_seconds(m.groups()[:4]), _seconds(m.groups()[4:]), " ".join(lines[1:])))
    return cues


def _finished(client: TestClient, worker: Proc, body: dict[str, Any]) -> dict[str, Any]:
    job = client.post("/v1/jobs", json=body).json()
    done = wait_job(client, job["id"])
    assert done["status"] == "succeeded", worker.tail()
    return done


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_subtitles_and_timings_match_the_audio(
    client: TestClient, worker: Proc, tmp_root: Path, fmt: str
) -> None:
    done = _finished(client, worker, {"text": TEXT, "engine": "tone", "subtitles": fmt})
    jid = done["id"]
    assert done["links"]["timings"].endswith(f"/v1/jobs/{jid}/timings")
    assert done["links"]["subtitles"].endswith(f"/v1/jobs/{jid}/subtitles")

    r = client.get(f"/v1/jobs/{jid}/timings")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    timings = r.json()
    # The texts the engine spoke (after normalisation), in order.
    segments = [t["text"] for t in timings]
    assert len(segments) >= 3 and [t["index"] for t in timings] == list(range(len(segments)))
    # Sample-exact: each segment is its tone, and the writer's gap lies between segments.
    gap = int(RATE * SEGMENT_GAP_S) / RATE
    at = 0.0
    for t, text in zip(timings, segments, strict=True):
        assert t["start"] == pytest.approx(at, abs=1e-6)
        assert t["end"] - t["start"] == pytest.approx(len(tone(text).samples) / RATE, abs=1e-6)
        at = t["end"] + gap
    samples, rate = read_wav(client.get(f"/v1/jobs/{jid}/audio").content)
    duration = len(samples) / rate
    assert timings[-1]["end"] == pytest.approx(duration, abs=1e-6)

    r = client.get(f"/v1/jobs/{jid}/subtitles")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(
        "application/x-subrip" if fmt == "srt" else "text/vtt"
    )
    assert f'filename="{jid}.{fmt}"' in r.headers["content-disposition"]
    cues = parse_cues(r.text, fmt)
    assert len(cues) == len(segments)
    for (start, end, text), t in zip(cues, timings, strict=True):
        assert start == pytest.approx(t["start"], abs=0.0005)
        assert end == pytest.approx(t["end"], abs=0.0005)
        assert end <= duration + 0.0005
        assert text.replace(" ", "") == t["text"].replace(" ", "")
    assert abs(cues[-1][1] - timings[-1]["end"]) <= 0.001

    # Stored beside the audio; no kept segment outlives the job.
    folder = tmp_root / "storage" / "jobs" / str(DEFAULT_TENANT_ID) / jid
    # Kept segments are dropped just after the finish commits: wait for that, not a moment.
    wait_until(
        lambda: (
            sorted(p.name for p in folder.iterdir())
            == sorted(["1.wav", "1.segments.json", f"1.{fmt}"])
        ),
        timeout=30,
        what="only the audio, timings and subtitles to remain",
    )
    assert json.loads((folder / "1.segments.json").read_text()) == timings


def test_timings_without_subtitles_and_the_refusals(client: TestClient, worker: Proc) -> None:
    done = _finished(client, worker, {"text": "One. Two.", "engine": "tone"})
    jid = done["id"]
    assert done["links"]["subtitles"] is None and done["links"]["timings"]
    timings = client.get(f"/v1/jobs/{jid}/timings").json()
    assert [t["text"] for t in timings] == ["One. Two."]
    r = client.get(f"/v1/jobs/{jid}/subtitles")
    assert r.status_code == 404 and r.json()["error"]["code"] == "subtitles_not_requested"

    # Before success: 409 audio_not_ready (the slow engine is still on its first segment).
    body = {"text": "Slow one. Slow two.", "engine": "slow", "subtitles": "vtt"}
    queued = client.post("/v1/jobs", json=body).json()
    for route in ("subtitles", "timings"):
        r = client.get(f"/v1/jobs/{queued['id']}/{route}")
        assert r.status_code == 409 and r.json()["error"]["code"] == "audio_not_ready"
    assert queued["links"]["subtitles"] is None
    wait_job(client, queued["id"])
    r = client.get(f"/v1/jobs/{queued['id']}/subtitles")
    assert r.status_code == 200 and r.text.startswith("WEBVTT")

    r = client.post("/v1/jobs", json={"text": "x", "engine": "tone", "subtitles": "ass"})
    assert r.status_code == 422


def test_timings_and_subtitles_are_scoped_to_their_tenant(
    client: TestClient, worker: Proc, db: str
) -> None:
    use_settings(client, auth_enabled=True)
    a, b = tenant_with_key(db, "subs-a"), tenant_with_key(db, "subs-b")
    body = {"text": "Mine. Only mine.", "engine": "tone", "subtitles": "srt"}
    job = client.post("/v1/jobs", json=body, headers=a.headers).json()
    done = wait_until(
        lambda: client.get(f"/v1/jobs/{job['id']}", headers=a.headers).json()["finished_at"],
        timeout=60,
        what="the job to finish",
    )
    assert client.get(f"/v1/jobs/{job['id']}", headers=a.headers).json()["status"] == (
        "succeeded"
    ), worker.tail()
    assert done
    for route in ("subtitles", "timings"):
        assert client.get(f"/v1/jobs/{job['id']}/{route}", headers=a.headers).status_code == 200
        r = client.get(f"/v1/jobs/{job['id']}/{route}", headers=b.headers)
        assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
        assert client.get(f"/v1/jobs/{job['id']}/{route}").status_code == 401

"""What a worker stores: nothing for empty or silent audio; streamed WAV files otherwise."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from db.models import DEFAULT_TENANT_ID
from tests.fixtures.audio_checks import read_wav
from tests.fixtures.processes import Proc, wait_until
from tests.integration.test_worker_jobs import wait_job


@pytest.mark.parametrize("engine", ["empty", "silent"])
def test_empty_or_silent_audio_fails_the_job_and_stores_nothing(
    client: TestClient, worker: Proc, tmp_root: Path, engine: str
) -> None:
    text = "First sentence here. And a second one to make two segments."
    job = client.post("/v1/jobs", json={"text": text, "engine": engine}).json()
    done = wait_job(client, job["id"])
    assert done["status"] == "failed", worker.tail()
    assert done["attempts"] == 1  # not retried: the engine would say nothing again
    assert done["error"]["code"] == "empty_audio"
    assert ("no audio" if engine == "empty" else "silence") in done["error"]["message"]
    assert done["result"] is None
    assert not list((tmp_root / "storage" / "jobs").glob(f"{job['id']}/*"))
    assert client.get(f"/v1/jobs/{job['id']}/audio").status_code != 200


def test_resampled_multi_segment_job_is_streamed_to_storage(
    client: TestClient, worker: Proc, tmp_root: Path
) -> None:
    text = " ".join(
        f"Sentence number {i} carries a little more text than before." for i in range(20)
    )
    job = client.post("/v1/jobs", json={"text": text, "engine": "tone", "sample_rate": 8000}).json()
    done = wait_job(client, job["id"])
    assert done["status"] == "succeeded", worker.tail()
    result = done["result"]
    # Under the tenant: jobs/<tenant id>/<job id>/<attempt>.wav (auth off: the default tenant).
    folder = tmp_root / "storage" / "jobs" / str(DEFAULT_TENANT_ID) / job["id"]
    data = (folder / "1.wav").read_bytes()
    assert len(data) == result["bytes"] and hashlib.sha256(data).hexdigest() == result["sha256"]
    samples, rate = read_wav(data)
    assert rate == result["sample_rate"] == 8000
    assert abs(len(samples) / rate - result["duration_s"]) <= 0.001
    # No temporary file, half-written object or kept segment is left beside it; only its timings.
    # Kept segments are dropped just after the finish commits: wait for that, not a moment.
    wait_until(
        lambda: sorted(p.name for p in folder.iterdir()) == ["1.segments.json", "1.wav"],
        timeout=30,
        what="only the audio and its timings to remain",
    )

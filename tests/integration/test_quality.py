"""Quality checks on every result, with real workers: clipped, mostly silent and NaN output fail
the job with `quality_check_failed` and the figure, record the measurements, and store nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.fixtures.processes import Proc
from tests.integration.test_worker_jobs import wait_job

TEXT = "First sentence here, long enough to count. And a second one to make two segments."


@pytest.mark.parametrize(
    ("engine", "figure", "measured"),
    [
        ("clipped", "of samples are clipped at full scale", "clipped_ratio"),
        ("mostlysilent", "of the audio is silent", "silence_ratio"),
        ("nan", "samples are NaN or infinite", "nan_count"),
    ],
)
def test_broken_audio_fails_the_job_with_the_figure_and_stores_nothing(
    client: TestClient, worker: Proc, tmp_root: Path, engine: str, figure: str, measured: str
) -> None:
    job = client.post("/v1/jobs", json={"text": TEXT, "engine": engine, "format": "mp3"}).json()
    done = wait_job(client, job["id"])
    assert done["status"] == "failed", worker.tail()
    assert done["attempts"] == 1  # not retried: the engine would do the same again
    assert done["error"]["code"] == "quality_check_failed"
    assert figure in done["error"]["message"], done["error"]
    assert done["quality"][measured] > {"clipped_ratio": 0.3, "silence_ratio": 0.8}.get(measured, 0)
    assert done["result"] is None
    assert not list((tmp_root / "storage" / "jobs").glob(f"*/{job['id']}/*.mp3"))
    assert client.get(f"/v1/jobs/{job['id']}/audio").status_code != 200


def test_good_audio_passes_every_check(client: TestClient, worker: Proc) -> None:
    job = client.post("/v1/jobs", json={"text": TEXT, "engine": "tone"}).json()
    done = wait_job(client, job["id"])
    assert done["status"] == "succeeded", worker.tail()
    q = done["quality"]
    assert q["nan_count"] == 0 and q["clipped_ratio"] == 0 and q["silence_ratio"] < 0.2
    assert 10 < q["chars_per_second"] < 25  # the tone: 20 characters a second, pauses aside

"""Every output format through a real job (tone fixture engine, shared worker): decoded back at
the right rate and length, served with its Content-Type and extension, stored under it (S3
ContentType included); loudness normalised to within 1 LU; admission refuses what cannot be made."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pyloudnorm
import pytest
import soundfile
from fastapi.testclient import TestClient

from core.engines import AUDIO_FORMATS, CONTENT_TYPES
from db.models import DEFAULT_TENANT_ID
from tests.fixtures.processes import Proc, start_worker
from tests.fixtures.s3 import TEST_BUCKET_PREFIX, moto_server, s3_env
from tests.integration.test_worker_jobs import wait_job

TEXT = "The first sentence is spoken here. A second one follows it, a little longer than that."


def _decode(data: bytes, fmt: str, rate: int, bit_depth: int | None) -> np.ndarray:
    if fmt == "pcm":
        width = (bit_depth or 16) // 8
        raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, width)
        quads = np.zeros((len(raw), 4), dtype=np.uint8)
        quads[:, 4 - width :] = raw
        return quads.view("<i4").ravel().astype(np.float64) / 2**31
    samples, got = soundfile.read(io.BytesIO(data), dtype="float64")
    assert got == rate
    return np.asarray(samples)


def _job(client: TestClient, **options: Any) -> dict[str, Any]:
    r = client.post("/v1/jobs", json={"text": TEXT, "engine": "tone", **options})
    assert r.status_code == 202, r.text
    return wait_job(client, r.json()["id"])


@pytest.mark.parametrize(
    ("fmt", "bit_depth", "sample_rate", "rate"),
    [
        ("wav", None, None, 16000),
        ("wav", 24, 8000, 8000),
        ("flac", 16, None, 16000),
        ("flac", 24, 44100, 44100),
        ("mp3", None, 22050, 22050),
        ("ogg", None, None, 16000),
        ("opus", None, None, 16000),
        ("opus", None, 48000, 48000),
        ("pcm", None, None, 16000),
        ("pcm", 24, 24000, 24000),
    ],
)
def test_each_format_is_stored_served_and_decodes_back(
    client: TestClient,
    worker: Proc,
    tmp_root: Path,
    fmt: str,
    bit_depth: int | None,
    sample_rate: int | None,
    rate: int,
) -> None:
    options = {"format": fmt, "bit_depth": bit_depth, "sample_rate": sample_rate}
    done = _job(client, **{k: v for k, v in options.items() if v is not None})
    assert done["status"] == "succeeded", (done, worker.tail())
    result = done["result"]
    depth = (bit_depth or 16) if fmt in ("wav", "flac", "pcm") else None
    assert (result["format"], result["sample_rate"], result["bit_depth"]) == (fmt, rate, depth)
    assert result["content_type"] == CONTENT_TYPES[fmt]
    r = client.get(f"/v1/jobs/{done['id']}/audio")
    assert r.status_code == 200
    assert r.headers["content-type"] == CONTENT_TYPES[fmt]
    assert r.headers["content-disposition"] == f'attachment; filename="{done["id"]}.{fmt}"'
    assert len(r.content) == result["bytes"]
    if fmt == "pcm":
        assert r.headers["x-audio-sample-rate"] == str(rate)
        assert r.headers["x-audio-encoding"] == f"s{depth}le"
    folder = tmp_root / "storage" / "jobs" / str(DEFAULT_TENANT_ID) / done["id"]
    assert (folder / f"1.{fmt}").read_bytes() == r.content
    samples = _decode(r.content, fmt, rate, depth)
    lossy = fmt in ("mp3", "ogg", "opus")
    assert len(samples) / rate == pytest.approx(result["duration_s"], abs=0.08 if lossy else 0.001)
    assert result["duration_s"] == done["quality"]["duration_s"] > 1.0
    # The 220 Hz tone survives every codec.
    spectrum = np.abs(np.fft.rfft(samples[: rate // 2]))
    assert abs(np.argmax(spectrum) * 2 - 220) <= 4


def test_engines_list_every_format(client: TestClient) -> None:
    engines = client.get("/v1/engines").json()
    assert engines and all(e["formats"] == list(AUDIO_FORMATS) for e in engines)


@pytest.mark.parametrize(
    ("options", "code", "field"),
    [
        ({"format": "aac"}, "unsupported_format", "format"),
        ({"format": "mp3", "bit_depth": 24}, "unsupported_format", "bit_depth"),
        ({"format": "wav", "bit_depth": 20}, "unsupported_format", "bit_depth"),
        ({"format": "opus", "sample_rate": 22050}, "unsupported_format", "sample_rate"),
        ({"loudness": -60}, "validation_failed", "loudness"),
        ({"loudness": 0}, "validation_failed", "loudness"),
    ],
)
def test_admission_refuses_what_cannot_be_made(
    client: TestClient, options: dict[str, Any], code: str, field: str
) -> None:
    r = client.post("/v1/jobs", json={"text": TEXT, "engine": "tone", **options})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert (error["code"], error.get("field")) == (code, field), error


@pytest.mark.parametrize(("fmt", "target"), [("wav", -23.0), ("flac", -16.0), ("mp3", -12.0)])
def test_loudness_is_normalised_within_one_lu(
    client: TestClient, worker: Proc, fmt: str, target: float
) -> None:
    done = _job(client, format=fmt, loudness=target)
    assert done["status"] == "succeeded", (done, worker.tail())
    data = client.get(f"/v1/jobs/{done['id']}/audio").content
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float64")
    assert pyloudnorm.Meter(rate).integrated_loudness(samples) == pytest.approx(target, abs=1.0)
    quality = done["quality"]
    assert quality["loudness_lufs"] == pytest.approx(target, abs=0.2)
    assert quality["loudness_input_lufs"] == pytest.approx(-14.4, abs=1.5)  # 0.3 sine
    assert quality["output_peak"] <= 10 ** (-1 / 20) + 1e-4


def test_loudness_is_measured_without_a_target(client: TestClient, worker: Proc) -> None:
    done = _job(client)
    assert done["status"] == "succeeded", worker.tail()
    quality = done["quality"]
    assert quality["loudness_lufs"] == quality["loudness_input_lufs"]
    assert set(quality) >= {
        "duration_s",
        "chars_per_second",
        "silence_ratio",
        "clipped_ratio",
        "peak",
        "nan_count",
    }


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url


def test_s3_objects_carry_the_format_content_type(
    s3_endpoint: str, db: str, log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker on S3 serving `solo` (a tone engine no shared worker takes)."""
    from api.main import create_app
    from core.settings import get_settings

    bucket = f"{TEST_BUCKET_PREFIX}-{uuid.uuid4().hex[:8]}"
    env = s3_env(s3_endpoint, bucket)
    proc = start_worker(log_dir, "solo", name="s3formats", extra_queues="", env=env)
    try:
        for k, v in env.items():
            monkeypatch.setitem(os.environ, k, v)
        get_settings.cache_clear()
        s3 = boto3.client(
            "s3",
            endpoint_url=s3_endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        with TestClient(create_app()) as client:
            for fmt in ("mp3", "opus", "flac"):
                job = client.post(
                    "/v1/jobs", json={"text": TEXT, "engine": "solo", "format": fmt}
                ).json()
                done = wait_job(client, job["id"])
                assert done["status"] == "succeeded", proc.tail()
                key = f"jobs/{DEFAULT_TENANT_ID}/{job['id']}/1.{fmt}"
                head = s3.head_object(Bucket=bucket, Key=key)
                assert head["ContentType"] == CONTENT_TYPES[fmt]
    finally:
        proc.stop()
        get_settings.cache_clear()

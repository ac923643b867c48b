"""CosyVoice jobs end to end on the official code: the API admits them, a real Celery worker
process runs the engine over a tiny random CosyVoice2 model (tests/fixtures/cosyvoice_models.py),
and the prompt cache keeps its promise across a Redis flush.

The voice's prompt is real speech (Piper); the output is noise (random weights), so the checks
are on what the farm controls: status, mode, rate, length, the cache, and what reached the
model. Skips with the reason where VOICEFARM_COSYVOICE_SRC or the `cosyvoice` extra is missing.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import soundfile
from fastapi.testclient import TestClient

from tests.fixtures.api import use_settings
from tests.fixtures.cosyvoice_models import cosyvoice_models  # noqa: F401
from tests.fixtures.processes import Proc, start_worker, wait_until
from tests.fixtures.voices import add_voice

pytestmark = [
    # Upstream's dependencies warn on import (torch.jit, torch.cuda.amp deprecations).
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.timeout(600),
]

TERMINAL = ("succeeded", "failed", "canceled")


@pytest.fixture(scope="module")
def cosy_worker(
    cosyvoice_models: dict[int, Path],  # noqa: F811
    database: str,
    redis_client: Any,
    log_dir: Path,
) -> Iterator[Proc]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        VOICEFARM_COSYVOICE_MODEL_DIR=str(cosyvoice_models[2]),
        VOICEFARM_COSYVOICE_THREADS="1",
        OMP_NUM_THREADS="1",
    )
    proc = start_worker(log_dir, "cosyvoice", name="cosyjobs", extra_queues="", env=env)
    yield proc
    proc.stop()


def _run(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/v1/jobs", json={"engine": "cosyvoice", **body})
    assert r.status_code == 202, r.text

    def done() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v1/jobs/{r.json()['id']}").json()
        return job if job["status"] in TERMINAL else None

    return wait_until(done, timeout=240, what="the CosyVoice job")


def test_cosyvoice_jobs_through_a_worker(
    client: TestClient, db: str, redis_client: Any, cosy_worker: Proc
) -> None:
    from tests.fixtures.voice_audio import speech_samples
    from workers.voices import embed

    recording = speech_samples()
    voice = add_voice(
        db,
        samples=recording,
        embedding=embed(recording, 22050),
        transcript="The farm never loses a job.",
    )
    use_settings(client, engines="piper,cosyvoice", default_voice_id=str(voice))

    clone = _run(
        client, {"text": "Hello there. This is a second sentence.", "voice_id": str(voice)}
    )
    assert clone["status"] == "succeeded", cosy_worker.tail()
    assert clone["mode"] == "clone" and clone["result"]["sample_rate"] == 24000
    audio = client.get(f"/v1/jobs/{clone['id']}/audio")
    samples, rate = soundfile.read(io.BytesIO(audio.content))
    assert rate == 24000 and len(samples) == round(clone["result"]["duration_s"] * rate)
    assert clone["progress"]["segments_done"] == clone["progress"]["segments_total"]

    instruct = _run(client, {"text": "你好。", "instruction": "用四川话说这句话"})
    assert instruct["status"] == "succeeded", cosy_worker.tail()
    assert instruct["mode"] == "instruct" and instruct["voice_id"] == str(voice)  # the default

    cross = _run(client, {"text": "Bonjour.", "mode": "cross_lingual", "voice_id": str(voice)})
    assert cross["status"] == "succeeded", cosy_worker.tail()

    preset = _run(client, {"text": "Plain preset."})  # the default voice, zero-shot
    assert preset["status"] == "succeeded" and preset["voice_id"] == str(voice)

    log = cosy_worker.log.read_text()
    assert log.count("event=prompts.compute") == 1, "prepared once for every job of this voice"
    redis_client.flushdb()  # Redis restarted empty: one reload from storage, no recompute
    again = _run(client, {"text": "After the flush.", "voice_id": str(voice)})
    assert again["status"] == "succeeded", cosy_worker.tail()
    log = cosy_worker.log.read_text()
    assert log.count("event=prompts.compute") == 1 and log.count("event=prompts.reload") == 1
    # Random weights speak noise: the figure is recorded, and low.
    assert -1.0 <= clone["quality"]["speaker_similarity"] < 0.9

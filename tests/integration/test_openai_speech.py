"""`POST /v1/audio/speech` with the official `openai` client against a real uvicorn and the shared
worker (Piper): wav and mp3 decode to speech of the engine's rate; `with_streaming_response`
streams the same; aac and an unknown model are 4xx that the client raises as APIStatusError."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import openai
import pytest
import soundfile

from tests.fixtures.live_api import live_api
from tests.fixtures.processes import Proc
from tests.fixtures.tenants import tenant_with_key

TEXT = "The farm speaks through the OpenAI client now."
PIPER_RATE = 22050


@pytest.fixture(scope="module")
def api(database: str, redis_client: object, log_dir: Path) -> Iterator[str]:
    # Auth on, as in production: the client's api_key is a tenant's key.
    with live_api(log_dir, {"VOICEFARM_AUTH_ENABLED": "true"}) as base:
        yield base


@pytest.fixture
def client(api: str, db: str) -> Iterator[openai.OpenAI]:
    key = tenant_with_key(db, "openai-client")
    with openai.OpenAI(base_url=f"{api}/v1", api_key=key.key, max_retries=0, timeout=120) as c:
        yield c


def _decoded(data: bytes) -> tuple[np.ndarray, int]:
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    return np.asarray(samples), int(rate)


@pytest.mark.parametrize("fmt", ["wav", "mp3"])
def test_speech_round_trip_with_the_openai_client(
    client: openai.OpenAI, worker: Proc, fmt: Literal["wav", "mp3"]
) -> None:
    audio = client.audio.speech.create(
        model="piper", voice="alloy", input=TEXT, response_format=fmt
    )
    assert audio.response.headers["content-type"] == {"wav": "audio/wav", "mp3": "audio/mpeg"}[fmt]
    samples, rate = _decoded(audio.content)
    assert rate == PIPER_RATE
    assert len(samples) / rate > 0.5, worker.tail()
    assert float(np.abs(samples).max()) > 0.01  # speech, not silence


def test_streaming_response_and_openai_model_names(
    client: openai.OpenAI, worker: Proc, tmp_path: Path
) -> None:
    out = tmp_path / "speech.wav"
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="nova", input=TEXT, response_format="wav", speed=1.2
    ) as response:
        assert response.status_code == 200
        job_id = response.headers["x-voicefarm-job-id"]
        response.stream_to_file(out)
    samples, rate = _decoded(out.read_bytes())
    assert job_id and rate == PIPER_RATE and len(samples) > 0


def test_refusals_are_api_status_errors(client: openai.OpenAI, worker: Proc) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as aac:
        client.audio.speech.create(model="piper", voice="alloy", input=TEXT, response_format="aac")
    assert "aac is not supported" in aac.value.message
    assert aac.value.body["code"] == "unsupported_format"  # type: ignore[index]
    with pytest.raises(openai.UnprocessableEntityError) as model:
        client.audio.speech.create(model="no-such-engine", voice="alloy", input=TEXT)
    assert model.value.status_code == 422
    with pytest.raises(openai.AuthenticationError):
        client.with_options(api_key="vf_wrong_key").audio.speech.create(
            model="piper", voice="alloy", input=TEXT
        )

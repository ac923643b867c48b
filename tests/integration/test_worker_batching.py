"""Cross-job micro-batching (tasks/batch.py) through a real Celery worker process.

Real: the worker process (solo pool, VOICEFARM_BATCH_MAX=4), PostgreSQL with the migrations,
Redis, moto's S3 server (audio, timings and kept segments), the dispatcher, and the API routes
that cancel a job and serve its audio. Jobs are written the way admission writes them
(db.jobs.create_job in one transaction, then tasks.dispatch.dispatch after the commit, as
tests/integration/test_fair_share.py does), so every job of a test is dispatched before the
worker takes the first message and the batch forms on every run; one POST per job would race
the idle worker for the first message.

Stand-ins: the first test runs the real Piper engine and its batched ONNX path, with a copy of
the bundled voice's config whose sampling noise is zero (the same text then gives the same audio
batched or alone). The failure, cancel and lease tests use `batchtone`
(tests/fixtures/engines.py), a fixture engine that batches like a model but fails on a marker
and takes a fixed time per call, since those need a failure on cue and a slow multi-segment job.
The batching window is long (VOICEFARM_BATCH_WINDOW_MS=10000): a batch call runs as soon as
every live member is waiting, so the window costs nothing when the batch works, a loaded machine
still batches, and a member that stopped without leaving the batch would make its mates wait the
window at every segment, running the tests past their deadlines.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, update

from db import jobs as q
from db.models import DEFAULT_TENANT_ID, Job
from db.session import session_scope
from tests.fixtures.audio_checks import assert_speech, read_wav
from tests.fixtures.engines import FAIL_MARKER, BatchToneEngine, tone
from tests.fixtures.jobs import submit_together as submit
from tests.fixtures.processes import Proc, start_worker, wait_until
from tests.fixtures.s3 import TEST_BUCKET_PREFIX, moto_server, s3_env
from tests.integration.test_worker_jobs import wait_job

BATCH_MAX = 4
AHEAD = 8  # dispatched ahead: a batch's mates must be in flight to be claimed
SEGMENT_MAX_CHARS = 20  # short segments: a few words of text make a multi-segment job
SEGMENTS = 12
WINDOW_MS = 10_000
THIEF = "another-worker:1"
FINISHED = re.compile(
    r"event=batch\.finished engine=(\S+) jobs=(\d+) engine_calls=(\d+) requests=(\d+)"
)


@dataclass
class Farm:
    proc: Proc
    bucket: str
    s3: Any
    calls_log: Path


@pytest.fixture(scope="module")
def farm(
    database: str, redis_client: object, log_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Farm]:
    """One batching worker serving `piper` and `batchtone` (no ops queues, so no reconciler),
    storing on moto's S3; this process's API and dispatcher use the same bucket."""
    import boto3

    from core.settings import get_settings

    voice = _noiseless_piper_voice(tmp_path_factory.mktemp("piper-voice"))
    calls_log = log_dir / "batchtone-calls.jsonl"
    calls_log.unlink(missing_ok=True)
    bucket = f"{TEST_BUCKET_PREFIX}-{uuid.uuid4().hex[:8]}"
    try:
        with moto_server() as endpoint, pytest.MonkeyPatch.context() as mp:
            env = s3_env(endpoint, bucket)
            for k, v in {**env, "VOICEFARM_DISPATCH_AHEAD": str(AHEAD)}.items():
                mp.setitem(os.environ, k, v)
            get_settings.cache_clear()
            s3 = boto3.client(
                "s3",
                endpoint_url=endpoint,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                region_name="us-east-1",
            )
            s3.create_bucket(Bucket=bucket)  # the tests list it before anything may be stored
            proc = start_worker(
                log_dir,
                "piper,batchtone",
                name="batching",
                extra_queues="",
                env={
                    **env,
                    "VOICEFARM_BATCH_MAX": str(BATCH_MAX),
                    "VOICEFARM_BATCH_WINDOW_MS": str(WINDOW_MS),
                    "VOICEFARM_DISPATCH_AHEAD": str(AHEAD),
                    "VOICEFARM_SEGMENT_MAX_CHARS": str(SEGMENT_MAX_CHARS),
                    # Progress, and with it the cancel and fence check, at every segment.
                    "VOICEFARM_PROGRESS_WRITE_SECONDS": "0",
                    "VOICEFARM_PIPER_VOICE": str(voice),
                    "FIXTURE_SEGMENT_DELAY": "0.2",
                    "FIXTURE_BATCH_LOG": str(calls_log),
                },
            )
            try:
                yield Farm(proc, bucket, s3, calls_log)
            finally:
                proc.stop()
    finally:
        get_settings.cache_clear()  # the next module's settings come from its own environment


def _noiseless_piper_voice(folder: Path) -> Path:
    """The bundled Piper voice with its sampling noise set to zero (a config change only)."""
    from workers.engines.piper import bundled_voice_path

    bundled = bundled_voice_path()
    config = json.loads(Path(f"{bundled}.json").read_text(encoding="utf-8"))
    config.setdefault("inference", {}).update({"noise_scale": 0.0, "noise_w": 0.0})
    model = folder / bundled.name
    model.symlink_to(bundled)
    Path(f"{model}.json").write_text(json.dumps(config), encoding="utf-8")
    return model


def submit_together(url: str, engine: str, texts: list[str]) -> list[uuid.UUID]:
    """All dispatched (AHEAD in flight) before the worker claims the first: mates to batch."""
    ids, sent = submit(url, engine, texts, AHEAD)
    assert sent == len(texts)
    return ids


def wait_log(proc: Proc, since: int, pattern: re.Pattern[str]) -> re.Match[str]:
    """The first match of `pattern` in the worker's log after byte `since`, once there is one."""

    def found() -> re.Match[str] | None:
        if not proc.alive():
            raise AssertionError(f"worker exited:\n{proc.tail()}")
        return pattern.search(proc.log.read_bytes()[since:].decode(errors="replace"))

    match: re.Match[str] = wait_until(found, timeout=60, what=f"{pattern.pattern} in the log")
    return match


def log_size(proc: Proc) -> int:
    return proc.log.stat().st_size


def calls_with(farm: Farm, word: str) -> list[list[str]]:
    """The engine calls (their texts) in which some request mentions `word`."""
    if not farm.calls_log.exists():
        return []
    lines = farm.calls_log.read_text(encoding="utf-8").splitlines()
    calls = [json.loads(line)["texts"] for line in lines]
    return [c for c in calls if any(word in t for t in c)]


def job_audio(client: TestClient, job_id: uuid.UUID) -> bytes:
    """The job's audio through the API (a redirect to the presigned S3 URL)."""
    r = client.get(f"/v1/jobs/{job_id}/audio", follow_redirects=False)
    assert r.status_code == 307, r.text
    audio = httpx.get(r.headers["location"])
    assert audio.status_code == 200
    return audio.content


def stored(farm: Farm, job_id: uuid.UUID) -> list[str]:
    """Every object stored under the job's prefix (audio, timings, kept segments)."""
    prefix = f"jobs/{DEFAULT_TENANT_ID}/{job_id}/"
    listing = farm.s3.list_objects_v2(Bucket=farm.bucket, Prefix=prefix)
    return [o["Key"].removeprefix(prefix) for o in listing.get("Contents", [])]


def expected_tone(text: str) -> np.ndarray:
    """What a `batchtone` job of `text` delivers: each segment's tone, joined with the gap."""
    from core.textnorm import prepare
    from workers.audio import join

    segments = prepare(text, BatchToneEngine.spec, SEGMENT_MAX_CHARS, None).segments
    return join([tone(s) for s in segments]).samples


def assert_tone_audio(client: TestClient, job_id: uuid.UUID, text: str) -> None:
    samples, rate = read_wav(job_audio(client, job_id))
    want = expected_tone(text)
    assert rate == 16000 and len(samples) == len(want)
    assert np.abs(samples - want).max() < 1e-3  # 16-bit rounding only


def numbered(name: str) -> str:
    """A text of SEGMENTS short sentences, each its own segment, each naming `name`."""
    return " ".join(f"{name} part {i}." for i in range(SEGMENTS))


def test_a_batch_forms_and_piper_audio_matches_the_unbatched_run(
    farm: Farm, client: TestClient, db: str
) -> None:
    """Four Piper jobs in flight run as one batch, in fewer engine calls than jobs, and each
    delivers the audio the same text gets when its job runs alone."""
    texts = ["Good morning, farm.", "The queue is short.", "Four jobs at once.", "One engine call."]
    since = log_size(farm.proc)
    batched = submit_together(db, "piper", texts)
    for job_id in batched:
        done = wait_job(client, str(job_id))
        assert done["status"] == "succeeded" and done["attempts"] == 1, farm.proc.tail()
    finished = wait_log(farm.proc, since, FINISHED)
    engine, jobs, calls, requests = finished.groups()
    assert (engine, int(jobs), int(requests)) == ("piper", BATCH_MAX, len(texts)), finished[0]
    assert int(calls) < len(texts), finished[0]

    # The same texts again, one job in flight at a time: no mates, so no batch.
    alone_since = log_size(farm.proc)
    for text, job_id in zip(texts, batched, strict=True):
        (solo,) = submit_together(db, "piper", [text])
        assert wait_job(client, str(solo))["status"] == "succeeded", farm.proc.tail()
        audio = job_audio(client, job_id)
        assert_speech(audio, rate=22050, words=len(text.split()))
        got, rate = read_wav(audio)
        want, _ = read_wav(job_audio(client, solo))
        assert rate == 22050 and len(got) == len(want), (text, len(got), len(want))
        assert np.abs(got - want).max() < 5e-3, text  # the bound of tests/unit/test_batching.py
    assert "event=batch.started" not in farm.proc.log.read_bytes()[alone_since:].decode()


def test_an_engine_failure_fails_only_its_own_job(farm: Farm, client: TestClient, db: str) -> None:
    """One job's text makes the engine raise for the whole batched call: the batch retries each
    job alone, the bad one goes the normal way of an engine error (re-queued, then failed once
    its attempts are spent) and its mates succeed in their first attempt."""
    texts = ["Ada speaks first.", f"Bea goes {FAIL_MARKER}.", "Cy speaks last."]
    since = log_size(farm.proc)
    ada, bea, cy = submit_together(db, "batchtone", texts)
    failed = wait_job(client, str(bea))
    assert failed["status"] == "failed" and failed["attempts"] == 3, failed
    assert failed["error"]["code"] == "max_attempts_exceeded"
    assert "(engine_error)" in failed["error"]["message"]
    assert "fixture engine failure" in failed["error"]["message"]
    assert failed["result"] is None and stored(farm, bea) == []
    for job_id, text in ((ada, texts[0]), (cy, texts[2])):
        done = wait_job(client, str(job_id))
        assert done["status"] == "succeeded" and done["attempts"] == 1, farm.proc.tail()
        assert_tone_audio(client, job_id, text)

    finished = wait_log(farm.proc, since, FINISHED)
    assert finished.groups() == ("batchtone", "3", "1", "3"), finished[0]
    wait_log(farm.proc, since, re.compile(r"event=batch\.retry_singly size=3"))
    # One call carried the whole batch; each mate then ran once more, alone, and never again.
    together = calls_with(farm, "Ada")[0]
    assert sorted(together) == sorted(texts)
    for name, text in (("Ada", texts[0]), ("Cy", texts[2])):
        assert calls_with(farm, name) == [together, [text]]
    # The bad job: the batched call, its retry alone, then attempts 2 and 3 alone.
    assert calls_with(farm, FAIL_MARKER) == [together] + [[texts[1]]] * 3


def test_a_job_canceled_mid_batch_stops_and_its_mates_finish(
    farm: Farm, client: TestClient, db: str
) -> None:
    """A job canceled through the API while its batch runs stops at its next segment, stores
    nothing (its kept segments go too), and leaves the batch; its mates run to the end."""
    since = log_size(farm.proc)
    names = ["Alpha", "Bravo", "Charlie"]
    alpha, bravo, charlie = submit_together(db, "batchtone", [numbered(n) for n in names])
    wait_until(
        lambda: client.get(f"/v1/jobs/{bravo}").json()["progress"]["segments_done"] >= 1,
        timeout=30,
        what="the victim's first segment",
    )
    r = client.post(f"/v1/jobs/{bravo}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "canceled", r.text
    for job_id, name in ((alpha, "Alpha"), (charlie, "Charlie")):
        done = wait_job(client, str(job_id))
        assert done["status"] == "succeeded" and done["attempts"] == 1, farm.proc.tail()
        assert done["progress"] == {"segments_done": SEGMENTS, "segments_total": SEGMENTS}
        assert_tone_audio(client, job_id, numbered(name))
    finished = wait_log(farm.proc, since, FINISHED)  # every thread of the batch has ended
    assert finished.group(1, 2) == ("batchtone", "3"), finished[0]
    wait_log(farm.proc, since, re.compile(rf"event=jobs\.stopped job={bravo} attempt=1"))

    final = client.get(f"/v1/jobs/{bravo}").json()
    assert final["status"] == "canceled" and final["result"] is None
    assert final["progress"]["segments_done"] < SEGMENTS
    assert stored(farm, bravo) == []
    # It shared calls with its mates, then stopped: its later segments never reached the engine.
    first = calls_with(farm, "Alpha")[0]
    assert sorted(t.split()[0] for t in first) == names
    assert 1 <= len(calls_with(farm, "Bravo")) < SEGMENTS


def test_a_job_whose_lease_is_taken_mid_batch_leaves_the_new_attempt_alone(
    farm: Farm, client: TestClient, db: str
) -> None:
    """One member's lease goes to another attempt while the batch runs (what a lease that
    expired, the reconciler's re-queue and another worker's claim leave behind, written in one
    UPDATE so the batch's own lease renewals cannot race it). The member stops at its next
    segment without writing to the row or storing audio for its attempt; the kept segments stay
    for the new attempt to resume from; the mates succeed."""
    since = log_size(farm.proc)
    delta, echo, foxtrot = submit_together(
        db, "batchtone", [numbered(n) for n in ("Delta", "Echo", "Foxtrot")]
    )
    wait_until(
        lambda: client.get(f"/v1/jobs/{echo}").json()["progress"]["segments_done"] >= 1,
        timeout=30,
        what="the victim's first segment",
    )
    with session_scope(db) as s:
        done_at_theft = s.execute(
            update(Job)
            .where(Job.id == echo, Job.status == "running", Job.attempts == 1)
            .values(
                attempts=2,
                worker_id=THIEF,
                lease_expires_at=func.now() + timedelta(hours=1),
            )
            .returning(Job.segments_done)
        ).scalar_one()
    for job_id, name in ((delta, "Delta"), (foxtrot, "Foxtrot")):
        done = wait_job(client, str(job_id))
        assert done["status"] == "succeeded" and done["attempts"] == 1, farm.proc.tail()
        assert_tone_audio(client, job_id, numbered(name))
    finished = wait_log(farm.proc, since, FINISHED)
    assert finished.group(1, 2) == ("batchtone", "3"), finished[0]
    wait_log(farm.proc, since, re.compile(rf"event=jobs\.stopped job={echo} attempt=1"))

    with session_scope(db) as s:
        row = q.get_job(s, echo)
        assert (row.status, row.attempts, row.worker_id) == ("running", 2, THIEF)
        assert row.segments_done == done_at_theft and row.result_key is None
        assert row.finished_at is None and row.error_code is None
    keys = stored(farm, echo)
    assert keys and all(k.startswith("segments/") for k in keys), keys
    assert 1 <= len(calls_with(farm, "Echo")) < SEGMENTS

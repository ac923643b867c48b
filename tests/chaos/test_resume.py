"""A long Chinese job whose worker is killed mid-job resumes at its first missing segment: the
next attempt reuses the segments the first one stored, progress never goes backwards, and the
audio and timings come out as if nothing had happened."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from db.models import DEFAULT_TENANT_ID
from tasks.maintenance import reconcile
from tests.fixtures.audio_checks import read_wav
from tests.fixtures.engines import RATE, cjk_tone
from tests.fixtures.processes import start_worker, wait_until
from workers.audio import SEGMENT_GAP_S

TERMINAL = ("succeeded", "failed", "canceled")
SENTENCES = [
    "春天来了，山坡上的小草从泥土里探出头来，好奇地打量着这个崭新的世界。",
    "河边的柳树抽出了嫩绿的枝条，在微风中轻轻摇摆，像一位温柔的姑娘在梳理长发。",
    "孩子们脱下厚重的棉衣，在田野里奔跑嬉戏，清脆的笑声传得很远很远。",
    "农民伯伯扛着锄头走向田间，他们知道一年之计在于春，播下希望才能收获幸福。",
]


def _calls(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line]


def test_killed_worker_job_resumes_from_its_kept_segments(
    client: Any, log_dir: Path, tmp_root: Path
) -> None:
    text = "".join(SENTENCES[i % len(SENTENCES)] for i in range(60))
    assert len(text) > 2000
    log = log_dir / "cjktone-segments.jsonl"
    log.unlink(missing_ok=True)
    env = {
        "VOICEFARM_LEASE_SECONDS": "2",
        "VOICEFARM_SEGMENT_MAX_CHARS": "80",
        "FIXTURE_SEGMENT_DELAY": "0.25",
        "FIXTURE_SEGMENT_LOG": str(log),
    }
    first = start_worker(log_dir, "cjktone", name="resume-victim", extra_queues="", env=env)
    job = client.post("/v1/jobs", json={"text": text, "engine": "cjktone"}).json()
    jid = job["id"]
    seen: list[int] = []

    def progress() -> dict[str, Any]:
        row: dict[str, Any] = client.get(f"/v1/jobs/{jid}").json()
        seen.append(row["progress"]["segments_done"])
        return row

    wait_until(lambda: progress()["progress"]["segments_done"] >= 8, timeout=60, what="8 segments")
    first.signal(signal.SIGKILL)
    first.popen.wait(timeout=10)
    killed_calls = _calls(log)
    total = progress()["progress"]["segments_total"]
    assert total and len(killed_calls) < total // 2, "the kill must land mid-job"
    segments_dir = tmp_root / "storage" / "jobs" / str(DEFAULT_TENANT_ID) / jid / "segments"
    kept = len(list(segments_dir.glob("*.wav")))
    assert kept >= 8

    second = start_worker(log_dir, "cjktone", name="resume-rescuer", extra_queues="", env=env)
    try:

        def finished() -> dict[str, Any] | None:
            reconcile()
            row = progress()
            return row if row["status"] in TERMINAL else None

        done = wait_until(finished, timeout=120, what=f"job {jid} to finish")
        assert done["status"] == "succeeded", second.tail()
    finally:
        second.stop()
    assert done["attempts"] == 2
    assert done["progress"]["segments_done"] == done["progress"]["segments_total"] == total
    # Progress as clients saw it never went backwards, across the kill and the re-queue.
    assert seen == sorted(seen), seen

    # Attempt 2 synthesized only the segments attempt 1 had not stored.
    rescued = [c for c in _calls(log)[len(killed_calls) :]]
    assert {c["pid"] for c in rescued} == {second.popen.pid}
    assert len(rescued) == total - kept, (len(rescued), total, kept)
    assert "event=jobs.resumed" in second.log.read_text()

    # The audio is every segment plus the gaps between them, and segments.json says where.
    timings = client.get(f"/v1/jobs/{jid}/timings").json()
    assert len(timings) == total
    expected = [len(cjk_tone(t["text"]).samples) for t in timings]
    gap = int(RATE * SEGMENT_GAP_S)
    samples, rate = read_wav(client.get(f"/v1/jobs/{jid}/audio").content)
    assert rate == RATE and len(samples) == sum(expected) + gap * (total - 1)
    assert timings[-1]["end"] * RATE == sum(expected) + gap * (total - 1)
    assert done["result"]["duration_s"] == round(len(samples) / rate, 3)
    # No kept segment outlives the job.
    assert not segments_dir.exists() or not any(segments_dir.iterdir())

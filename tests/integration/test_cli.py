"""The CLI against a running API and worker: `--json` output parsed, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.processes import ROOT, Proc, free_port, start_api


@pytest.fixture
def api(db: str, worker: Proc, log_dir: Path) -> Iterator[str]:
    port = free_port()
    proc = start_api(log_dir, port)
    yield f"http://127.0.0.1:{port}"
    proc.stop()


def cli(api: str, *args: str) -> tuple[int, Any]:
    r = subprocess.run(
        [sys.executable, "-m", "cli.main", *args, "--api", api, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return r.returncode, json.loads(r.stdout.splitlines()[-1]) if r.stdout.strip() else None


def test_cli_round_trip(api: str, tmp_path: Path) -> None:
    rc, job = cli(api, "submit", "Hello from the CLI.", "--engine", "tone", "--wait")
    assert rc == 0 and job["status"] == "succeeded"
    rc, shown = cli(api, "status", job["id"])
    assert rc == 0 and shown["id"] == job["id"]
    rc, listed = cli(api, "jobs", "--limit", "5")
    assert rc == 0 and listed["items"][0]["id"] == job["id"]
    rc, own = cli(api, "jobs", "--tenant-id", job["tenant_id"])
    assert rc == 0 and [j["id"] for j in own["items"]] == [job["id"]]
    rc, none = cli(api, "jobs", "--tenant-id", "00000000-0000-0000-0000-00000000dead")
    assert rc == 0 and none["items"] == []
    rc, hooks = cli(api, "webhooks", "list", job["id"])
    assert rc == 0 and hooks == []
    rc, err = cli(api, "cancel", job["id"])
    assert rc == 1 and err["error"]["code"] == "job_not_cancelable"
    rc, err = cli(api, "submit", "x", "--engine", "nope")
    assert rc == 1 and err["error"]["code"] == "unknown_engine"

    csv = tmp_path / "lines.csv"
    csv.write_text("text\nOne.\nTwo.\nThree.\n")
    rc, batch = cli(api, "submit", "--file", str(csv), "--engine", "tone", "--wait")
    assert rc == 0 and batch["counts"]["succeeded"] == 3
    rc, batches = cli(api, "batches")
    assert rc == 0 and batches[0]["id"] == batch["id"]
    jsonl = tmp_path / "lines.jsonl"
    jsonl.write_text('{"text": "A."}\n{"text": "B.", "engine": "tone"}\n')
    rc, made = cli(api, "submit", "--file", str(jsonl), "--engine", "tone")
    assert rc == 0 and made["items"] == 2
    rc, done = cli(api, "wait", made["id"], "--batch")
    assert rc == 0 and done["completed_at"]


def test_cli_voices_add_list_rm(api: str, tmp_path: Path) -> None:
    """Through the HTTP API, prepared by the shared worker's voices queue."""
    from tests.fixtures.voice_audio import speech, too_short

    good, short = tmp_path / "good.wav", tmp_path / "short.wav"
    good.write_bytes(speech())
    short.write_bytes(too_short())
    rc, voice = cli(
        api, "voices", "add", str(good), "--transcript", "Hello there.", "--name", "me", "--wait"
    )
    assert rc == 0 and voice["status"] == "ready", voice
    rc, bad = cli(api, "voices", "add", str(short), "--transcript", "Hi.", "--name", "x", "--wait")
    assert rc == 1 and bad["error"]["code"] == "too_short"
    rc, listed = cli(api, "voices", "list")
    assert rc == 0 and {v["id"] for v in listed} == {voice["id"], bad["id"]}
    rc, gone = cli(api, "voices", "rm", voice["id"])
    assert rc == 0 and gone["deleted"] is True
    rc, err = cli(api, "voices", "rm", voice["id"])
    assert rc == 1 and err["error"]["code"] == "voice_not_found"


def test_cli_unreachable_api() -> None:
    rc, err = cli(f"http://127.0.0.1:{free_port()}", "jobs")
    assert rc == 2 and err["error"]["code"] == "unreachable"

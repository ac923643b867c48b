"""Soak: a whole farm of real processes loses no job while its parts are killed under it.

A private PostgreSQL and a private Redis (never the machine's own), the API, the worker
supervisor (two synthesis workers plus the ops worker for webhooks and maintenance) and beat,
with a webhook receiver on loopback. Jobs arrive at a steady rate from a client that retries
with its Idempotency-Key, as the API asks clients to. Meanwhile: `kill -9` of synthesis workers
three times, Redis killed and restarted empty, PostgreSQL crashed and restarted. At the end:
every job terminal, exactly one success per job, one stored object per success and one
`job.succeeded` event (one webhook-id) per job, each delivered and correctly signed.

The engine is the `tone` fixture (deterministic audio, a short pause per segment so kills land
mid-job): what is under test is the farm's machinery, not the speech, which the e2e test
checks with Piper. VOICEFARM_SOAK_JOBS sets the job count (200 by default).
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import re
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from core.settings import get_settings
from core.storage import FileStorage
from core.webhooks import verify
from db.session import get_engine
from tests.fixtures.pg import private_postgres
from tests.fixtures.processes import Proc, descendants, free_port, spawn, start_api, wait_until
from tests.fixtures.receiver import start_receiver
from tests.fixtures.redis_server import PrivateRedis
from workers.supervisor import celery_argv

JOBS = int(os.environ.get("VOICEFARM_SOAK_JOBS", "200"))
TEXT = "First part here. Then a second one. And a third to end."


class Client:
    """Submits job i with Idempotency-Key soak-i until it gets a 202, whatever happens to the
    farm in between: a 503 (database down) or a dropped connection is retried."""

    def __init__(self, base: str, webhook_url: str) -> None:
        self.base = base
        self.webhook_url = webhook_url
        self.ids: dict[int, str] = {}
        self.statuses: collections.Counter[int] = collections.Counter()
        self.transport_errors = 0
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self, rate_per_s: float) -> None:
        try:
            with httpx.Client(base_url=self.base, timeout=15) as http:
                for i in range(JOBS):
                    self.ids[i] = self._submit(http, i)
                    time.sleep(1 / rate_per_s)  # the arrival rate, not a wait for an event
        except BaseException as exc:  # surfaced by the test thread
            self.error = exc
        finally:
            self.done.set()

    def _submit(self, http: httpx.Client, i: int) -> str:
        body = {"text": f"{TEXT} Job {i}.", "engine": "tone", "webhook_url": self.webhook_url}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                r = http.post("/v1/jobs", json=body, headers={"Idempotency-Key": f"soak-{i}"})
            except httpx.TransportError:
                self.transport_errors += 1
                time.sleep(0.5)
                continue
            self.statuses[r.status_code] += 1
            if r.status_code == 202:
                return str(r.json()["id"])
            assert r.status_code == 503, f"job {i}: {r.status_code} {r.text}"
            assert r.headers.get("retry-after"), r.headers
            time.sleep(0.5)
        raise AssertionError(f"job {i} was never accepted")


def _children(root: int) -> dict[int, str]:
    """pid -> command line of every live process below `root`."""
    out = {}
    for pid in descendants(root):
        with contextlib.suppress(OSError):
            out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return out


def _synth_workers(supervisor: Proc) -> list[int]:
    return [
        pid for pid, cmd in _children(supervisor.popen.pid).items() if re.search(r"-n cpu\d", cmd)
    ]


def _counts(url: str) -> dict[str, int]:
    with get_engine(url).connect() as c:
        rows = c.execute(text("SELECT status, count(*) FROM jobs GROUP BY status")).all()
    return {r[0]: int(r[1]) for r in rows}


def _ready(base: str) -> dict[str, str]:
    try:
        checks: dict[str, str] = httpx.get(f"{base}/readyz", timeout=5).json()["checks"]
        return checks
    except (httpx.HTTPError, ValueError):
        return {}


@pytest.mark.timeout(900)
def test_soak_loses_no_job_through_worker_kills_and_broker_and_database_restarts(
    log_dir: Path, tmp_path: Path
) -> None:
    rng = random.Random(20261129)
    receiver = start_receiver()
    broker = PrivateRedis()
    broker.start()
    procs: list[Proc] = []
    events: list[str] = []
    t0 = time.monotonic()
    with private_postgres() as pg:
        storage_dir = tmp_path / "storage"
        env = {
            "VOICEFARM_DATABASE_URL": pg.url,
            "VOICEFARM_REDIS_URL": broker.url,
            "VOICEFARM_STORAGE_DIR": str(storage_dir),
            "VOICEFARM_WORKER_STATE_DIR": str(tmp_path / "run"),
            "VOICEFARM_WORKER_ENGINES": "tone",
            "VOICEFARM_CPU_WORKERS": "2",
            "VOICEFARM_LEASE_SECONDS": "3",
            "VOICEFARM_REQUEUE_GRACE_SECONDS": "5",
            "VOICEFARM_RECONCILE_INTERVAL_SECONDS": "1",
            "VOICEFARM_MAX_ATTEMPTS": "5",
            "VOICEFARM_SEGMENT_MAX_CHARS": "20",
            "VOICEFARM_WEBHOOK_PROGRESS_SECONDS": "3600",
            "FIXTURE_SEGMENT_DELAY": "0.05",
        }
        api_port = free_port()
        base = f"http://127.0.0.1:{api_port}"
        try:
            procs.append(start_api(log_dir, api_port, env))
            supervisor = spawn(
                "soak-workers", [sys.executable, "-m", "cli.main", "workers"], log_dir, env
            )
            procs.append(supervisor)
            beat_file = str(tmp_path / "celerybeat-schedule")
            procs.append(spawn("soak-beat", celery_argv("beat", "-s", beat_file), log_dir, env))
            wait_until(lambda: len(_synth_workers(supervisor)) == 2, 60, "two synthesis workers")

            client = Client(base, receiver.url)
            submitter = threading.Thread(target=client.run, args=(6.0,), daemon=True)
            submitter.start()

            def succeeded_at_least(n: int) -> bool:
                assert client.error is None, client.error
                return _counts(pg.url).get("succeeded", 0) >= n

            def kill_worker() -> None:
                pids = wait_until(lambda: _synth_workers(supervisor), 60, "a synthesis worker")
                victim = rng.choice(pids)
                os.kill(victim, signal.SIGKILL)
                events.append(f"kill -9 worker {victim}")

            def restart_redis_empty() -> None:
                broker.kill()
                wait_until(lambda: _ready(base).get("broker", "").startswith("error"), 30, "")
                broker.start()
                events.append("redis restarted empty")

            def restart_postgres() -> None:
                pg.kill()  # immediate shutdown: a crash, connections dropped mid-transaction
                wait_until(lambda: _ready(base).get("database", "").startswith("error"), 30, "")
                pg.start()
                events.append("postgres crashed and restarted")

            plan = [
                (0.15, kill_worker),
                (0.30, restart_redis_empty),
                (0.50, kill_worker),
                (0.65, restart_postgres),
                (0.80, kill_worker),
            ]
            for fraction, action in plan:
                wait_until(
                    lambda f=fraction: succeeded_at_least(int(JOBS * f)), 300, f"{fraction:.0%}"
                )
                action()

            wait_until(client.done.is_set, 300, "every job to be submitted")
            assert client.error is None, client.error
            with get_engine(pg.url).connect() as c:
                stored_ids = {str(i) for i in c.execute(text("SELECT id FROM jobs")).scalars()}
            lost = set(client.ids.values()) - stored_ids
            assert not lost, f"answered 202 but not in the database: {sorted(lost)}"

            def all_terminal() -> bool:
                counts = _counts(pg.url)
                return sum(counts.get(s, 0) for s in ("succeeded", "failed", "canceled")) == JOBS

            wait_until(all_terminal, 300, "every job to end")

            def succeeded_events() -> dict[str, set[str]]:
                seen: dict[str, set[str]] = collections.defaultdict(set)
                with receiver.lock:
                    for r in receiver.requests:
                        payload = r.json
                        if payload["type"] == "job.succeeded":
                            seen[payload["data"]["id"]].add(r.headers["webhook-id"])
                return seen

            wait_until(lambda: len(succeeded_events()) == JOBS, 300, "every job.succeeded hook")
        finally:
            for p in reversed(procs):
                p.stop(timeout=40)
            broker.kill()
            receiver.server.shutdown()

        elapsed = time.monotonic() - t0
        ids = set(client.ids.values())
        assert len(ids) == JOBS  # one job per idempotency key, however often it was retried
        with get_engine(pg.url).connect() as c:
            rows = c.execute(
                text(
                    "SELECT id, status, attempts, result_key, result_sha256, timings_key FROM jobs"
                )
            ).all()
        assert {str(r.id) for r in rows} == ids
        statuses = collections.Counter(r.status for r in rows)
        attempts = collections.Counter(r.attempts for r in rows)
        assert statuses == {"succeeded": JOBS}, statuses

        # Objects: anything an attempt left behind (killed between upload and finish) is an
        # orphan the sweep removes; nothing is in flight any more, so no safety age is needed.
        storage = FileStorage(storage_dir)
        from tasks.maintenance import sweep_orphan_objects

        swept = sweep_orphan_objects(storage, pg.url, datetime.now(UTC))
        stored = sorted(o.key for o in storage.list_keys("jobs/"))
        # Exactly the audio and the segment timings each row names: nothing else, no leftover
        # kept segments, no second attempt's audio.
        assert stored == sorted([r.result_key for r in rows] + [r.timings_key for r in rows])
        audio = [k for k in stored if not k.endswith(".segments.json")]

        # Webhooks: one job.succeeded event per job (its webhook-id is the same on every
        # retry), every delivery correctly signed.
        per_job = succeeded_events()
        assert set(per_job) == ids and all(len(v) == 1 for v in per_job.values()), per_job
        secret = get_settings().webhook_secret.get_secret_value()
        deliveries = [r for r in receiver.requests if r.json["type"] == "job.succeeded"]
        for r in deliveries:
            h = r.headers
            assert verify(
                secret, h["webhook-id"], int(h["webhook-timestamp"]), r.body, h["webhook-signature"]
            )
        restarts = collections.Counter(
            m.group(1)
            for m in re.finditer(
                r"event=supervisor\.restart child=\S+ reason=(\S+)",
                supervisor.log.read_text(errors="replace"),
            )
        )
        summary = (
            f"soak: jobs={JOBS} succeeded={statuses['succeeded']} "
            f"failed={statuses.get('failed', 0)} "
            f"attempts={dict(sorted(attempts.items()))} objects={len(audio)} "
            f"orphans_swept={swept} succeeded_events={len(per_job)} "
            f"succeeded_deliveries={len(deliveries)} "
            f"api_answers={dict(sorted(client.statuses.items()))} "
            f"client_transport_errors={client.transport_errors} "
            f"worker_restarts={dict(restarts)} elapsed={elapsed:.0f}s"
        )
        print("\n" + summary + "\nevents: " + "; ".join(events))
        assert len(events) == len(plan)

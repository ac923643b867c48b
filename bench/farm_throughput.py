"""The whole farm on this machine: admission latency and end-to-end job latency/throughput.

    .venv/bin/python bench/farm_throughput.py [--jobs 40] [--workers 1]

Starts the API (uvicorn) and the worker supervisor (Piper on CPU) as processes against a bench
database (`voicefarm_bench`) and Redis db 14, submits short jobs as fast as it can, then waits
for all of them. Prints admission latency percentiles, per-job latency and jobs per minute.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    port = _port()
    tmp = Path(tempfile.mkdtemp(prefix="voicefarm-bench-"))
    env = {
        **os.environ,
        "VOICEFARM_DATABASE_URL": "postgresql+psycopg2://postgres@127.0.0.1:5432/voicefarm_bench",
        "VOICEFARM_REDIS_URL": "redis://127.0.0.1:6379/14",
        "VOICEFARM_STORAGE_DIR": str(tmp / "storage"),
        "VOICEFARM_WORKER_STATE_DIR": str(tmp / "run"),
        "VOICEFARM_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "VOICEFARM_CPU_WORKERS": str(args.workers),
        "VOICEFARM_SUPERVISOR_METRICS_PORT": "0",
        "VOICEFARM_WORKER_METRICS_PORT": "0",
        "VOICEFARM_LOG_LEVEL": "WARNING",
    }
    subprocess.run([sys.executable, "-m", "cli.main", "migrate"], cwd=ROOT, env=env, check=True)
    import redis

    redis.Redis.from_url(env["VOICEFARM_REDIS_URL"]).flushdb()
    log = (tmp / "farm.log").open("wb")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "api.main:app",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        ),
        subprocess.Popen(
            [sys.executable, "-m", "cli.main", "workers"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        ),
    ]
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            for _ in range(200):
                try:
                    if c.get("/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            c.post("/v1/jobs", json={"text": "warm up"})  # first request opens pools
            time.sleep(8)  # let the worker load Piper
            admit, ids, t_sub = [], [], {}
            start = time.perf_counter()
            for i in range(args.jobs):
                t0 = time.perf_counter()
                r = c.post("/v1/jobs", json={"text": f"Job number {i} says hello to the farm."})
                admit.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])
                t_sub[ids[-1]] = t0
            latencies, pending = {}, set(ids)
            while pending:
                for jid in list(pending):
                    job = c.get(f"/v1/jobs/{jid}").json()
                    if job["status"] in ("succeeded", "failed", "canceled"):
                        assert job["status"] == "succeeded", job
                        latencies[jid] = time.perf_counter() - t_sub[jid]
                        pending.discard(jid)
                time.sleep(0.05)
            total = time.perf_counter() - start
        print(f"jobs: {args.jobs}, CPU workers: {args.workers}, machine: {os.cpu_count()} cores")
        print(
            f"admission POST /v1/jobs ms: p50 {_pct(admit, 50):.1f}  p95 {_pct(admit, 95):.1f}"
            f"  max {max(admit):.1f}"
        )
        lat = list(latencies.values())
        print(
            f"submit->succeeded s: p50 {_pct(lat, 50):.2f}  p95 {_pct(lat, 95):.2f}  "
            f"mean {statistics.mean(lat):.2f}"
        )
        print(f"throughput: {args.jobs / total * 60:.0f} jobs/min ({total:.1f} s for all)")
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)


if __name__ == "__main__":
    main()

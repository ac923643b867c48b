"""Efficiency: the farm's wall time over a bare loop of the same Piper voice on the same texts.

    .venv/bin/python bench/efficiency.py [--jobs 100] [--rounds 4] [--batch 8] [--threads 1]
        [--engine-cpus 0] [--env KEY=VALUE] [--write]

Starts the API (uvicorn) and `voicefarm workers` (one CPU Piper worker) against a private
database (`voicefarm_bench_eff`) and Redis db 7, and a bare child process that loads the same
Piper voice and synthesizes the same segments in a loop (no DB, broker, encode or upload).
Rounds alternate farm and bare (order flipped each round) so load drifts hit both alike. Farm
time per round is PostgreSQL's own: first `created_at` to last `finished_at`. The worker logs
one `event=jobs.timings` line per job; their means give the per-job overhead by phase.

With `--batch N` a second farm with VOICEFARM_BATCH_MAX=N (and as many jobs dispatched ahead)
runs the same rounds: the batching gain is its efficiency over the unbatched farm's. `--write`
puts the figures, machine and command in docs/BENCHMARKS.md (section "Efficiency").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.doc_block import markers, write_block  # noqa: E402
from core.process import parse_cpus  # noqa: E402

DB_URL = os.environ.get(
    "VOICEFARM_BENCH_DATABASE_URL",
    "postgresql+psycopg2://postgres@127.0.0.1:5432/voicefarm_bench_eff",
)
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please leave the package at the front door.",
    "Our meeting has been moved to Thursday afternoon.",
    "The train to the city leaves every twenty minutes.",
    "She planted tomatoes and basil in the garden.",
    "Remember to back up your files before the update.",
    "The museum opens at nine and closes at six.",
    "A light rain is expected later this evening.",
    "He finished the report just before the deadline.",
    "Turn left at the second traffic light.",
    "The library has a new collection of maps.",
    "Thank you for calling, how can I help you today?",
]
PHASES: tuple[str, ...] = ("claim", "prepare", "progress", "synthesize", "synthesize_cpu", "keep")
PHASES += ("write", "quality")
PHASES += ("encode", "upload", "finish")

BARE = r"""
import json, sys, time
from core.settings import get_settings
from core.textnorm import prepare
from workers.engines.base import SegmentRequest
from workers.engines.piper import PiperEngine
s = get_settings()
from workers.device import resolve
e = PiperEngine(s); e.load(*resolve(s))  # the device (and dtype) the farm's worker gets
print("ready", flush=True)
for line in sys.stdin:
    texts = json.loads(line)
    t0 = time.perf_counter()
    cpu = 0.0
    for t in texts:
        for seg in prepare(t, e.spec, s.segment_max_chars, None).segments:
            c0 = time.thread_time()
            e.synthesize([SegmentRequest(seg, None)])
            cpu += time.thread_time() - c0
    print(time.perf_counter() - t0, cpu, flush=True)
"""


def texts(n: int) -> list[str]:
    rng = random.Random(9)
    return [" ".join(rng.sample(SENTENCES, rng.randint(1, 3))) for _ in range(n)]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Farm:
    def __init__(self, tmp: Path, batch: int, extra_env: dict[str, str] | None = None) -> None:
        self.port = _port()
        self.log_path = tmp / f"farm-b{batch}.log"
        self.env = {
            **os.environ,
            "VOICEFARM_DATABASE_URL": DB_URL,
            # Not the admission bench's or the tests' Redis database: both flush theirs.
            "VOICEFARM_REDIS_URL": os.environ.get(
                "VOICEFARM_BENCH_REDIS_URL", "redis://127.0.0.1:6379/7"
            ),
            "VOICEFARM_STORAGE_DIR": str(tmp / "storage"),
            "VOICEFARM_WORKER_STATE_DIR": str(tmp / f"run-b{batch}"),
            "VOICEFARM_PUBLIC_BASE_URL": f"http://127.0.0.1:{self.port}",
            "VOICEFARM_CPU_WORKERS": "1",
            "VOICEFARM_SUPERVISOR_METRICS_PORT": "0",
            "VOICEFARM_WORKER_METRICS_PORT": "0",
            "VOICEFARM_LOG_LEVEL": "INFO",
            "VOICEFARM_AUTH_ENABLED": "false",
            "VOICEFARM_BATCH_MAX": str(batch),
            "VOICEFARM_DISPATCH_AHEAD": str(max(2, batch)),
            **(extra_env or {}),
        }
        import redis

        redis.Redis.from_url(self.env["VOICEFARM_REDIS_URL"]).flushdb()
        log = self.log_path.open("wb")
        api = [sys.executable, "-m", "uvicorn", "api.main:app", "--port", str(self.port)]
        workers = [sys.executable, "-m", "cli.main", "workers"]
        self.procs = [
            subprocess.Popen(
                cmd, cwd=ROOT, env=self.env, stdout=log, stderr=log, start_new_session=True
            )
            for cmd in ([*api, "--log-level", "warning"], workers)
        ]
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        try:
            for _ in range(300):
                try:
                    if self.client.get("/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            # Warm up: the worker has loaded Piper once a job succeeds.
            self.run(["Warm up the farm."])
        except BaseException:
            self.stop()  # never leave a farm behind that would take the next run's messages
            raise

    def run(self, batch: list[str]) -> list[str]:
        ids = []
        for text in batch:
            r = self.client.post("/v1/jobs", json={"text": text, "engine": "piper"})
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        pending = set(ids)
        deadline = time.monotonic() + 600
        while pending and time.monotonic() < deadline:
            time.sleep(0.1)
            for jid in list(pending):
                job = self.client.get(f"/v1/jobs/{jid}").json()
                if job["status"] in ("succeeded", "failed", "canceled"):
                    assert job["status"] == "succeeded", job
                    pending.discard(jid)
                else:
                    break  # FIFO-ish: poll lightly, the worker needs the cores
        assert not pending, f"{len(pending)} jobs unfinished"
        return ids

    def peak_rss(self) -> dict[str, float]:
        """Peak RSS (VmHWM, MiB) of the largest process under the API and under the workers
        (the synthesis worker, with Piper loaded)."""
        from tests.fixtures.processes import descendants

        out = {}
        for name, p in zip(("api", "worker"), self.procs, strict=True):
            peak = 0.0
            for pid in {p.pid, *descendants(p.pid)}:
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                m = re.search(r"VmHWM:\s+(\d+) kB", status)
                if m:
                    peak = max(peak, int(m.group(1)) / 1024)
            out[name] = peak
        return out

    def stop(self) -> None:
        self.client.close()
        for p in self.procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            p.wait(timeout=30)


def farm_seconds(ids: list[str]) -> float:
    from sqlalchemy import create_engine, text

    eng = create_engine(DB_URL)
    with eng.connect() as c:
        row = c.execute(
            text("SELECT min(created_at), max(finished_at) FROM jobs WHERE id::text = ANY(:ids)"),
            {"ids": ids},
        ).one()
    eng.dispose()
    return float((row[1] - row[0]).total_seconds())


def phases(log_path: Path, ids: set[str]) -> dict[str, float]:
    sums: dict[str, float] = defaultdict(float)
    n = 0
    for line in log_path.read_text(errors="replace").splitlines():
        m = re.search(r"event=jobs\.timings job=(\S+) segments=\d+ (.*)", line)
        if not m or m.group(1) not in ids:
            continue
        n += 1
        for k, v in re.findall(r"(\w+)_ms=([\d.]+)", m.group(2)):
            sums[k] += float(v)
    return {k: v / max(n, 1) for k, v in sums.items()} | {"jobs_logged": n}


def measure(
    farm: Farm, bare: subprocess.Popen[str], all_texts: list[str], rounds: int
) -> dict[str, Any]:
    per = len(all_texts) // rounds
    farm_s = bare_s = bare_cpu = 0.0
    ids: list[str] = []
    for r in range(rounds):
        chunk = all_texts[r * per : (r + 1) * per]
        order = ("farm", "bare") if r % 2 == 0 else ("bare", "farm")
        for side in order:
            if side == "farm":
                got = farm.run(chunk)
                ids += got
                farm_s += farm_seconds(got)
            else:
                assert bare.stdin and bare.stdout
                bare.stdin.write(json.dumps(chunk) + "\n")
                bare.stdin.flush()
                wall, cpu = bare.stdout.readline().split()
                bare_s += float(wall)
                bare_cpu += float(cpu)
    return {
        "farm_s": farm_s,
        "bare_s": bare_s,
        "bare_cpu": bare_cpu,
        "phases": phases(farm.log_path, set(ids)),
    }


def report(label: str, m: dict[str, Any], jobs: int, batch: int = 1) -> list[str]:
    ph = m["phases"]
    per_job = (m["farm_s"] - m["bare_s"]) / jobs * 1000
    lines = [
        f"{label}: farm {m['farm_s']:.1f} s, bare {m['bare_s']:.1f} s, "
        f"efficiency {m['bare_s'] / m['farm_s']:.3f} (overhead {per_job:.1f} ms/job)",
        "  per job (mean ms, worker log): "
        + ", ".join(f"{k} {ph[k]:.1f}" for k in (*PHASES, "total") if k in ph),
        # The engine's calls, wall and the calling thread's CPU (onnxruntime with one thread runs
        # in it): wall above CPU is time the engine waited for a core; CPU above the bare loop's
        # is the same work running slower (caches, memory bandwidth shared with the farm).
        f"  engine calls per job (mean ms): farm {ph.get('synthesize', 0):.1f} wall / "
        f"{ph.get('synthesize_cpu', 0):.1f} CPU; bare {m['bare_s'] / jobs * 1000:.1f} wall / "
        f"{m['bare_cpu'] / jobs * 1000:.1f} CPU"
        + (f" (farm: each job logs its whole batch call, up to {batch} jobs)" if batch > 1 else ""),
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch", type=int, default=0, help="also run a farm batching N jobs")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="onnxruntime threads of the engine, bare and farm alike (VOICEFARM_PIPER_THREADS);"
        " fewer than the cores leaves the farm's own processes a core, as a GPU host would",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="farm setting for an ablation, e.g. VOICEFARM_PREFETCH=false (repeatable)",
    )
    parser.add_argument(
        "--engine-cpus",
        default=None,
        metavar="LIST",
        help="VOICEFARM_ENGINE_CPUS for the farm (its engine thread on these CPUs, its own "
        "threads off them); the bare loop runs on the same CPUs",
    )
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="voicefarm-eff-"))
    env = {**os.environ, "VOICEFARM_DATABASE_URL": DB_URL}
    if args.threads:
        env["VOICEFARM_PIPER_THREADS"] = str(args.threads)
        args.env.append(f"VOICEFARM_PIPER_THREADS={args.threads}")
    engine_cpus = parse_cpus(args.engine_cpus) if args.engine_cpus else None
    if engine_cpus:
        args.env.append(f"VOICEFARM_ENGINE_CPUS={args.engine_cpus}")
    subprocess.run([sys.executable, "-m", "cli.main", "migrate"], cwd=ROOT, env=env, check=True)
    all_texts = texts(args.jobs)
    bare = subprocess.Popen(
        [sys.executable, "-c", BARE], cwd=ROOT, env=env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        preexec_fn=(lambda: os.sched_setaffinity(0, engine_cpus or [])) if engine_cpus else None,
    )  # fmt: skip
    assert bare.stdout and bare.stdout.readline().strip() == "ready"
    load = os.getloadavg()
    out = [
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} cores, "
        f"load {load[0]:.2f}; {args.jobs} jobs of 1-3 sentences, {args.rounds} rounds"
        + (f"; {' '.join(args.env)}" if args.env else "")
    ]
    results: dict[int, dict[str, Any]] = {}
    for batch in [1] + ([args.batch] if args.batch > 1 else []):
        farm = Farm(tmp, batch, dict(kv.split("=", 1) for kv in args.env))
        try:
            results[batch] = measure(farm, bare, all_texts, args.rounds)
            rss = farm.peak_rss()
        finally:
            farm.stop()
        out += report(f"batch {batch}", results[batch], args.jobs, batch)
        out.append(
            f"  peak RSS (MiB): API process {rss['api']:.0f}, synthesis worker {rss['worker']:.0f}"
        )
    if args.batch > 1:
        gain = results[1]["farm_s"] / results[args.batch]["farm_s"]
        bare_drift = results[args.batch]["bare_s"] / results[1]["bare_s"]
        out.append(
            f"batching gain (farm time batch 1 / batch {args.batch}): {gain:.3f} "
            f"(bare loop drift between the two: {bare_drift:.3f})"
        )
    bare.terminate()
    print("\n".join(out))
    if args.write:
        write(out, " ".join(["python", "bench/efficiency.py", *sys.argv[1:]]))


def write(lines: list[str], command: str) -> None:
    """The figures, under the command that made them, in docs/BENCHMARKS.md."""
    begin, end = markers("efficiency.py")
    block = f"{begin}\n`{command}`\n\n```\n" + "\n".join(lines) + f"\n```\n{end}"
    write_block("efficiency.py", block, "Efficiency (farm vs bare engine loop)")


if __name__ == "__main__":
    main()

"""Admission throughput and latency, dispatch overhead, and the API's memory, on this machine.

    .venv/bin/python bench/admission.py [--write] [--levels 1,16,64] [--seconds 8]
        [--api-workers N] [--auth] [--profile] [--url URL --api-key KEY]

Without --url it starts the API (uvicorn, `VOICEFARM_API_WORKERS` processes, as `voicefarm farm`
does) and `voicefarm workers` (one CPU worker, the `tone` fixture engine with timestamps:
bench/stamp_engine.py) against a bench database (`voicefarm_bench_admission`) and Redis db 13.
Then:

1. dispatch overhead: jobs one at a time on the idle farm; POST -> the engine starting, and the
   engine's end -> the row's `finished_at` (p50/p99);
2. admission: a second process (asyncio, raw keep-alive HTTP/1.1, one connection per client)
   posts short jobs for `--seconds` at each client level; jobs/s and p50/p99 per level. The
   jobs table is emptied between levels, so each starts from the same state; the worker runs.
3. peak RSS (VmHWM) of every API process;
4. how the kernel spread each level's connections over the API processes (sampled mid-level).

`--write` replaces the generated part of docs/BENCHMARKS.md's "Admission" section. `--profile`
samples the API processes with py-spy during the 16-client level and prints the top frames.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # cli, core and the fixture engines
from bench.doc_block import markers, write_block  # noqa: E402

DB = "voicefarm_bench_admission"
PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"
BEGIN, END = markers("admission.py")
TEXT = "Hello from the admission bench."


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


# --- the load process -----------------------------------------------------------------------


async def _one_client(
    host: str,
    port: int,
    auth: str,
    start: float,
    deadline: float,
    lats: list[float],
    codes: Counter[int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    body = json.dumps({"text": TEXT, "engine": "tone"}).encode()
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"{auth}Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    request = head + body
    try:
        while (t0 := time.perf_counter()) < deadline:
            writer.write(request)
            await writer.drain()
            raw = await reader.readuntil(b"\r\n\r\n")
            m = re.search(rb"(?i)content-length:\s*(\d+)", raw)
            await reader.readexactly(int(m.group(1)) if m else 0)
            codes[0] += 1  # every request, warm-up included (CPU per job)
            if t0 >= start:  # after the warm-up
                lats.append(time.perf_counter() - t0)
                codes[int(raw[9:12])] += 1
    finally:
        writer.close()


async def _load(url: str, clients: int, seconds: float, warmup: float, key: str) -> dict[str, Any]:
    parts = urlsplit(url)
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    start = time.perf_counter() + warmup
    deadline = start + seconds
    lats: list[float] = []
    codes: Counter[int] = Counter()
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    await asyncio.gather(
        *(_one_client(host, port, auth, start, deadline, lats, codes) for _ in range(clients))
    )
    total = codes.pop(0, 0)
    cpu = time.process_time()
    return {"lat": lats, "codes": dict(codes), "seconds": seconds, "total": total, "cpu": cpu}


def run_level(url: str, clients: int, seconds: float, key: str) -> dict[str, Any]:
    """One level, driven from a second process (the API's CPU is not the client's)."""
    argv = [sys.executable, __file__, "--drive", f"{clients}", "--url", url]
    out = subprocess.run(
        [*argv, "--seconds", f"{seconds}"],
        env={**os.environ, "BENCH_API_KEY": key},
        capture_output=True,
        check=True,
        timeout=seconds + 120,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _cpu_seconds(pids: list[int]) -> dict[int, float]:
    """utime + stime of each process that can be read, by pid."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[p] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _cpu_used(before: dict[int, float], pids: list[int]) -> float:
    """CPU seconds used since `before` by the processes alive at both ends (a PostgreSQL backend
    that exited in between would otherwise take its whole life's CPU out of the sum)."""
    after = _cpu_seconds(pids)
    return sum(after[p] - before[p] for p in after if p in before)


def _postgres_pids() -> list[int]:
    """Every PostgreSQL process on the machine (other clusters' too: noise, said in the report)."""
    out = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "postgres":
                out.append(int(comm.parent.name))
        except OSError:
            continue
    return out


# --- the farm --------------------------------------------------------------------------------


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sql(dsn: str, statement: str, *params: object) -> list[tuple[Any, ...]]:
    import psycopg2

    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def _connection_split(api_pid: int, port: int) -> list[int]:
    """How many established connections on `port` each API process holds, largest first (the
    kernel's spread of keep-alive clients over the processes' listening sockets)."""
    established = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "01":
                established.add(f"socket:[{f[9]}]")
    counts = []
    for pid in _descendants(api_pid):
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        if n := sum(1 for link in links if link in established):
            counts.append(n)
    return sorted(counts, reverse=True)


def _peak_rss_mib(pid: int) -> dict[int, float]:
    """VmHWM of `pid` and its descendants (uvicorn's manager and its workers)."""
    out = {}
    for p in _descendants(pid):
        try:
            m = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text())
        except OSError:
            continue
        if m:
            out[p] = int(m.group(1)) / 1024
    return out


class Farm:
    def __init__(self, api_workers: int, auth: bool = False) -> None:
        from tests.fixtures.engines import FIXTURE_ENGINES

        self.tmp = Path(tempfile.mkdtemp(prefix="voicefarm-admission-"))
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stamps = self.tmp / "stamps.txt"
        self.dsn = f"postgresql://postgres@127.0.0.1:5432/{DB}"
        self.env = {
            **os.environ,
            "VOICEFARM_DATABASE_URL": f"{PG}/{DB}",
            "VOICEFARM_REDIS_URL": "redis://127.0.0.1:6379/13",
            "VOICEFARM_STORAGE_DIR": str(self.tmp / "storage"),
            "VOICEFARM_WORKER_STATE_DIR": str(self.tmp / "run"),
            "VOICEFARM_PUBLIC_BASE_URL": self.url,
            "VOICEFARM_API_PORT": str(self.port),
            "VOICEFARM_API_WORKERS": str(api_workers),
            "VOICEFARM_CPU_WORKERS": "1",
            "VOICEFARM_WORKER_ENGINES": "tone",
            "VOICEFARM_EXTRA_ENGINES": f"{FIXTURE_ENGINES},tone=bench.stamp_engine:Stamp",
            "VOICEFARM_BENCH_STAMPS": str(self.stamps),
            "VOICEFARM_AUTH_ENABLED": "true" if auth else "false",
            "VOICEFARM_SUPERVISOR_METRICS_PORT": "0",
            "VOICEFARM_WORKER_METRICS_PORT": "0",
            "VOICEFARM_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.key = ""  # with auth: a tenant key, made by start()
        self.auth = auth

    def start(self) -> None:
        admin = "postgresql://postgres@127.0.0.1:5432/postgres"
        if not _sql(admin, "SELECT 1 FROM pg_database WHERE datname = %s", DB):
            _sql(admin, f"CREATE DATABASE {DB}")
        migrate = [sys.executable, "-m", "cli.main", "migrate"]
        subprocess.run(migrate, check=True, cwd=ROOT, env=self.env)
        if self.auth:  # a tenant without limits (the lane's case) and a key for it
            cli = [sys.executable, "-m", "cli.main"]
            subprocess.run([*cli, "tenants", "create", "bench"], cwd=ROOT, env=self.env)
            made = subprocess.run(
                [*cli, "keys", "create", "--tenant", "bench", "--name", "bench/admission.py"],
                cwd=ROOT,
                env=self.env,
                capture_output=True,
                text=True,
                check=True,
            )
            self.key = made.stdout.split()[0]
        import redis

        redis.Redis.from_url(self.env["VOICEFARM_REDIS_URL"]).flushdb()
        self.clear()
        log = (self.tmp / "farm.log").open("wb")
        from cli.farm import api_argv
        from core.settings import Settings

        settings = Settings(api_port=self.port, api_workers=self.env["VOICEFARM_API_WORKERS"])
        api = [*api_argv(settings), "--log-level", "warning", "--no-access-log"]
        for argv in (api, [sys.executable, "-m", "cli.main", "workers"]):
            self.procs.append(
                subprocess.Popen(
                    argv, stdout=log, stderr=log, start_new_session=True, cwd=ROOT, env=self.env
                )
            )
        import httpx

        # Warm up until a job has *succeeded*: the API accepts `tone` jobs as soon as it is
        # registered (a registration from an earlier run counts), possibly seconds before the
        # worker consumes; the first measured job must not wait for the worker's start.
        deadline = time.monotonic() + 120
        job_id = None
        while time.monotonic() < deadline:
            try:
                if job_id is None:
                    r = httpx.post(
                        f"{self.url}/v1/jobs",
                        json={"text": "Warm up.", "engine": "tone"},
                        headers=self.headers,
                    )
                    if r.status_code == 202:
                        job_id = r.json()["id"]
                elif (
                    httpx.get(f"{self.url}/v1/jobs/{job_id}", headers=self.headers).json()["status"]
                    == "succeeded"
                ):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise SystemExit(f"the farm did not start; see {self.tmp / 'farm.log'}")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def clear(self) -> None:
        _sql(self.dsn, "TRUNCATE jobs CASCADE")

    @property
    def api_pid(self) -> int:
        return self.procs[0].pid

    def stop(self) -> None:
        for p in self.procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            p.wait(timeout=30)


def dispatch_overhead(farm: Farm, jobs: int) -> dict[str, list[float]]:
    """Jobs one at a time on the idle farm: where the time goes around the engine."""
    import httpx

    farm.clear()  # the warm-up job succeeded (Farm.start)
    sent: dict[str, tuple[str, float]] = {}
    with httpx.Client(base_url=farm.url, timeout=30, headers=farm.headers) as c:
        for i in range(jobs):
            word = "".join(chr(97 + int(d)) for d in f"{i:03d}")  # digits would be normalised
            t0 = time.time()
            r = c.post("/v1/jobs", json={"text": f"Probe {word}.", "engine": "tone"})
            assert r.status_code == 202, r.text
            jid = r.json()["id"]
            sent[jid] = (word, t0)
            deadline = time.monotonic() + 60
            while c.get(f"/v1/jobs/{jid}").json()["status"] not in ("succeeded", "failed"):
                if time.monotonic() > deadline:
                    raise SystemExit(f"job {jid} did not finish in 60 s; see {farm.tmp}")
                time.sleep(0.005)
    stamps = {}
    for line in farm.stamps.read_text().splitlines():
        t_start, t_end, text = line.split(" ", 2)
        stamps[text.split()[-1].strip(".")] = (float(t_start), float(t_end))
    rows = _sql(
        farm.dsn,
        "SELECT id::text, extract(epoch FROM finished_at), status FROM jobs"
        " WHERE id::text = ANY(%s)",
        list(sent),
    )
    out: dict[str, list[float]] = {"to_start": [], "to_succeeded": [], "total": []}
    for jid, finished, status in rows:
        word, t0 = sent[jid]
        if status != "succeeded" or word not in stamps:
            continue
        start, end = stamps[word]
        out["to_start"].append((start - t0) * 1000)
        out["to_succeeded"].append((float(finished) - end) * 1000)
        out["total"].append((float(finished) - t0) * 1000)
    return out


def _profile(pids: list[int], seconds: float, path: Path) -> subprocess.Popen[bytes] | None:
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        print("py-spy is not installed (.venv/bin/pip install py-spy): no profile")
        return None
    return subprocess.Popen(
        [
            str(spy),
            "record",
            "--nonblocking",
            "--gil",
            "-r",
            "200",
            "-d",
            str(int(seconds)),
            "-f",
            "raw",
            "-o",
            str(path),
            *[a for p in pids for a in ("-p", str(p))][:2],
            "--subprocesses",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def flame_summary(path: Path, top: int = 18) -> str:
    """Inclusive share of samples per frame (function and file), from py-spy's collapsed stacks;
    idle threads (waiting in the event loop or the thread pool's queue) are left out."""
    total = 0
    inclusive: Counter[str] = Counter()
    # A thread waiting (the pool's idle threads, the event loop's select) is not work.
    idle = ("wait (threading", "select (selectors", "Runner.run (asyncio", "poll (")
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if any(i in frames[-1] for i in idle):
            continue
        n = int(count)
        total += n
        for f in {re.sub(r":\d+\)$", ")", f) for f in frames}:
            inclusive[f] += n
    lines = [f"{n / total:6.1%}  {f}" for f, n in inclusive.most_common(top)] if total else []
    return "\n".join([f"busy samples: {total}", *lines])


# --- the report ------------------------------------------------------------------------------


def _machine() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    pg = _sql("postgresql://postgres@127.0.0.1:5432/postgres", "SHOW server_version")[0][0]
    sync = _sql("postgresql://postgres@127.0.0.1:5432/postgres", "SHOW synchronous_commit")[0][0]
    return (
        f"{dt.date.today()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"PostgreSQL {pg.split()[0]} (synchronous_commit={sync}), load average before the run "
        f"{load}"
    )


def report(
    args: argparse.Namespace,
    levels: dict[int, Any],
    overhead: dict[str, list[float]],
    rss: dict[int, float],
    machine: str,
) -> str:
    cmd = "python bench/admission.py " + " ".join(sys.argv[1:])
    auth = "on (a tenant key)" if args.auth else "off"
    out = [
        BEGIN,
        f"Measured {machine}; `{cmd.strip()}`, API processes: {args.api_workers}, "
        f"authentication {auth}.",
        "",
    ]
    out += [
        "| clients | jobs/s | p50 (ms) | p99 (ms) | answers | clients per API process "
        "| CPU ms per job: API / PostgreSQL / worker / load generator |",
        "| ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for n, r in levels.items():
        lat = [x * 1000 for x in r["lat"]]
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(r["codes"].items()))
        out.append(
            f"| {n} | {len(lat) / r['seconds']:.0f} | {_pct(lat, 50):.1f} | {_pct(lat, 99):.1f} "
            f"| {codes} | {'/'.join(map(str, r.get('split', []))) or '-'} "
            f"| {' / '.join(f'{v:.2f}' for v in r.get('cpu_ms', {}).values())} |"
        )
    if overhead:
        out += ["", "| one job at a time (ms) | p50 | p99 |", "| --- | ---: | ---: |"]
        names = {
            "to_start": "POST -> engine starts",
            "to_succeeded": "engine ends -> `succeeded`",
            "total": "POST -> `succeeded`",
        }
        for k, label in names.items():
            v = overhead[k]
            out.append(f"| {label} ({len(v)} jobs) | {_pct(v, 50):.1f} | {_pct(v, 99):.1f} |")
    if rss:
        parts = ", ".join(f"{v:.0f}" for v in rss.values())
        out += ["", f"Peak RSS of the API processes (MiB): {parts}."]
    return "\n".join([*out, END])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--drive", type=int, help=argparse.SUPPRESS)  # the load process
    parser.add_argument("--url", help="an API already running (then nothing is started)")
    parser.add_argument("--api-key", default=os.environ.get("BENCH_API_KEY", ""))
    parser.add_argument("--levels", default="1,16,64")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--api-workers", type=int, default=None)
    parser.add_argument("--dispatch-jobs", type=int, default=40)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--auth", action="store_true", help="authentication on, clients with a tenant key"
    )
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    if args.drive:
        res = asyncio.run(_load(args.url, args.drive, args.seconds, args.warmup, args.api_key))
        json.dump(res, sys.stdout)
        return
    if args.api_workers is None:
        from core.settings import Settings

        args.api_workers = Settings().api_workers
    machine = _machine()
    farm = None if args.url else Farm(args.api_workers, args.auth)
    url = args.url or (farm.url if farm else "")
    levels: dict[int, Any] = {}
    overhead: dict[str, list[float]] = {}
    rss: dict[int, float] = {}
    try:
        if farm:
            farm.start()
            overhead = dispatch_overhead(farm, args.dispatch_jobs)
        for n in (int(x) for x in args.levels.split(",")):
            if farm:
                farm.clear()
            spy = None
            prof = Path(tempfile.gettempdir()) / "voicefarm-admission-profile.txt"
            if args.profile and farm and n == 16:
                spy = _profile(_descendants(farm.api_pid), args.seconds + args.warmup, prof)
            groups: dict[str, list[int]] = {}
            if farm:
                groups = {
                    "API": _descendants(farm.api_pid),
                    "PostgreSQL": _postgres_pids(),
                    "worker": _descendants(farm.procs[1].pid),
                }
            before = {k: _cpu_seconds(v) for k, v in groups.items()}
            split: list[int] = []
            if farm:
                at = args.warmup + args.seconds / 2
                sampler = threading.Timer(
                    at, lambda f=farm, out=split: out.extend(_connection_split(f.api_pid, f.port))
                )
                sampler.start()
            levels[n] = run_level(url, n, args.seconds, farm.key if farm else args.api_key)
            r = levels[n]
            r["split"] = split
            jobs = max(1, r.get("total", 0))
            r["cpu_ms"] = {k: _cpu_used(before[k], groups[k]) * 1000 / jobs for k in groups}
            r["cpu_ms"]["load generator"] = r.get("cpu", 0.0) * 1000 / jobs
            lat = [x * 1000 for x in r["lat"]]
            print(
                f"clients {n:3d}: {len(lat) / r['seconds']:7.1f} jobs/s"
                f"  p50 {_pct(lat, 50):6.1f} ms  p90 {_pct(lat, 90):6.1f}  p99 {_pct(lat, 99):6.1f}"
                f"  p99.9 {_pct(lat, 99.9):6.1f} ms  answers {r['codes']}"
                f"  clients per API process {'/'.join(map(str, split)) or '-'}"
                "\n      CPU ms per job: "
                + ", ".join(f"{k} {v:.2f}" for k, v in r["cpu_ms"].items()),
                flush=True,
            )
            if spy is not None:
                spy.wait(timeout=60)
                print(flame_summary(prof) if prof.exists() else "no profile")
        if farm:
            rss = _peak_rss_mib(farm.api_pid)
    finally:
        if farm:
            farm.stop()
    section = report(args, levels, overhead, rss, machine)
    print(section)
    if args.write:
        write_block("admission.py", section, "Admission (`bench/admission.py`)")


if __name__ == "__main__":
    main()

"""Fair share: how long tenant A's backlog delays tenant B's single job.

    .venv/bin/python bench/fair_share.py [--backlog 2000] [--workers 1] [--delay 0.05]

Real Celery worker processes (solo pool) on the `solo` fixture engine (tests/fixtures/engines.py,
`--delay` seconds a segment) against a bench database (`voicefarm_bench_fair`) and Redis db 14.
Tenant A's backlog is written as admission writes it (rows committed, then the dispatcher);
once the workers are busy with it, tenant B submits one job. Prints how many of A's jobs started
between B's submission and B's start, B's wait, and A's mean job time. The reconciler runs in
the wait loop (no beat).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TMP = Path(tempfile.mkdtemp(prefix="voicefarm-bench-fair-"))
PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"
DB = "voicefarm_bench_fair"
os.environ.update(
    {
        "VOICEFARM_DATABASE_URL": f"{PG}/{DB}",
        "VOICEFARM_REDIS_URL": "redis://127.0.0.1:6379/14",
        "VOICEFARM_STORAGE_DIR": str(TMP / "storage"),
        "VOICEFARM_WORKER_STATE_DIR": str(TMP / "run"),
        "VOICEFARM_SUPERVISOR_METRICS_PORT": "0",
        "VOICEFARM_WORKER_METRICS_PORT": "0",
        "VOICEFARM_LOG_LEVEL": "WARNING",
    }
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backlog", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--delay", type=float, default=0.05)
    args = parser.parse_args()
    os.environ["FIXTURE_SEGMENT_DELAY"] = str(args.delay)

    import redis
    from sqlalchemy import create_engine, text

    from tests.fixtures.engines import FIXTURE_ENGINES

    os.environ["VOICEFARM_EXTRA_ENGINES"] = FIXTURE_ENGINES
    admin = create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)'))
        c.execute(text(f'CREATE DATABASE "{DB}"'))
    admin.dispose()
    from db.migrate import upgrade

    url = os.environ["VOICEFARM_DATABASE_URL"]
    upgrade(url)
    redis.Redis.from_url(os.environ["VOICEFARM_REDIS_URL"]).flushdb()

    from core.settings import get_settings
    from tests.fixtures.processes import start_worker, wait_until
    from tests.integration.test_fair_share import measure, new_tenant, statuses, submit

    logs = TMP / "logs"
    logs.mkdir()
    workers = [
        start_worker(logs, "solo", name=f"fair{i}", extra_queues="") for i in range(args.workers)
    ]
    try:
        from tasks.maintenance import reconcile

        a, b = new_tenant(url, "backlog"), new_tenant(url, "single")
        t0 = time.perf_counter()
        submit(url, a, args.backlog)
        admitted = time.perf_counter() - t0
        wait_until(
            lambda: statuses(url, a).get("succeeded", 0) >= 10 * args.workers,
            timeout=120,
            what="the backlog to run",
        )
        [b_job] = submit(url, b, 1)
        from db import jobs as q
        from db.session import get_sessionmaker

        def b_done() -> bool:
            reconcile()
            with get_sessionmaker(url)() as s:
                return q.get_job(s, b_job).status == "succeeded"

        wait_until(b_done, timeout=300, what="B's job to finish")
        overtaken, waited, mean = measure(url, a, b_job)
        left = statuses(url, a).get("queued", 0)
        print(
            f"backlog={args.backlog} workers={args.workers} segment_delay={args.delay}s "
            f"dispatch_ahead={get_settings().dispatch_ahead} cores={os.cpu_count()}"
        )
        print(f"backlog written and dispatched in {admitted:.2f} s")
        print(
            f"A jobs started after B was submitted, before B started: {overtaken}; "
            f"B submit->finished {waited:.2f} s; A mean job {mean:.3f} s; "
            f"A still queued when B finished: {left}"
        )
        print(f"B's delay in A-job durations: {waited / max(mean, 1e-6):.1f}")
    finally:
        for w in workers:
            w.stop()
        engine = create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
        from db.session import get_engine

        get_engine(url).dispose()
        with engine.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)'))


if __name__ == "__main__":
    main()

"""PostgreSQL goes away under a real worker: the queue must survive it, and every job must finish
once the database is back. The database is a private server started by the test (never the
machine's own); nothing is mocked."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select

from db import jobs as q
from db.models import Job
from db.session import session_scope
from tasks.send import send_synthesize
from tests.fixtures.pg import private_postgres
from tests.fixtures.processes import start_worker, wait_until

N_JOBS = 5


def _new_jobs(url: str, n: int) -> list[uuid.UUID]:
    ids = []
    with session_scope(url) as s:
        for i in range(n):
            job = Job(
                engine="solo",
                text=f"outage job {i}",
                format="wav",
                speed=1.0,
                priority="interactive",
                metadata_={},
                attempts=0,
                max_attempts=3,
                segments_done=0,
            )
            q.create_job(s, job, "http://127.0.0.1")
            ids.append(job.id)
    return ids


def _messages_in_redis(redis_client: Any, ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Jobs whose message is still in Redis: on a queue, or held unacked by a worker."""
    raw: list[bytes] = []
    for key in redis_client.keys("synth.solo*"):
        raw.extend(redis_client.lrange(key, 0, -1))
    raw.extend(redis_client.hvals("unacked"))
    return {i for i in ids if any(str(i).encode() in m for m in raw)}


def test_worker_keeps_the_queue_while_postgres_is_down(
    tmp_root: Path, log_dir: Path, redis_client: Any
) -> None:
    with private_postgres() as pg:
        ids = _new_jobs(pg.url, N_JOBS)
        worker = start_worker(
            log_dir,
            "solo",
            name="pgdown",
            extra_queues="",
            env={
                "VOICEFARM_DATABASE_URL": pg.url,
                "VOICEFARM_STORAGE_DIR": str(tmp_root / "pgdown-storage"),
            },
        )
        try:
            pg.stop()
            for job_id in ids:
                send_synthesize(job_id, "solo", "interactive")

            def backed_off(times: int) -> bool:
                return worker.log.read_text().count("event=jobs.db_unavailable") >= times

            # Several claims have failed by now (the old worker acked each message right away).
            wait_until(lambda: backed_off(3), timeout=60, what="the worker to back off")
            assert _messages_in_redis(redis_client, ids) == set(ids), worker.tail()
            assert worker.alive()

            pg.start()

            def outcomes() -> list[tuple[str, int]]:
                with session_scope(pg.url) as s:
                    rows = s.execute(select(Job.status, Job.attempts).where(Job.id.in_(ids)))
                    return [(st, att) for st, att in rows]

            wait_until(
                lambda: all(st == "succeeded" for st, _ in outcomes()),
                timeout=120,
                what="every job to succeed after the outage",
            )
            # Nothing was claimed while the database was down: one attempt each.
            assert outcomes() == [("succeeded", 1)] * N_JOBS, worker.tail()
        finally:
            worker.stop()

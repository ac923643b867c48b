"""The reconciler against real PostgreSQL and Redis: lost messages come back whatever the queue
depth, each job at most once per grace period, oldest first, bounded per run."""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text, update

from core.settings import get_settings
from db import jobs as q
from db.models import Job
from db.session import get_sessionmaker, session_scope
from tasks.maintenance import reconcile
from tasks.send import send_synthesize, send_synthesize_many
from tests.fixtures.processes import wait_until

QUEUE = "synth.solo"  # served by no worker in this module: messages stay where we can read them


def queued_job_ids(redis_client: Any, queue: str = QUEUE) -> list[str]:
    """The job id carried by each message waiting in a Celery queue on Redis, oldest first
    (kombu pushes on the left and pops on the right)."""
    ids = []
    for raw in reversed(redis_client.lrange(queue, 0, -1)):
        body = json.loads(base64.b64decode(json.loads(raw)["body"]))
        ids.append(body[0][0])
    return ids


def _new_job(url: str, engine: str = "solo") -> uuid.UUID:
    with session_scope(url) as s:
        job = Job(
            engine=engine,
            text="hello",
            format="wav",
            speed=1.0,
            priority="interactive",
            metadata_={},
            attempts=0,
            max_attempts=3,
            segments_done=0,
        )
        q.create_job(s, job, "http://test")
        return job.id


def _age(url: str, job_id: uuid.UUID, minutes: int) -> None:
    with session_scope(url) as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                dispatched_at=text(f"now() - interval '{minutes} minutes'"),
                created_at=text(f"now() - interval '{minutes} minutes'"),
            )
        )


@pytest.fixture
def long_grace(db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A one-minute grace period, so 'at most once per grace period' needs no clock race."""
    monkeypatch.setitem(os.environ, "VOICEFARM_REQUEUE_GRACE_SECONDS", "60")
    get_settings.cache_clear()
    yield db
    monkeypatch.undo()
    get_settings.cache_clear()


def test_lost_message_behind_a_backlog_is_republished(db: str, redis_client: Any) -> None:
    """Before: a job whose engine queue was not empty waited until it was."""
    waiting = _new_job(db, engine="solo")
    send_synthesize(waiting, "solo", "interactive")  # a backlog with its message in place
    lost = _new_job(db, engine="solo")  # committed, but its message never reached the broker
    assert queued_job_ids(redis_client) == [str(waiting)]

    def republished() -> bool:
        reconcile()
        return str(lost) in queued_job_ids(redis_client)

    wait_until(republished, timeout=30, what="the lost message to be re-published")
    assert len(queued_job_ids(redis_client)) >= 2  # the backlog was never drained meanwhile


def test_each_stale_job_is_republished_once_per_grace_oldest_first(
    long_grace: str, redis_client: Any
) -> None:
    db = long_grace
    jobs = [_new_job(db, engine="solo") for _ in range(5)]
    for minutes, job_id in zip((10, 8, 6, 4, 2), jobs, strict=True):
        _age(db, job_id, minutes)
    fresh = _new_job(db, engine="solo")  # dispatched just now: inside its grace period
    runs = [reconcile(limit=2)["republished"] for _ in range(4)]
    assert runs == [2, 2, 1, 0]  # bounded per run; nothing twice within the grace period
    assert queued_job_ids(redis_client) == [str(j) for j in jobs]  # oldest first, once each
    with get_sessionmaker(db)() as s:
        assert all(q.get_job(s, j).dispatched_at is not None for j in jobs)
        assert str(fresh) not in queued_job_ids(redis_client)


def test_publish_happens_after_the_transaction_commits(
    long_grace: str, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No broker I/O while the reconciler's rows are locked: when a message is sent, the
    dispatch mark is already committed and another connection can lock the row at once."""
    import tasks.dispatch as dispatch

    db = long_grace
    job_id = _new_job(db, engine="solo")
    _age(db, job_id, 5)
    seen: list[Any] = []

    def send(jobs: list[tuple[uuid.UUID, str, str, str]]) -> None:
        for jid, _, _, _ in jobs:
            with get_sessionmaker(db)() as s:
                # NOWAIT raises if the reconciler still held the row lock.
                marked = s.execute(
                    text(
                        "SELECT dispatched_at > now() - interval '1 minute' FROM jobs"
                        " WHERE id = :i FOR UPDATE NOWAIT"
                    ),
                    {"i": jid},
                ).scalar_one()
                seen.append(marked)
        send_synthesize_many(jobs)

    # The reconciler publishes through tasks.dispatch.publish, the dispatcher's one sender.
    monkeypatch.setattr(dispatch, "send_synthesize_many", send)
    assert reconcile()["republished"] == 1
    assert seen == [True]
    assert queued_job_ids(redis_client) == [str(job_id)]


def test_publish_sends_in_batches_and_a_failed_batch_is_dispatched_again(
    db: str, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tasks.dispatch.publish sends a pipeline per PUBLISH_BATCH messages. A broker error in one
    batch leaves the earlier batches sent and marked, and clears the dispatch mark of that batch
    and the ones after it (their delivery is unknown), so the next dispatch picks them at once."""
    import tasks.dispatch as dispatch

    jobs = [_new_job(db) for _ in range(5)]
    with session_scope(db) as s:
        s.execute(update(Job).where(Job.id.in_(jobs)).values(dispatched_at=text("now()")))
    calls: list[int] = []

    def flaky(batch: list[tuple[uuid.UUID, str, str, str]]) -> None:
        calls.append(len(batch))
        if len(calls) == 2:
            raise ConnectionError("broker went away mid-dispatch")
        send_synthesize_many(batch)

    monkeypatch.setattr(dispatch, "PUBLISH_BATCH", 2)
    monkeypatch.setattr(dispatch, "send_synthesize_many", flaky)
    redispatch = [q.Redispatch(j, "solo", "interactive") for j in jobs]
    with pytest.raises(dispatch.PublishFailed, match="3 jobs left"):
        dispatch.publish(db, redispatch)
    assert calls == [2, 2]
    assert queued_job_ids(redis_client) == [str(j) for j in jobs[:2]]  # one pipeline, in order
    with session_scope(db) as s:
        marks = {j: q.get_job(s, j).dispatched_at is not None for j in jobs}
    assert marks == {j: i < 2 for i, j in enumerate(jobs)}

    monkeypatch.setattr(dispatch, "send_synthesize_many", send_synthesize_many)
    assert dispatch.publish(db, redispatch[2:]) == 3
    assert queued_job_ids(redis_client) == [str(j) for j in jobs]


def test_a_batch_that_fails_half_way_sends_none_of_it(
    db: str, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside one real kombu batch (no stand-in for the pipeline), the second message fails to
    build: the first, already buffered, is discarded with the batch, so nothing of it reaches
    Redis, and every job of it is unmarked for the next dispatch. The pooled producer works
    for the next batch."""
    import tasks.dispatch as dispatch
    from tasks.app import celery_app

    jobs = [_new_job(db) for _ in range(3)]
    with session_scope(db) as s:
        s.execute(update(Job).where(Job.id.in_(jobs)).values(dispatched_at=text("now()")))
    real = celery_app.send_task
    calls = 0

    def second_fails(*a: Any, **k: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionError("the broker went away mid-batch")
        return real(*a, **k)

    monkeypatch.setattr(celery_app, "send_task", second_fails)
    redispatch = [q.Redispatch(j, "solo", "interactive") for j in jobs]
    with pytest.raises(dispatch.PublishFailed, match="3 jobs left"):
        dispatch.publish(db, redispatch)
    assert queued_job_ids(redis_client) == []  # the buffered first message was discarded
    with session_scope(db) as s:
        assert all(q.get_job(s, j).dispatched_at is None for j in jobs)
    monkeypatch.setattr(celery_app, "send_task", real)
    assert dispatch.publish(db, redispatch) == 3
    assert queued_job_ids(redis_client) == [str(j) for j in jobs]

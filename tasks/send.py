"""The sending facade: tasks by name, ids only. Call these after the row is committed."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from core.enums import DEFAULT_POOL, Priority, Queue, TaskName, synth_queue


def warm_up() -> None:
    """Import Celery's app and broker transport and make the producer pool, without
    connecting: the API calls this at startup. Done by the first publish instead, it took about
    0.8 s of imports under the GIL, stalling every request the process was serving then."""
    from tasks.app import celery_app

    celery_app.connection_for_write().transport  # noqa: B018 (imports the transport)
    celery_app.amqp.producer_pool  # noqa: B018


def send_synthesize(
    job_id: uuid.UUID | str, engine: str, priority: str, pool: str = DEFAULT_POOL
) -> None:
    from tasks.app import celery_app

    celery_app.send_task(
        TaskName.synthesize.value,
        args=[str(job_id)],
        queue=synth_queue(engine, Priority(priority), pool),
    )


def send_synthesize_many(
    jobs: Sequence[tuple[uuid.UUID | str, str, str, str]],
) -> None:
    """`send_synthesize` for several (job_id, engine, priority, pool) in one Redis round trip
    (kombu's producer batch: one client and one pipeline instead of one per message, about half
    the CPU per message at five messages). Either every message was delivered, or this raised
    and the delivery of each is unknown: the caller clears their dispatch marks, and a message
    sent twice is harmless because a job is claimed once (the attempt fences the rest). The
    pipeline is written when the batch closes, outside Celery's publish retry: a broken
    connection fails the batch at once, and the next dispatch pass (or the reconciler) sends
    its jobs again."""
    if not jobs:
        return
    from tasks.app import celery_app

    with celery_app.producer_or_acquire() as producer, producer.batch():
        for job_id, engine, priority, pool in jobs:
            celery_app.send_task(
                TaskName.synthesize.value,
                args=[str(job_id)],
                queue=synth_queue(engine, Priority(priority), pool),
                producer=producer,
            )


def send_webhook(delivery_id: str) -> None:
    from tasks.app import celery_app

    celery_app.send_task(
        TaskName.deliver_webhook.value, args=[delivery_id], queue=Queue.webhooks.value
    )


def send_prepare_voice(voice_id: uuid.UUID | str) -> None:
    from tasks.app import celery_app

    celery_app.send_task(
        TaskName.prepare_voice.value, args=[str(voice_id)], queue=Queue.voices.value
    )


def send_webhooks(delivery_ids: list[str] | None) -> None:
    for delivery_id in delivery_ids or []:
        send_webhook(delivery_id)


def send_forget_voice(audio_sha256: str) -> None:
    """Erase what was derived from a deleted voice's recording (prepared prompts)."""
    from tasks.app import celery_app

    celery_app.send_task(
        TaskName.forget_voice.value, args=[audio_sha256], queue=Queue.maintenance.value
    )


def send_concatenate_batch(batch_id: uuid.UUID | str) -> None:
    """Join a complete batch's audio into one file (tasks/batches.py)."""
    from tasks.app import celery_app

    celery_app.send_task(
        TaskName.concatenate_batch.value, args=[str(batch_id)], queue=Queue.maintenance.value
    )

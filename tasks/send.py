"""The sending facade: tasks by name, ids only. Call these after the row is committed."""

from __future__ import annotations

import uuid

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

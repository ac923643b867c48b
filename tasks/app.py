"""The Celery app. Configuration follows DESIGN.md's job lifecycle and its known traps."""

from __future__ import annotations

from celery import Celery
from kombu.entity import Queue as KQueue

from core.enums import Queue, TaskName
from core.settings import get_settings

TASK_MODULES = [
    "tasks.synthesize",
    "tasks.webhooks",
    "tasks.maintenance",
    "tasks.voices",
    "tasks.batches",
]


def make_celery() -> Celery:
    settings = get_settings()
    app = Celery("voicefarm", broker=settings.redis_url, include=TASK_MODULES)
    app.conf.update(
        # A killed worker's job comes back: both settings are needed (DESIGN: known traps).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_seconds,
            "queue_order_strategy": "priority",
        },
        # The jobs table is the store of results; Celery's result backend is not used.
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=Queue.maintenance.value,
        task_queues=[
            KQueue(Queue.webhooks.value),
            KQueue(Queue.maintenance.value),
            KQueue(Queue.voices.value),
        ],
        task_create_missing_queues=True,
        task_routes={
            TaskName.deliver_webhook.value: {"queue": Queue.webhooks.value},
            TaskName.reconcile.value: {"queue": Queue.maintenance.value},
            TaskName.retention.value: {"queue": Queue.maintenance.value},
            TaskName.sweep_orphans.value: {"queue": Queue.maintenance.value},
            TaskName.prepare_voice.value: {"queue": Queue.voices.value},
            TaskName.forget_voice.value: {"queue": Queue.maintenance.value},
            TaskName.concatenate_batch.value: {"queue": Queue.maintenance.value},
        },
        # Flower and `celery events` see task lifecycle events from the workers (received,
        # started, succeeded...). Not the sender's `task-sent`: one more Redis PUBLISH on every
        # job's admission path, for a state Flower shows anyway once a worker receives it.
        worker_send_task_events=True,
        task_send_sent_event=False,
        beat_schedule={
            "reconcile": {
                "task": TaskName.reconcile.value,
                "schedule": settings.reconcile_interval_seconds,
                "options": {"expires": settings.reconcile_interval_seconds * 2},
            },
            "retention": {"task": TaskName.retention.value, "schedule": 3600.0},
            "sweep_orphans": {"task": TaskName.sweep_orphans.value, "schedule": 3600.0},
        },
        timezone="UTC",
    )
    from tasks.lifecycle import HeartbeatStep

    app.steps["worker"].add(HeartbeatStep)
    return app


celery_app = make_celery()

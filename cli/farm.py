"""`voicefarm farm` (what `make run` starts), `voicefarm workers`, `voicefarm migrate`."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from core.logging import configure_logging
from core.settings import Settings, get_settings

if TYPE_CHECKING:
    from workers.supervisor import ChildSpec


def _check_redis(settings: Settings) -> str | None:
    import redis

    try:
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3)
        client.ping()
        client.close()
    except redis.RedisError as exc:
        return (
            f"Redis at {settings.redis_url} is unreachable ({exc}). Start it (e.g. "
            "`redis-server --daemonize yes`) or set VOICEFARM_REDIS_URL."
        )
    return None


def run_migrate(timeout: float = 30.0) -> int:
    from db.migrate import DatabaseUnreachable, upgrade, wait_for_database

    settings = get_settings()
    configure_logging(settings.log_level)
    try:
        wait_for_database(settings.database_url, timeout=timeout)
    except DatabaseUnreachable as exc:
        print(f"voicefarm: {exc}", file=sys.stderr)
        return 1
    upgrade(settings.database_url)
    return 0


def run_workers(pool: str | None = None) -> int:
    """The supervisor for `pool` (None: VOICEFARM_WORKER_POOL, `default` unless set)."""
    from db.pools import check_pool_name
    from workers.supervisor import Supervisor, helper_cpus, worker_specs

    settings = get_settings()
    if pool is not None:
        try:
            check_pool_name(pool)
        except ValueError as exc:
            print(f"voicefarm: {exc}", file=sys.stderr)
            return 2
        settings = settings.model_copy(update={"worker_pool": pool})
    configure_logging(settings.log_level)
    try:
        specs = worker_specs(settings)
    except ValueError as exc:  # VOICEFARM_ENGINE_CPUS this host cannot honour
        print(f"voicefarm: {exc}", file=sys.stderr)
        return 2
    rest = helper_cpus(specs)
    if rest is not None:
        # The ops worker and the supervisor itself stay off the engines' CPUs too (children
        # inherit this; each synthesis worker moves its engine thread to its own share).
        os.sched_setaffinity(0, rest)
    supervisor = Supervisor(specs, on_restart=_count_restart(settings))
    return supervisor.run()


def _count_restart(settings: Settings) -> Callable[[str, str], None]:
    from prometheus_client import Counter, start_http_server

    restarts = Counter("voicefarm_worker_restarts_total", "Worker restarts", ["worker", "reason"])
    if settings.supervisor_metrics_port:  # 0: off
        start_http_server(settings.supervisor_metrics_port, addr=settings.metrics_host)

    def on_restart(worker: str, reason: str) -> None:
        restarts.labels(worker, reason).inc()

    return on_restart


def flower_spec(settings: Settings, state: Path) -> ChildSpec:
    """Flower with basic auth. The credentials travel in Flower's own FLOWER_BASIC_AUTH
    variable, never on the command line, where `ps` shows them to every local user."""
    from workers.supervisor import ChildSpec, celery_argv

    return ChildSpec(
        "flower",
        celery_argv(
            "flower",
            f"--port={settings.flower_port}",
            f"--address={settings.flower_address}",
            "--persistent=True",
            f"--db={state / 'flower.db'}",
        ),
        env={"FLOWER_BASIC_AUTH": settings.flower_basic_auth.get_secret_value()},
    )


def api_argv(settings: Settings) -> list[str]:
    """The API with `VOICEFARM_API_WORKERS` uvicorn processes, a listening socket each
    (api/serve.py says why not `uvicorn --workers`). Each process imports the app after the
    spawn, so pools and clients are per process (house rule 5)."""
    return [
        sys.executable,
        "-m",
        "api.serve",
        "--host",
        settings.api_host,
        "--port",
        str(settings.api_port),
        "--workers",
        str(settings.api_workers),
    ]


def run_farm() -> int:
    """Everything on one machine, in the foreground; Ctrl-C (or SIGTERM) stops every process."""
    from workers.supervisor import ChildSpec, Supervisor, celery_argv

    settings = get_settings()
    configure_logging(settings.log_level)
    log = logging.getLogger("voicefarm.farm")
    problem = _check_redis(settings)
    if problem:
        print(f"voicefarm: {problem}", file=sys.stderr)
        return 1
    if run_migrate(timeout=10.0):
        return 1
    state = settings.worker_state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    exe = sys.executable
    specs = [
        ChildSpec("api", api_argv(settings)),
        # Longer than the inner supervisor's own grace, so it can stop its children cleanly.
        ChildSpec("workers", [exe, "-m", "cli.main", "workers"], stop_grace=30.0),
        ChildSpec(
            "beat",
            celery_argv(
                "beat", "--loglevel", settings.log_level, "-s", str(state / "celerybeat-schedule")
            ),
        ),
        flower_spec(settings, state),
    ]
    log.info(
        "event=farm.start api=http://%s:%d flower=http://127.0.0.1:%d",
        settings.api_host,
        settings.api_port,
        settings.flower_port,
    )
    return Supervisor(specs).run()

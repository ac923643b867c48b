"""API-side Prometheus metrics. Queue depth comes from PostgreSQL, the source of truth
(Flower's own /metrics has none and skips auth)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.settings import get_settings
from db import jobs as q
from db.session import get_sessionmaker

REGISTRY = CollectorRegistry()
JOBS_SUBMITTED = Counter(
    "voicefarm_jobs_submitted_total",
    "Jobs accepted by the API, by engine and tenant name (tenants are few: bounded labels)",
    ["engine", "tenant"],
    registry=REGISTRY,
)
PREDICT_WAITING = Gauge(
    "voicefarm_predict_waiting", "/api/predict calls waiting for their job", registry=REGISTRY
)
PREDICT_REFUSED = Counter(
    "voicefarm_predict_refused_total", "/api/predict calls refused with 429", registry=REGISTRY
)


HTTP_REQUESTS = Counter(
    "voicefarm_http_requests_total",
    "API responses by method and status class (2xx, 4xx, 5xx)",
    ["method", "status"],
    registry=REGISTRY,
)


class CountRequests:
    """ASGI middleware: counts every HTTP response by status class (the 5xx alert)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = f"{int(message['status']) // 100}xx"
                HTTP_REQUESTS.labels(scope.get("method", ""), status).inc()
            await send(message)

        await self.app(scope, receive, counted)


class QueueDepth(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "voicefarm_queue_depth",
            "Jobs queued or running, by engine",
            labels=["engine", "status"],
        )
        try:
            with get_sessionmaker(get_settings().database_url)() as s:
                depth = q.queue_depth(s)
        except Exception:
            depth = {}
        for (engine, status), n in sorted(depth.items()):
            gauge.add_metric([engine, status], n)
        yield gauge
        age = GaugeMetricFamily(
            "voicefarm_queue_oldest_age_seconds",
            "Age of the oldest queued job, by engine and priority (0: none waiting)",
            labels=["engine", "priority"],
        )
        try:
            with get_sessionmaker(get_settings().database_url)() as s:
                ages = q.oldest_queued_age(s)
        except Exception:
            ages = {}
        for (engine, priority), seconds in sorted(ages.items()):
            age.add_metric([engine, priority], seconds)
        yield age


REGISTRY.register(QueueDepth())

"""API-side Prometheus metrics. Queue depth comes from PostgreSQL, the source of truth
(Flower's own /metrics has none and skips auth)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

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


REGISTRY.register(QueueDepth())

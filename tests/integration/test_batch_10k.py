"""A large batch end to end (2,000 items in `make test`, 10,000 in `make test-long`):
admission off the event loop (measured: /healthz and GET /v1/jobs stay fast meanwhile), fast
fixture workers, counts, manifest, webhook."""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.processes import Proc, free_port, start_api, start_worker, wait_until
from tests.fixtures.receiver import Receiver

# `make test` runs 1,000 items (about a minute here; 2,000 took two and the suite passed 15
# minutes); `make test-long` runs the 10,000 (about ten minutes on 2 cores, several
# INSERT chunks: docs/BENCHMARKS.md).
N = int(os.environ.get("VOICEFARM_TEST_BATCH_ITEMS", "1000"))
WORKERS = 2
pytestmark = pytest.mark.timeout(1800)


@pytest.fixture
def farm(db: str, log_dir: Path) -> Iterator[str]:
    env = {"FIXTURE_SEGMENT_DELAY": "0", "VOICEFARM_DISPATCH_AHEAD": "64"}
    workers: list[Proc] = []
    try:
        for i in range(WORKERS):
            extra = "webhooks,maintenance" if i == 0 else ""
            workers.append(
                start_worker(log_dir, "tone", name=f"b10k-{i}", extra_queues=extra, env=env)
            )
        port = free_port()
        api = start_api(log_dir, port, env)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            api.stop()
    finally:
        for w in workers:
            w.stop()


def _probe(url: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(timeout=30) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            c.get(url)
            out.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.01)


def _stats(xs: list[float]) -> str:
    xs = sorted(xs)
    p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))]
    return f"n={len(xs)} p50={statistics.median(xs):.1f}ms p99={p99:.1f}ms max={xs[-1]:.1f}ms"


def test_ten_thousand_items(farm: str, receiver: Receiver, log_dir: Path) -> None:
    items = [{"text": f"Item {i}.", "engine": "tone"} for i in range(N)]
    health: list[float] = []
    listing: list[float] = []
    stop = threading.Event()
    probes = [
        threading.Thread(target=_probe, args=(f"{farm}/healthz", stop, health)),
        threading.Thread(target=_probe, args=(f"{farm}/v1/jobs?limit=20", stop, listing)),
    ]
    for t in probes:
        t.start()
    time.sleep(0.3)
    before = len(health), len(listing)
    t0 = time.perf_counter()
    r = httpx.post(
        f"{farm}/v1/batches",
        json={"items": items, "webhook_url": receiver.url},
        timeout=120,
    )
    admit_s = time.perf_counter() - t0
    during = health[before[0] :], listing[before[1] :]
    stop.set()
    for t in probes:
        t.join()
    assert r.status_code == 202, r.text
    batch = r.json()
    assert batch["items"] == N
    report = (
        f"admission of {N} items: {admit_s:.2f}s; during it /healthz {_stats(during[0])}; "
        f"GET /v1/jobs {_stats(during[1])}"
    )
    (log_dir / "batch-10k.txt").write_text(report + "\n")
    print(report)
    # The event loop stayed free: the probes kept being answered while the POST was in
    # flight (a blocked loop answers none until it ends). Their latencies are a figure for
    # docs/BENCHMARKS.md, printed above, not an assertion: they move with the machine's load.
    assert len(during[0]) >= 3, "healthz was not served while the batch was admitted"
    assert len(during[1]) >= 3, "GET /v1/jobs was not served while the batch was admitted"

    c = httpx.Client(base_url=farm, timeout=30)
    t1 = time.perf_counter()

    def complete() -> dict[str, Any] | None:
        body: dict[str, Any] = c.get(f"/v1/batches/{batch['id']}").json()
        return body if body["completed_at"] else None

    done = wait_until(complete, timeout=1700, what=f"{N} items to finish")
    run_s = time.perf_counter() - t1
    assert done["counts"]["succeeded"] == N, done["counts"]
    hits = receiver.wait_for(lambda x: x.json["type"] == "batch.completed", timeout=30)
    assert len(hits) == 1 and hits[0].json["data"]["counts"]["succeeded"] == N
    lines = [json.loads(x) for x in c.get(f"/v1/batches/{batch['id']}/manifest").text.splitlines()]
    assert [m["index"] for m in lines] == list(range(N))
    assert all(m["status"] == "succeeded" and m["audio_url"] for m in lines)
    assert len({m["job_id"] for m in lines}) == N
    with (log_dir / "batch-10k.txt").open("a") as fh:
        fh.write(f"ran {N} items on {WORKERS} solo workers in {run_s:.1f}s\n")
    time.sleep(1)
    assert len(receiver.wait_for(lambda x: x.json["type"] == "batch.completed")) == 1

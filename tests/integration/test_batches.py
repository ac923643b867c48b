"""Batches through the API with real workers: validation, cancel, concatenation, replay."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import soundfile as sf

from core.webhooks import verify
from tests.fixtures.processes import Proc, wait_until
from tests.fixtures.receiver import Received, Receiver


def _verified(secret: str, hit: Received) -> bool:
    h = hit.headers
    return verify(
        secret, h["webhook-id"], int(h["webhook-timestamp"]), hit.body, h["webhook-signature"]
    )


def _done(client: Any, batch_id: str, timeout: float = 60) -> dict[str, Any]:
    def complete() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/v1/batches/{batch_id}").json()
        return body if body["completed_at"] else None

    result: dict[str, Any] = wait_until(complete, timeout=timeout, what="the batch to complete")
    return result


def test_invalid_items_refuse_the_whole_batch_with_their_indexes(client: Any) -> None:
    items: list[dict[str, Any]] = [
        {"text": "fine", "engine": "tone"},
        {"text": "", "engine": "tone"},
    ]
    items += [{"text": "x", "engine": "nope"}, {"text": "ok", "engine": "tone", "speed": 99}]
    r = client.post("/v1/batches", json={"items": items})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "batch_invalid"
    assert [(e["index"], e["code"]) for e in err["items"]] == [
        (1, "text_empty"),
        (2, "unknown_engine"),
        (3, "validation_failed"),
    ]
    assert client.get("/v1/jobs").json()["items"] == []
    assert client.get("/v1/batches").json() == []


def test_batch_limits(client: Any, settings: Any) -> None:
    r = client.post("/v1/batches", json={"items": []})
    assert r.status_code == 422
    many = [{"text": "a", "engine": "tone"}] * (settings.batch_max_items + 1)
    r = client.post("/v1/batches", json={"items": many})
    assert r.status_code == 422 and "at most" in r.json()["error"]["message"]
    r = client.post("/v1/batches", json={"items": [{"text": "a", "webhook_url": "http://x"}]})
    assert r.json()["error"]["items"][0]["field"] == "webhook_url"


def test_jsonl_batch_concatenated_with_webhook(
    client: Any, worker: Proc, receiver: Receiver, settings: Any
) -> None:
    lines = "\n".join(json.dumps({"text": f"Item {i}.", "engine": "tone"}) for i in range(3))
    r = client.post(
        f"/v1/batches?concatenate=true&webhook_url={receiver.url}",
        content=lines.encode(),
        headers={"content-type": "application/x-ndjson"},
    )
    assert r.status_code == 202, r.text
    batch = r.json()
    assert batch["items"] == 3 and batch["counts"]["queued"] == 3
    jobs = client.get("/v1/jobs").json()["items"]
    assert {j["priority"] for j in jobs} == {"batch"}
    done = _done(client, batch["id"])
    assert done["counts"]["succeeded"] == 3
    hits = receiver.wait_for(lambda x: x.json["type"] == "batch.completed")
    assert len(hits) == 1
    hit = hits[0]
    assert _verified(settings.webhook_secret.get_secret_value(), hit)
    assert hit.json["data"]["id"] == batch["id"]

    from tasks.maintenance import reconcile

    wait_until(
        lambda: (
            reconcile() is not None
            and client.get(f"/v1/batches/{batch['id']}").json()["audio"]["status"]
            in ("ready", "failed")
        ),
        timeout=30,
        what="the concatenated audio",
    )
    assert client.get(f"/v1/batches/{batch['id']}").json()["audio"]["status"] == "ready"
    audio = client.get(f"/v1/batches/{batch['id']}/audio")
    assert audio.status_code == 200
    data, _rate = sf.read(io.BytesIO(audio.content))
    parts = [sf.read(io.BytesIO(client.get(f"/v1/jobs/{j['id']}/audio").content))[0] for j in jobs]
    assert len(data) == sum(len(p) for p in parts)
    manifest = [
        json.loads(x) for x in client.get(f"/v1/batches/{batch['id']}/manifest").text.splitlines()
    ]
    assert [m["index"] for m in manifest] == [0, 1, 2]
    assert all(m["status"] == "succeeded" and m["audio_url"] for m in manifest)


def test_cancel_stops_queued_items_and_completes_once(
    client: Any, worker: Proc, receiver: Receiver
) -> None:
    items = [{"text": "Slow one. " * 3, "engine": "slow"} for _ in range(20)]
    r = client.post("/v1/batches", json={"items": items, "webhook_url": receiver.url})
    batch_id = r.json()["id"]
    c = client.post(f"/v1/batches/{batch_id}/cancel")
    assert c.status_code == 200, c.text
    done = _done(client, batch_id)
    assert done["counts"]["canceled"] >= 18
    assert done["status"] == "canceled"
    receiver.wait_for(lambda x: x.json["type"] == "batch.completed")
    assert client.post(f"/v1/batches/{batch_id}/cancel").status_code == 409
    page = client.get(f"/v1/batches/{batch_id}/items", params={"limit": 7}).json()
    assert [i["index"] for i in page["items"]] == list(range(7)) and page["next_cursor"] == 6
    page = client.get(f"/v1/batches/{batch_id}/items", params={"limit": 7, "cursor": 6}).json()
    assert page["items"][0]["index"] == 7


def test_replayed_webhook_keeps_its_id_and_verifies(
    client: Any, worker: Proc, receiver: Receiver, settings: Any, tmp_path: Path
) -> None:
    r = client.post(
        "/v1/jobs", json={"text": "Hello.", "engine": "tone", "webhook_url": receiver.url}
    )
    job_id = r.json()["id"]
    first = receiver.wait_for(lambda x: x.json["type"] == "job.succeeded")[0]
    delivery_id = first.headers["webhook-id"]
    wait_until(
        lambda: any(
            d["id"] == delivery_id and d["status"] == "delivered"
            for d in client.get(f"/v1/jobs/{job_id}/webhooks").json()
        ),
        what="the delivery to be recorded",
    )
    rr = client.post(f"/v1/jobs/{job_id}/webhooks/{delivery_id}/retry")
    assert rr.status_code == 202, rr.text
    again = wait_until(
        lambda: (
            len(receiver.wait_for(lambda x: x.headers["webhook-id"] == delivery_id)) >= 2
            and receiver.wait_for(lambda x: x.headers["webhook-id"] == delivery_id)
        ),
        what="the replay",
    )
    replay = again[-1]
    assert _verified(settings.webhook_secret.get_secret_value(), replay)
    assert replay.body == first.body
    hist = [d for d in client.get(f"/v1/jobs/{job_id}/webhooks").json() if d["id"] == delivery_id]
    assert hist[0]["attempts"] == 2
    assert client.post(f"/v1/jobs/{job_id}/webhooks/msg_nope/retry").status_code == 404


def test_disabled_endpoint_is_listed_and_enabled(
    client: Any, worker: Proc, receiver: Receiver
) -> None:
    receiver.script = [410]
    r = client.post(
        "/v1/jobs", json={"text": "Hello.", "engine": "tone", "webhook_url": receiver.url}
    )
    job_id = r.json()["id"]
    wait_until(
        lambda: client.get("/v1/webhooks/disabled").json(), what="the endpoint to be disabled"
    )
    listed = client.get("/v1/webhooks/disabled").json()
    assert listed[0]["url"] == receiver.url
    e = client.post("/v1/webhooks/enable", json={"url": receiver.url})
    assert e.status_code == 200 and e.json()["enabled"] >= 1
    assert client.get("/v1/webhooks/disabled").json() == []
    assert client.post("/v1/webhooks/enable", json={"url": receiver.url}).status_code == 404
    assert job_id


def test_idempotency_key_answers_the_same_batch_and_writes_nothing_more(client: Any) -> None:
    """A retried POST /v1/batches (same key, same bytes) answers the batch it created and
    writes no second set of jobs; the key with another request is a 409; no key, a new batch."""
    items = [{"text": "one", "engine": "tone"}, {"text": "two", "engine": "tone"}]
    key = {"Idempotency-Key": "nightly-2026-11-30"}
    a = client.post("/v1/batches", json={"items": items}, headers=key)
    b = client.post("/v1/batches", json={"items": items}, headers=key)
    assert a.status_code == b.status_code == 202, (a.text, b.text)
    assert b.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in a.headers
    assert a.json()["id"] == b.json()["id"] and b.json()["items"] == 2
    assert len(client.get("/v1/batches").json()) == 1
    assert len(client.get("/v1/jobs").json()["items"]) == 2

    for other in (
        {"json": {"items": items[:1]}},
        {"content": "\n".join(json.dumps(i) for i in items), "params": {"concatenate": "true"}},
    ):
        headers = {**key}
        if "content" in other:
            headers["Content-Type"] = "application/x-ndjson"
        c = client.post("/v1/batches", headers=headers, **other)
        assert c.status_code == 409 and c.json()["error"]["code"] == "idempotency_key_reused"
    assert len(client.get("/v1/jobs").json()["items"]) == 2

    d = client.post("/v1/batches", json={"items": items})
    assert d.status_code == 202 and d.json()["id"] != a.json()["id"]
    assert len(client.get("/v1/jobs").json()["items"]) == 4
    long_key = {"Idempotency-Key": "k" * 256}
    assert client.post("/v1/batches", json={"items": items}, headers=long_key).status_code == 422


def test_concurrent_retries_with_one_key_make_one_batch(client: Any, settings: Any) -> None:
    """Four identical submissions at once with one key (a client retrying on a timeout while
    the first is still being admitted): one batch, its items once, every answer naming it."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from api.auth import DEFAULT_CALLER
    from api.batch_submit import submit_batch

    raw = json.dumps({"items": [{"text": f"item {i}", "engine": "tone"} for i in range(50)]})
    start = Barrier(4)

    def submit(_: int) -> tuple[str, bool]:
        start.wait()
        view, replayed = submit_batch(
            settings, DEFAULT_CALLER, raw.encode(), "application/json", {}, "same-key"
        )
        return view["id"], replayed

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(submit, range(4)))
    assert len({batch_id for batch_id, _ in answers}) == 1
    assert [replayed for _, replayed in answers].count(False) == 1
    assert len(client.get("/v1/batches").json()) == 1
    assert len(client.get("/v1/jobs", params={"limit": 200}).json()["items"]) == 50

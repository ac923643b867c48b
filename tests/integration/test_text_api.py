"""POST /v1/text/normalize previews what a job's text becomes; admission refuses tags on Piper."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from core.engines import BUILTIN


def test_preview_shows_normalised_text_segments_and_markup(client: TestClient) -> None:
    r = client.post("/v1/text/normalize", json={"text": "Dr. Lee paid $5.50. Say [M][AY0] now!"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["normalized"] == "Doctor Lee paid five dollars, fifty cents. Say [M][AY0] now!"
    assert body["segments"] == [{"text": body["normalized"], "chars": len(body["normalized"])}]
    (run,) = body["markup"]
    assert run == {"kind": "arpabet", "start": 47, "end": 55, "text": "[M][AY0]"}
    assert body["normalized"][run["start"] : run["end"]] == run["text"]


def test_preview_uses_the_engines_segment_limit(client: TestClient) -> None:
    text = "Sentence number one is here. " * 40
    body = client.post("/v1/text/normalize", json={"text": text, "engine": "piper"}).json()
    limit = BUILTIN["piper"].max_segment_chars
    assert len(body["segments"]) > 1
    assert all(s["chars"] <= limit and s["chars"] == len(s["text"]) for s in body["segments"])


def test_preview_refuses_bad_markup_with_its_span(client: TestClient) -> None:
    r = client.post("/v1/text/normalize", json={"text": "hello [xyz] there"})
    assert r.status_code == 422
    err: dict[str, Any] = r.json()["error"]
    assert err["code"] == "markup_invalid" and err["field"] == "text"
    assert err["message"].startswith("characters 6-11 '[xyz]'")
    r = client.post("/v1/text/normalize", json={"text": "<strong>never closed"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "markup_invalid"


def test_preview_refuses_empty_text_and_unknown_engines(client: TestClient) -> None:
    r = client.post("/v1/text/normalize", json={"text": " \n "})
    assert r.status_code == 422 and r.json()["error"]["code"] == "text_empty"
    r = client.post("/v1/text/normalize", json={"text": "hi", "engine": "nope"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_engine"


def test_preview_refuses_tags_piper_cannot_honour(client: TestClient) -> None:
    r = client.post("/v1/text/normalize", json={"text": "hi [breath] there", "engine": "piper"})
    assert r.status_code == 422 and "tag markup" in r.json()["error"]["message"]


def test_admission_refuses_tags_on_piper(client: TestClient) -> None:
    for text in ("hi [breath] there", "<strong>hi</strong>"):
        r = client.post("/v1/jobs", json={"text": text, "engine": "piper"})
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["code"] == "markup_invalid" and "tag markup" in err["message"]

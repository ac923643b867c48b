"""/v1/text/normalize: what a job's text becomes (normalised text, segments, markup)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.admission import check_markup
from api.deps import SessionDep, SettingsDep, json_response
from api.errors import responses
from api.schemas import MarkupOut, SegmentOut, TextPreviewIn, TextPreviewOut
from core.engines import catalog
from core.errors import MarkupInvalid, TextEmpty, TextTooLong, UnknownEngine
from core.text import normalize, parse_markup
from core.textnorm import prepare
from db.engines import registered_specs

router = APIRouter(prefix="/v1/text", tags=["text"])


@router.post(
    "/normalize",
    response_model=TextPreviewOut,
    responses=responses(MarkupInvalid, TextEmpty, TextTooLong, UnknownEngine),
)
def preview(body: TextPreviewIn, settings: SettingsDep, session: SessionDep) -> Response:
    """Preview the normalised text and the segments a job's text is synthesised in."""
    text = normalize(body.text)
    if len(text) > settings.max_text_chars:
        raise TextTooLong(
            f"text has {len(text)} characters; the limit is {settings.max_text_chars}",
            field="text",
        )
    engine_name = body.engine or settings.default_engine
    spec = catalog(settings, registered_specs(session)).get(engine_name)
    if spec is None:
        raise UnknownEngine(f"engine {engine_name!r} is not available", field="engine")
    check_markup(text, spec)
    prepared = prepare(text, spec, settings.segment_max_chars, body.language)
    out = TextPreviewOut(
        normalized=prepared.normalized,
        segments=[SegmentOut(text=s, chars=len(s)) for s in prepared.segments],
        markup=[
            MarkupOut(
                kind=r.kind.value,
                start=r.start,
                end=r.end,
                text=prepared.normalized[r.start : r.end],
            )
            for r in parse_markup(prepared.normalized)
        ],
    )
    return json_response(out)

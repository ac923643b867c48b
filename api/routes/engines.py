"""/v1/engines: what each engine offers (voices, markup, formats), so clients can pick."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import SessionDep, SettingsDep, json_response
from api.schemas import EngineOut
from core.engines import catalog
from db.engines import registered_specs

router = APIRouter(prefix="/v1/engines", tags=["engines"])


@router.get("", response_model=list[EngineOut])
def list_engines(settings: SettingsDep, session: SessionDep) -> Response:
    """Engines this farm accepts jobs for, with their voices and capabilities."""
    engines = [
        EngineOut(
            name=spec.name,
            default=spec.name == settings.default_engine,
            modes=sorted(spec.modes),
            voice_modes=sorted(spec.voice_modes),
            markup=sorted(spec.markup),
            languages=sorted(spec.languages),
            sample_rate=spec.sample_rate,
            default_voice=spec.default_voice,
            voices=sorted(spec.voices) if spec.voices is not None else None,
            formats=list(spec.formats),
            speed_range=spec.speed_range,
        )
        for spec in catalog(settings, registered_specs(session)).values()
    ]
    return json_response(engines)

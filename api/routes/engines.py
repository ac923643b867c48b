"""/v1/engines: what each engine offers (voices, markup, formats), so clients can pick."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import SettingsDep
from api.schemas import EngineOut
from core.engines import catalog

router = APIRouter(prefix="/v1/engines", tags=["engines"])


@router.get("", response_model=list[EngineOut])
def list_engines(settings: SettingsDep) -> list[EngineOut]:
    """Engines this farm accepts jobs for, with their voices and capabilities."""
    return [
        EngineOut(
            name=spec.name,
            default=spec.name == settings.default_engine,
            modes=sorted(spec.modes),
            markup=sorted(spec.markup),
            languages=sorted(spec.languages),
            sample_rate=spec.sample_rate,
            default_voice=spec.default_voice,
            voices=sorted(spec.voices) if spec.voices is not None else None,
            formats=list(spec.formats),
            speed_range=spec.speed_range,
        )
        for spec in catalog(settings).values()
    ]

"""Find engine classes: `VOICEFARM_EXTRA_ENGINES`, then the `voicefarm.engines` entry points."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from core.engines import parse_extra_engines
from core.settings import Settings
from workers.engines.base import Engine


class EngineNotFound(LookupError):
    pass


def load_engine_class(name: str, settings: Settings) -> type[Engine]:
    target = parse_extra_engines(settings.extra_engines).get(name)
    if target:
        module, _, attr = target.partition(":")
        cls: type[Engine] = getattr(importlib.import_module(module), attr)
        return cls
    for ep in entry_points(group="voicefarm.engines"):
        if ep.name == name:
            loaded: type[Engine] = ep.load()
            return loaded
    raise EngineNotFound(f"no engine named {name!r} is installed")


def create_engine(name: str, settings: Settings) -> Engine:
    cls = load_engine_class(name, settings)
    return cls(settings)  # type: ignore[call-arg]

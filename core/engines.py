"""What each engine can do, readable by the API without importing any worker code or torch.

Workers hold the engine implementations (`workers/engines`); this catalogue holds their public
capabilities so admission can reject a job no worker could ever run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.settings import Settings
from core.text import MarkupKind

AUDIO_FORMATS = ("wav",)


@dataclass(frozen=True)
class EngineSpec:
    name: str
    modes: frozenset[str]
    markup: frozenset[MarkupKind]
    languages: frozenset[str]
    sample_rate: int
    default_voice: str | None
    # None: the engine accepts any voice name and resolves it itself.
    voices: frozenset[str] | None = None
    formats: tuple[str, ...] = AUDIO_FORMATS
    speed_range: tuple[float, float] = (0.5, 2.0)
    extra: dict[str, str] = field(default_factory=dict)


PIPER_BUNDLED_VOICE = "en_US-joe-medium"

# CosyVoice 3 speaks these through its instruct mode ("用四川话说这句话").
COSYVOICE_LANGUAGES = frozenset({"zh", "en", "ja", "ko", "yue", "de", "es", "fr", "it", "ru"})

BUILTIN: dict[str, EngineSpec] = {
    "piper": EngineSpec(
        name="piper",
        modes=frozenset({"preset"}),
        markup=frozenset({MarkupKind.arpabet}),
        languages=frozenset({"en"}),
        sample_rate=22050,
        default_voice=PIPER_BUNDLED_VOICE,
        voices=frozenset({PIPER_BUNDLED_VOICE}),
    ),
    "cosyvoice": EngineSpec(
        name="cosyvoice",
        modes=frozenset({"preset", "instruct"}),
        markup=frozenset({MarkupKind.pinyin, MarkupKind.arpabet}),
        languages=COSYVOICE_LANGUAGES,
        sample_rate=24000,
        default_voice=None,
        voices=None,  # the model's own speakers; the worker checks the name
    ),
}


def parse_extra_engines(raw: str) -> dict[str, str]:
    """`"a=pkg.mod:Cls,b=pkg.mod:Other"` -> {"a": "pkg.mod:Cls", ...}."""
    out = {}
    for item in filter(None, (p.strip() for p in raw.split(","))):
        name, sep, target = item.partition("=")
        if not sep or ":" not in target:
            raise ValueError(f"VOICEFARM_EXTRA_ENGINES item {item!r} is not name=module:Class")
        out[name.strip()] = target.strip()
    return out


def catalog(settings: Settings) -> dict[str, EngineSpec]:
    """The engines admission accepts: the enabled built-ins plus any extra ones."""
    enabled = {n.strip() for n in settings.engines.split(",") if n.strip()}
    enabled.add(settings.default_engine)
    specs = {name: spec for name, spec in BUILTIN.items() if name in enabled}
    for name in parse_extra_engines(settings.extra_engines):
        specs.setdefault(
            name,
            EngineSpec(
                name=name,
                modes=frozenset({"preset", "instruct"}),
                markup=frozenset(MarkupKind),
                languages=frozenset(),
                sample_rate=16000,
                default_voice=None,
            ),
        )
    return specs

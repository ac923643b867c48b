"""What each engine can do, readable by the API without importing any worker code or torch.

Workers hold the engine implementations (`workers/engines`); this catalogue holds their public
capabilities so admission can reject a job no worker could ever run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.settings import Settings
from core.text import MarkupKind

# Every format is a farm-side conversion of the engine's samples (workers/audio.py), so every
# engine offers all of them unless its spec declares fewer.
AUDIO_FORMATS = ("wav", "flac", "mp3", "ogg", "opus", "pcm")
# Formats that carry PCM at a chosen bit depth; mp3, ogg (Vorbis) and opus take none.
BIT_DEPTHS: dict[str, tuple[int, ...]] = {"wav": (16, 24), "flac": (16, 24), "pcm": (16, 24)}
DEFAULT_BIT_DEPTH = 16
# Opus encodes only at these rates; a job without a sample rate gets the next one up.
OPUS_SAMPLE_RATES = (8000, 12000, 16000, 24000, 48000)
LOUDNESS_RANGE_LUFS = (-40.0, -5.0)
# `pcm` is raw little-endian signed samples, mono, no header: `audio/L16` would promise
# big-endian (RFC 2586), so it is served as bytes and described by the job's result
# (sample_rate, bit_depth) and by X-Audio-* headers on the download.
CONTENT_TYPES = {
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
    "opus": "audio/ogg; codecs=opus",
    "pcm": "application/octet-stream",
}


def content_type(fmt: str) -> str:
    return CONTENT_TYPES.get(fmt, "application/octet-stream")


def opus_rate(rate: int) -> int:
    """The Opus rate a `rate` Hz signal is resampled to: itself, or the next one up."""
    return next((r for r in OPUS_SAMPLE_RATES if r >= rate), OPUS_SAMPLE_RATES[-1])


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
    # Modes that speak with a cloned voice: the job names one (`voice_id`) or the farm's
    # default voice (VOICEFARM_DEFAULT_VOICE_ID) is used; without either, `voice_required`.
    voice_modes: frozenset[str] = frozenset()
    # The longest segment (characters) the farm hands this engine in one call; the worker
    # uses min(this, VOICEFARM_SEGMENT_MAX_CHARS) (core/textnorm.prepare).
    max_segment_chars: int = 400
    # The engine's own frontend reads numbers, dates... (core/textnorm: the farm then skips
    # its normalisation, except for text with markup).
    normalizes_text: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "modes": sorted(self.modes),
            "markup": sorted(self.markup),
            "languages": sorted(self.languages),
            "sample_rate": self.sample_rate,
            "default_voice": self.default_voice,
            "voices": None if self.voices is None else sorted(self.voices),
            "formats": list(self.formats),
            "speed_range": list(self.speed_range),
            "voice_modes": sorted(self.voice_modes),
            "max_segment_chars": self.max_segment_chars,
            "normalizes_text": self.normalizes_text,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EngineSpec:
        voices = data.get("voices")
        return cls(
            name=str(data["name"]),
            modes=frozenset(data.get("modes", ["preset"])),
            markup=frozenset(MarkupKind(m) for m in data.get("markup", [])),
            languages=frozenset(data.get("languages", [])),
            sample_rate=int(data.get("sample_rate", 16000)),
            default_voice=data.get("default_voice"),
            voices=None if voices is None else frozenset(voices),
            formats=tuple(data.get("formats", AUDIO_FORMATS)),
            speed_range=(float(data["speed_range"][0]), float(data["speed_range"][1]))
            if "speed_range" in data
            else (0.5, 2.0),
            voice_modes=frozenset(data.get("voice_modes", [])),
            max_segment_chars=int(data.get("max_segment_chars", 400)),
            normalizes_text=bool(data.get("normalizes_text", False)),
        )


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
    # CosyVoice 2/3 models ship no speakers: every mode speaks with a cloned voice (the job's
    # or the farm's default). `voice` may still name an SFT speaker of a model that has them.
    "cosyvoice": EngineSpec(
        name="cosyvoice",
        modes=frozenset({"preset", "clone", "cross_lingual", "instruct"}),
        markup=frozenset({MarkupKind.pinyin, MarkupKind.arpabet, MarkupKind.tag}),
        languages=COSYVOICE_LANGUAGES,
        sample_rate=24000,
        default_voice=None,
        voices=None,
        voice_modes=frozenset({"preset", "clone", "cross_lingual", "instruct"}),
        # Upstream cuts Chinese into utterances of about 80 characters (split_paragraph,
        # token_max_n=80); a segment of 120 is one or two of those, so timings and resume
        # stay fine-grained while the LLM keeps its context short.
        max_segment_chars=120,
        normalizes_text=True,
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


def catalog(
    settings: Settings, registered: dict[str, EngineSpec] | None = None
) -> dict[str, EngineSpec]:
    """The engines admission accepts: the enabled built-ins plus any extra ones.

    Capabilities come from the engine classes: the built-in classes declare the specs above
    (a unit test holds them to it), and every worker records the spec its engine classes declare
    in PostgreSQL when it starts (`registered`, db/engines.py). An extra engine no worker has
    registered yet is offered with the least it can do (`preset`), never with invented modes."""
    registered = registered or {}
    enabled = {n.strip() for n in settings.engines.split(",") if n.strip()}
    enabled.add(settings.default_engine)
    specs = {name: spec for name, spec in BUILTIN.items() if name in enabled}
    for name in parse_extra_engines(settings.extra_engines):
        specs.setdefault(
            name,
            registered.get(name)
            or EngineSpec(
                name=name,
                modes=frozenset({"preset"}),
                markup=frozenset(MarkupKind),
                languages=frozenset(),
                sample_rate=16000,
                default_voice=None,
            ),
        )
    return specs

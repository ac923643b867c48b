"""Measurements of a finished job's audio, recorded on the job (`quality`) and in metrics, and
the checks that fail a job instead of delivering broken audio."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.settings import Settings
    from workers.audio import AudioStats

# Enough speech for a stable speaker embedding; longer outputs are not read past this.
MAX_SECONDS = 30.0


def similarity_to(wav_path: Path, embedding: list[float]) -> float:
    """Cosine similarity between the speaker embedding of `wav_path` and `embedding` (the
    voice's, from the same encoder), in [-1, 1]."""
    import soundfile

    from workers.voices import embed, similarity

    info = soundfile.info(str(wav_path))
    frames = int(min(info.frames, MAX_SECONDS * info.samplerate))
    samples, rate = soundfile.read(str(wav_path), frames=frames, dtype="float32", always_2d=True)
    return similarity(embed(samples.mean(axis=1), int(rate)), embedding)


# Han, kana, Hangul: one syllable each, spoken several times slower than Latin letters.
_CJK = re.compile(
    r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\U00020000-\U0002fa1f]"
)
# Pronunciation markup and tags (`[h][ào]`, `[M][AY0]`, `[breath]`, `<strong>`) are not spoken
# as characters.
_MARKUP = re.compile(r"\[[^\]\n]{0,32}\]|</?[A-Za-z_][^>\n]{0,32}>")


@dataclass(frozen=True)
class Verdict:
    quality: dict[str, float]
    check: str | None = None  # the check that failed: nan, clipped, silence, too_fast, too_slow
    message: str | None = None
    script: str = "latin"


def count_chars(text: str) -> tuple[int, int]:
    """(CJK characters, other letters and digits) of `text`, markup left out."""
    plain = _MARKUP.sub(" ", text)
    cjk = len(_CJK.findall(plain))
    other = sum(1 for ch in plain if ch.isalnum()) - cjk
    return cjk, other


def _script(cjk: int, latin: int) -> str:
    share = cjk / max(1, cjk + latin)
    return "cjk" if share >= 0.8 else "latin" if share <= 0.2 else "mixed"


def _rate_bounds(cjk: int, latin: int, speed: float, s: Settings) -> tuple[float, float]:
    """(shortest, longest) plausible duration in seconds for this text at this speed; 0 where a
    bound is off (a script in the text whose threshold is 0 turns that bound off)."""
    per_script = [
        (n, lo, hi)
        for n, lo, hi in (
            (cjk, s.quality_min_chars_per_second_cjk, s.quality_max_chars_per_second_cjk),
            (latin, s.quality_min_chars_per_second_latin, s.quality_max_chars_per_second_latin),
        )
        if n
    ]
    shortest = longest = 0.0
    if all(hi > 0 for _, _, hi in per_script):
        shortest = sum(n / hi for n, _, hi in per_script) / speed
    if all(lo > 0 for _, lo, _ in per_script):
        longest = sum(n / lo for n, lo, _ in per_script) / speed
    return shortest, longest


def assess(stats: AudioStats, text: str, speed: float, settings: Settings) -> Verdict:
    """The job's quality figures and, when one passes its threshold (VOICEFARM_QUALITY_*; 0
    turns a check off), which check failed and why, with the figure. Non-finite samples always
    fail: they are an engine fault, never a style."""
    cjk, latin = count_chars(text)
    duration = stats.duration_s
    quality: dict[str, float] = {
        "duration_s": round(duration, 3),
        "chars_per_second": round((cjk + latin) / duration, 2) if duration else 0.0,
        "silence_ratio": round(stats.silence_ratio, 4),
        "clipped_ratio": round(stats.clipped_ratio, 5),
        "peak": round(stats.peak, 4),
        "nan_count": stats.nan_count,
    }
    if stats.loudness_lufs is not None:
        quality["loudness_input_lufs"] = round(stats.loudness_lufs, 2)
    script = _script(cjk, latin)

    def fail(check: str, message: str) -> Verdict:
        return Verdict(quality, check, f"quality check failed: {message}", script)

    if stats.nan_count:
        return fail(
            "nan",
            f"{stats.nan_count} of {stats.samples} samples are NaN or infinite "
            "(the engine's output overflowed)",
        )
    limit = settings.quality_max_clipped_ratio
    if limit and stats.clipped_ratio > limit:
        return fail(
            "clipped",
            f"{stats.clipped_ratio:.1%} of samples are clipped at full scale "
            f"(VOICEFARM_QUALITY_MAX_CLIPPED_RATIO={limit:g})",
        )
    limit = settings.quality_max_silence_ratio
    if limit and stats.silence_ratio > limit:
        return fail(
            "silence",
            f"{stats.silence_ratio:.1%} of the audio is silent "
            f"(VOICEFARM_QUALITY_MAX_SILENCE_RATIO={limit:g})",
        )
    if cjk + latin >= settings.quality_min_chars_for_rate and duration > 0:
        shortest, longest = _rate_bounds(cjk, latin, speed, settings)
        said = (
            f"{duration:.2f} s of audio for {cjk} CJK and {latin} other characters at speed "
            f"{speed:g} ({quality['chars_per_second']:g} chars/s)"
        )
        if shortest and duration < shortest:
            return fail(
                "too_fast",
                f"{said}; expected at least {shortest:.2f} s "
                "(VOICEFARM_QUALITY_MAX_CHARS_PER_SECOND_CJK/_LATIN)",
            )
        if longest and duration > longest:
            return fail(
                "too_slow",
                f"{said}; expected at most {longest:.2f} s "
                "(VOICEFARM_QUALITY_MIN_CHARS_PER_SECOND_CJK/_LATIN)",
            )
    return Verdict(quality, script=script)


def observe(engine: str, verdict: Verdict) -> None:
    """Export a job's figures as worker metrics."""
    from workers import metrics

    q = verdict.quality
    metrics.AUDIO_SILENCE_RATIO.labels(engine).observe(q["silence_ratio"])
    metrics.AUDIO_CLIPPED_RATIO.labels(engine).observe(q["clipped_ratio"])
    if q["chars_per_second"]:
        metrics.AUDIO_CHARS_PER_SECOND.labels(engine, verdict.script).observe(q["chars_per_second"])
    if "loudness_lufs" in q:
        metrics.AUDIO_LOUDNESS.labels(engine).observe(q["loudness_lufs"])
    if verdict.check is not None:
        metrics.QUALITY_FAILURES.labels(engine, verdict.check).inc()

"""Subtitle files (SRT, WebVTT) from a job's segment timings. Pure text, no audio imports.

One cue per segment, spanning exactly the segment's audio (never longer), its text stripped of
markup and wrapped at about 42 columns for Latin script and 18 characters for CJK.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

LATIN_WIDTH = 42
CJK_WIDTH = 18
# A CJK character counts as LATIN_WIDTH / CJK_WIDTH columns, so mixed lines share one limit.
_CJK_COLUMNS = LATIN_WIDTH / CJK_WIDTH
_MARKUP = re.compile(r"(?:\[[^\[\]]*\])+|<[^<>]*>")
# Never at the start of a line (Chinese and Japanese line-breaking rules, kinsoku).
_NO_LINE_START = set("，。、；：！？）》」』】〕〉”’…,.;:!?)]}%")
SUBTITLE_TYPES = {"srt": "application/x-subrip", "vtt": "text/vtt"}


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str


def is_cjk(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in ("W", "F")


def plain(text: str) -> str:
    """The text a viewer reads: pinyin/ARPAbet runs, tags and `<strong>` markup removed."""
    return " ".join(_MARKUP.sub("", text).split())


def _tokens(text: str) -> list[str]:
    """Words (with the space before them) and single CJK characters; closing punctuation
    sticks to what precedes it."""
    out: list[str] = []
    for m in re.finditer(r"\s*[^\s]", text):
        piece = m.group(0)
        ch = piece[-1]
        glue = out and (ch in _NO_LINE_START or not (is_cjk(ch) or is_cjk(out[-1][-1])))
        if glue and not piece[0].isspace():
            out[-1] += piece
        else:
            out.append(piece)
    return out


def _columns(text: str) -> float:
    return sum(_CJK_COLUMNS if is_cjk(ch) else 1.0 for ch in text)


def wrap(text: str, width: int = LATIN_WIDTH) -> list[str]:
    """Lines of at most `width` columns (a CJK character is width/18 of them); a single word
    longer than a line stands alone."""
    lines: list[str] = []
    line = ""
    for token in _tokens(plain(text)):
        candidate = line + token
        if line and _columns(candidate.strip()) > width + 1e-9:
            lines.append(line.strip())
            line = token.lstrip()
        else:
            line = candidate
    if line.strip():
        lines.append(line.strip())
    return lines


def cues(timings: Iterable[Mapping[str, Any]]) -> list[Cue]:
    return [Cue(float(t["start"]), float(t["end"]), str(t["text"])) for t in timings]


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def timestamp(seconds: float, sep: str) -> str:
    """`HH:MM:SS<sep>mmm`, rounded to the millisecond."""
    total = _ms(seconds)
    hours, rest = divmod(total, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{ms:03d}"


def _blocks(timings: Iterable[Mapping[str, Any]], sep: str) -> list[str]:
    blocks = []
    for cue in cues(timings):
        lines = wrap(cue.text) or ["…"]  # markup only: an empty line would end the cue
        blocks.append(
            f"{timestamp(cue.start, sep)} --> {timestamp(cue.end, sep)}\n" + "\n".join(lines)
        )
    return blocks


def srt(timings: Iterable[Mapping[str, Any]]) -> str:
    blocks = _blocks(timings, ",")
    return "".join(f"{n}\n{block}\n\n" for n, block in enumerate(blocks, start=1))


def vtt(timings: Iterable[Mapping[str, Any]]) -> str:
    return "WEBVTT\n\n" + "".join(f"{block}\n\n" for block in _blocks(timings, "."))


def render(fmt: str, timings: Iterable[Mapping[str, Any]]) -> str:
    if fmt == "srt":
        return srt(timings)
    if fmt == "vtt":
        return vtt(timings)
    raise ValueError(f"subtitle format {fmt!r} is not supported")

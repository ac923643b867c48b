"""Text markup (pinyin `[h][ào]`, ARPAbet `[M][AY0]`) and sentence segmentation.

Markup is a run of bracketed tokens. A run whose tokens are all ARPAbet phones is English phoneme
markup; one whose tokens are pinyin initials/finals is Chinese pinyin markup. Anything else in
brackets is an error the client can fix, reported with its position.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum

from core.errors import MarkupInvalid, TextEmpty


class MarkupKind(StrEnum):
    pinyin = "pinyin"
    arpabet = "arpabet"


ARPABET_PHONES = frozenset(
    [
        "AA",
        "AE",
        "AH",
        "AO",
        "AW",
        "AY",
        "B",
        "CH",
        "D",
        "DH",
        "EH",
        "ER",
        "EY",
        "F",
        "G",
        "HH",
        "IH",
        "IY",
        "JH",
        "K",
        "L",
        "M",
        "N",
        "NG",
        "OW",
        "OY",
        "P",
        "R",
        "S",
        "SH",
        "T",
        "TH",
        "UH",
        "UW",
        "V",
        "W",
        "Y",
        "Z",
        "ZH",
    ]
)
ARPABET_VOWELS = frozenset(p for p in ARPABET_PHONES if p[0] in "AEIOU")
_ARPABET_RE = re.compile(r"^([A-Z]{1,2})([012])?$")
# Pinyin initials and finals, with tone marks or a tone digit (1-5).
_PINYIN_RE = re.compile(r"^[a-zü\u0101-\u01dc\u00e0-\u00fa\u0300-\u036f]+[1-5]?$")
_RUN_RE = re.compile(r"(?:\[[^\[\]]*\])+")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？；;…])\s+|(?<=[。！？；])|\n+")
_SENTENCE_CHARS = ".!?。！？；;…"
_COMMA_CHARS = ",，、:："


@dataclass(frozen=True)
class MarkupRun:
    kind: MarkupKind
    tokens: tuple[str, ...]
    start: int
    end: int


def _classify(tokens: list[str], start: int) -> MarkupKind:
    if all(_is_arpabet(t) for t in tokens):
        return MarkupKind.arpabet
    if all(_PINYIN_RE.match(t) for t in tokens):
        return MarkupKind.pinyin
    bad = next((t for t in tokens if not (_is_arpabet(t) or _PINYIN_RE.match(t))), "+".join(tokens))
    raise MarkupInvalid(
        f"'[{bad}]' at character {start} is neither an ARPAbet phone (e.g. [AY1]) nor pinyin "
        "(e.g. [h][ào]); don't mix the two in one run",
        field="text",
    )


def _is_arpabet(token: str) -> bool:
    m = _ARPABET_RE.match(token)
    if not m or m.group(1) not in ARPABET_PHONES:
        return False
    # Stress digits belong on vowels only.
    return m.group(2) is None or m.group(1) in ARPABET_VOWELS


def parse_markup(text: str) -> list[MarkupRun]:
    """Every markup run in `text`; raises MarkupInvalid on unbalanced or unknown brackets."""
    depth = 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
            if depth > 1:
                raise MarkupInvalid(f"nested '[' at character {i}", field="text")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise MarkupInvalid(f"']' without '[' at character {i}", field="text")
    if depth:
        raise MarkupInvalid("a '[' is never closed", field="text")
    runs = []
    for m in _RUN_RE.finditer(text):
        tokens = re.findall(r"\[([^\[\]]*)\]", m.group(0))
        empty = [t for t in tokens if not t.strip()]
        if empty:
            raise MarkupInvalid(f"empty brackets at character {m.start()}", field="text")
        tokens = [t.strip() for t in tokens]
        runs.append(MarkupRun(_classify(tokens, m.start()), tuple(tokens), m.start(), m.end()))
    return runs


def markup_kinds(text: str) -> set[MarkupKind]:
    return {run.kind for run in parse_markup(text)}


# Invisible characters that `str.split()` does not treat as space: zero-width space/joiners,
# word joiner, BOM. They are dropped where they stand alone (never inside a word: ZWJ and ZWNJ
# shape Indic and Persian words and emoji).
_INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff"


def normalize(text: str) -> str:
    """Collapse runs of spaces and trim; keep newlines as sentence breaks. Refuse text with
    nothing to say: only whitespace, invisible characters, punctuation, symbols or combining
    marks, which an engine turns into zero frames of audio."""
    if "\x00" in text:
        raise MarkupInvalid("text contains a NUL character", field="text")
    text = text.replace("\ufeff", "")  # a byte-order mark is an encoding artifact, not text
    lines = [" ".join(line.split()) for line in text.replace("\r\n", "\n").split("\n")]
    out = "\n".join(line for line in lines if line.strip(_INVISIBLE))
    if not out.strip(_INVISIBLE + " \n"):
        raise TextEmpty("text is empty after trimming whitespace", field="text")
    if not is_speakable(out):
        raise TextEmpty(
            "text has nothing to speak: it needs at least one letter, digit or markup run, not "
            "only punctuation, symbols, combining marks or invisible characters",
            field="text",
        )
    return out


def is_speakable(text: str) -> bool:
    """At least one letter or digit outside markup, or one markup run (it is pronounced)."""
    if _RUN_RE.search(text):
        return True
    return any(unicodedata.category(ch)[0] in "LN" for ch in text)


def split_segments(text: str, max_chars: int) -> list[str]:
    """Split into sentences, then pack short ones together up to `max_chars`.

    A sentence longer than `max_chars` is cut at the last comma or space before the limit, never
    inside a markup run, so each segment is a unit an engine can synthesize on its own.
    """
    sentences = [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]
    pieces: list[str] = []
    for sentence in sentences:
        pieces.extend(_cut(sentence, max_chars))
    segments: list[str] = []
    for piece in pieces:
        if segments and len(segments[-1]) + 1 + len(piece) <= max_chars:
            segments[-1] = f"{segments[-1]} {piece}"
        else:
            segments.append(piece)
    return segments


def halve(text: str) -> list[str]:
    """Cut `text` in two near its middle for a retry with smaller pieces (CUDA OOM).

    Prefers a sentence end, then a comma, then a space, each only if it falls in the middle half;
    otherwise any character boundary nearest the middle (Chinese has no spaces). Never cuts
    inside a markup run or between a character and the pinyin run that annotates it, so each
    piece passes `parse_markup` on its own. Returns `[text]` when there is nowhere to cut.
    """
    text = text.strip()
    protected = _protected(text)
    n = len(text)
    allowed = [i for i in range(1, n) if not _inside(i, protected) and text[:i].strip()]
    allowed = [i for i in allowed if text[i:].strip()]
    if not allowed:
        return [text] if text else []
    mid = n / 2
    middle = [i for i in allowed if n / 4 <= i <= 3 * n / 4]
    for seps in (_SENTENCE_CHARS, _COMMA_CHARS, " "):
        best = [i for i in middle if text[i - 1] in seps]
        if best:
            cut = min(best, key=lambda i: abs(i - mid))
            break
    else:
        cut = min(allowed, key=lambda i: abs(i - mid))
    return [text[:cut].strip(), text[cut:].strip()]


def _protected(text: str) -> list[tuple[int, int]]:
    """Spans no cut may fall strictly inside. A pinyin run annotates the character before it,
    so its span starts one character early."""
    return [
        (r.start - 1 if r.kind == MarkupKind.pinyin and r.start > 0 else r.start, r.end)
        for r in parse_markup(text)
    ]


def _inside(i: int, protected: list[tuple[int, int]]) -> bool:
    return any(a < i < b for a, b in protected)


def _cut(sentence: str, max_chars: int) -> list[str]:
    out = []
    while len(sentence) > max_chars:
        protected = _protected(sentence)
        cut = _cut_point(sentence, max_chars, protected)
        out.append(sentence[:cut].strip())
        sentence = sentence[cut:].strip()
    if sentence:
        out.append(sentence)
    return out


def _cut_point(sentence: str, limit: int, protected: list[tuple[int, int]]) -> int:
    def inside(i: int) -> bool:
        return _inside(i, protected)

    for seps in (_COMMA_CHARS, " "):
        for i in range(limit, 0, -1):
            if sentence[i - 1] in seps and not inside(i):
                return i
    for i in range(limit, 0, -1):
        if not inside(i):
            return i
    return limit

"""Text markup (pinyin `[h][ào]`, ARPAbet `[M][AY0]`, CosyVoice tags) and segmentation.

Markup is a run of bracketed tokens. A run whose tokens are all ARPAbet phones is English phoneme
markup; one whose tokens are pinyin initials/finals (tone marks or a digit) is Chinese pinyin
markup. CosyVoice's tags are their own kind: bracket tags (`[breath]`, `[laughter]`, ...) and
paired tags (`<strong>...</strong>`, `<laughter>...</laughter>`), balanced and never crossing.
Anything else in brackets is an error the client can fix, reported with its span.
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
    tag = "tag"


# CosyVoice 2/3's special tokens (cosyvoice/tokenizer/tokenizer.py, CosyVoice2Tokenizer):
# the ones a client may write; `<|...|>` control tokens stay the engine's business.
BRACKET_TAGS = frozenset(
    [
        "breath",
        "noise",
        "laughter",
        "cough",
        "clucking",
        "accent",
        "quick_breath",
        "hissing",
        "sigh",
        "vocalized-noise",
        "lipsmack",
        "mn",
    ]
)
PAIRED_TAGS = frozenset(["strong", "laughter"])


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
_INITIALS = tuple(
    [
        "b",
        "p",
        "m",
        "f",
        "d",
        "t",
        "n",
        "l",
        "g",
        "k",
        "h",
        "j",
        "q",
        "x",
        "zh",
        "ch",
        "sh",
        "r",
        "z",
        "c",
        "s",
        "y",
        "w",
    ]
)
_FINALS = frozenset(
    [
        "a",
        "o",
        "e",
        "i",
        "u",
        "v",
        "ai",
        "ei",
        "ao",
        "ou",
        "an",
        "en",
        "ang",
        "eng",
        "ong",
        "er",
        "ia",
        "ie",
        "iao",
        "iu",
        "iou",
        "ian",
        "in",
        "iang",
        "ing",
        "iong",
        "ua",
        "uo",
        "uai",
        "ui",
        "uei",
        "uan",
        "un",
        "uen",
        "uang",
        "ueng",
        "ue",
        "ve",
        "van",
        "vn",
    ]
)
_RUN_RE = re.compile(r"(?:\[[^\[\]]*\])+")
_ANGLE_RE = re.compile(r"<(/?)([A-Za-z][A-Za-z_-]*)>")
_CLOSERS = "”’」』）)\"'"
_SENTENCE_END = re.compile(
    rf"(?<=[.!?。！？；;…][{_CLOSERS}])\s*|(?<=[.!?;…])\s+|(?<=[。！？；])(?![{_CLOSERS}])|\n+"
)
_SENTENCE_CHARS = ".!?。！？；;…"
_COMMA_CHARS = ",，、:：—"


@dataclass(frozen=True)
class MarkupRun:
    kind: MarkupKind
    tokens: tuple[str, ...]
    start: int
    end: int


def _invalid(text: str, start: int, end: int, problem: str) -> MarkupInvalid:
    """A 422 that names the span: character offsets and the offending text."""
    return MarkupInvalid(f"characters {start}-{end} {text[start:end]!r}: {problem}", field="text")


def _classify(text: str, tokens: list[str], start: int, end: int) -> MarkupKind:
    if all(_is_arpabet(t) for t in tokens):
        return MarkupKind.arpabet
    if all(_is_pinyin(t) for t in tokens):
        return MarkupKind.pinyin
    bad = next((t for t in tokens if not (_is_arpabet(t) or _is_pinyin(t))), None)
    if bad is None:
        problem = "mixes ARPAbet phones and pinyin in one run"
    else:
        problem = (
            f"[{bad}] is neither an ARPAbet phone (e.g. [AY1]), pinyin (e.g. [h][ào]) nor a "
            f"tag ({', '.join(f'[{t}]' for t in sorted(BRACKET_TAGS))})"
        )
    raise _invalid(text, start, end, problem)


def _is_arpabet(token: str) -> bool:
    m = _ARPABET_RE.match(token)
    if not m or m.group(1) not in ARPABET_PHONES:
        return False
    # Stress digits belong on vowels only.
    return m.group(2) is None or m.group(1) in ARPABET_VOWELS


def _is_pinyin(token: str) -> bool:
    """An initial, a final or a syllable, with at most one tone mark or a tone digit."""
    decomposed = unicodedata.normalize("NFD", token).replace("u\u0308", "v")
    marks = sum(1 for c in decomposed if unicodedata.combining(c))
    base = "".join(c for c in decomposed if not unicodedata.combining(c))
    m = re.fullmatch(r"([a-z]+)([1-5]?)", base)
    if not m or marks > 1 or (marks and m.group(2)):
        return False
    body = m.group(1)
    if body in _INITIALS or body in _FINALS:
        return True
    return any(body.startswith(i) and body[len(i) :] in _FINALS for i in _INITIALS)


def _check_brackets(text: str) -> None:
    opened = -1
    for i, ch in enumerate(text):
        if ch == "[":
            if opened >= 0:
                raise _invalid(text, opened, i + 1, "nested '['")
            opened = i
        elif ch == "]":
            if opened < 0:
                raise _invalid(text, i, i + 1, "']' without '['")
            opened = -1
    if opened >= 0:
        raise _invalid(text, opened, len(text), "a '[' is never closed")


def _bracket_runs(text: str, run: re.Match[str]) -> list[MarkupRun]:
    """One bracket run, cut where a tag stands: `[h][ǎo][breath]` is pinyin, then a tag."""
    out: list[MarkupRun] = []
    group: list[tuple[str, int, int]] = []

    def flush() -> None:
        if group:
            tokens = [t for t, _, _ in group]
            a, b = group[0][1], group[-1][2]
            out.append(MarkupRun(_classify(text, tokens, a, b), tuple(tokens), a, b))
            group.clear()

    for m in re.finditer(r"\[([^\[\]]*)\]", run.group(0)):
        a, b = run.start() + m.start(), run.start() + m.end()
        token = m.group(1).strip()
        if not token:
            raise _invalid(text, a, b, "empty brackets")
        if token in BRACKET_TAGS:
            flush()
            out.append(MarkupRun(MarkupKind.tag, (f"[{token}]",), a, b))
        else:
            group.append((token, a, b))
    flush()
    return out


def _angle_runs(text: str, balanced: bool = True) -> list[MarkupRun]:
    """Paired tags: known names only, each closed, never crossing or nested in itself
    (`balanced=False`: a piece of a valid text, whose tags may open or close elsewhere)."""
    out: list[MarkupRun] = []
    stack: list[tuple[str, int, int]] = []
    for m in _ANGLE_RE.finditer(text):
        closing, name = m.group(1) == "/", m.group(2)
        if name not in PAIRED_TAGS:
            known = ", ".join(f"<{t}>" for t in sorted(PAIRED_TAGS))
            raise _invalid(text, m.start(), m.end(), f"unknown tag; paired tags are {known}")
        if not balanced:
            pass
        elif not closing:
            if any(n == name for n, _, _ in stack):
                raise _invalid(text, m.start(), m.end(), f"<{name}> inside another <{name}>")
            stack.append((name, m.start(), m.end()))
        elif not stack or stack[-1][0] != name:
            problem = f"</{name}> closes nothing" if not stack else f"</{stack[-1][0]}> expected"
            raise _invalid(text, m.start(), m.end(), problem)
        else:
            stack.pop()
        out.append(MarkupRun(MarkupKind.tag, (m.group(0),), m.start(), m.end()))
    if stack and balanced:
        name, a, b = stack[-1]
        raise _invalid(text, a, b, f"<{name}> is never closed with </{name}>")
    return out


def parse_markup(text: str, balanced: bool = True) -> list[MarkupRun]:
    """Every markup run in `text`, in order; raises MarkupInvalid naming the bad span."""
    _check_brackets(text)
    runs = [r for m in _RUN_RE.finditer(text) for r in _bracket_runs(text, m)]
    return sorted(runs + _angle_runs(text, balanced), key=lambda r: r.start)


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

    Sentences end at . ! ? ; … and their full-width forms (a closing quote stays with its
    sentence). A sentence longer than `max_chars` is cut at the last comma (，、 too) or space
    before the limit, never inside a markup run or tag, so each segment is a unit an engine can
    synthesize on its own; a paired tag cut in two is closed and reopened on either side.
    """
    sentences = [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]
    pieces = _attach_marks([p for sentence in sentences for p in _cut(sentence, max_chars)])
    segments: list[str] = []
    for piece in pieces:
        joined = _join(segments[-1], piece) if segments else ""
        if segments and len(joined) <= max_chars:
            segments[-1] = joined
        else:
            segments.append(piece)
    return _rebalance(segments)


def _attach_marks(pieces: list[str]) -> list[str]:
    """A piece with nothing to speak (a lone tag, a stray mark) joins a neighbour: opening tags
    the piece after them, anything else the piece before."""
    out: list[str] = []
    pending = ""
    for piece in pieces:
        if is_speakable(_ANGLE_RE.sub("", piece)):
            out.append(pending + piece)
            pending = ""
        elif out and (pending or "</" in piece or not piece.startswith("<")):
            out[-1] += pending + piece
            pending = ""
        else:
            pending += piece
    if pending:
        out = [*out[:-1], out[-1] + pending] if out else [pending]
    return out


def _join(a: str, b: str) -> str:
    """Chinese sentences meet without a space; others with one."""
    return a + b if _is_cjk(a[-1]) or _is_cjk(b[0]) else f"{a} {b}"


def _is_cjk(ch: str) -> bool:
    return "\u3000" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" or "\uff00" <= ch <= "\uffef"


def _rebalance(pieces: list[str]) -> list[str]:
    """Close the paired tags a piece leaves open and reopen them at the next piece's start."""
    out: list[str] = []
    carried: list[str] = []
    for piece in pieces:
        opened = list(carried)
        for m in _ANGLE_RE.finditer(piece):
            if m.group(2) not in PAIRED_TAGS:
                continue
            if m.group(1):
                if opened and opened[-1] == m.group(2):
                    opened.pop()
            else:
                opened.append(m.group(2))
        head = "".join(f"<{n}>" for n in carried)
        tail = "".join(f"</{n}>" for n in reversed(opened))
        out.append(head + piece + tail)
        carried = opened
    return out


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
    return _rebalance([text[:cut].strip(), text[cut:].strip()])


def _protected(text: str) -> list[tuple[int, int]]:
    """Spans no cut may fall strictly inside: markup runs and tags. A pinyin run annotates the
    character before it, so its span starts one character early."""
    return [
        (r.start - 1 if r.kind == MarkupKind.pinyin and r.start > 0 else r.start, r.end)
        for r in parse_markup(text, balanced=False)
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
    # The limit falls inside a run or tag that starts the sentence: cut right after it.
    return next((i for i in range(limit + 1, len(sentence)) if not inside(i)), len(sentence))

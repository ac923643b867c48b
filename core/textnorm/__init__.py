"""Text as the listener should hear it, and the segments an engine is given.

`normalize_for_speech` rewrites numbers, dates, times, money, percentages, units and common
abbreviations into words, per run of script: CJK runs through `zh.normalize_zh` (cn2an),
Latin runs through `en.normalize_en` (num2words). Digits and symbols belong to the script they
touch (`3个` is Chinese, `5km` English), else to the text before them, else to `language`.
Markup runs and tags are never touched: the text between them is normalised on its own.

Per engine (`EngineSpec.normalizes_text`): an engine whose own frontend normalises gets the text
as written. CosyVoice does (upstream's wetext, `text_normalize`), except where a text carries
markup: the worker then turns upstream's frontend off, so the farm normalises such a text
itself. Piper (English only) reads digits poorly and gets English normalisation. Languages
other than Chinese and English are left as written.

`prepare` is the one entry point: the worker (tasks/synthesize.py) and the preview route
(`POST /v1/text/normalize`) both call it, so the preview shows exactly what is synthesised.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from core.engines import EngineSpec
from core.text import parse_markup, split_segments
from core.textnorm.en import normalize_en
from core.textnorm.zh import UNITS, normalize_zh

NORMALISED_LANGUAGES = frozenset({"zh", "en", "yue"})
# Full-width digits, letters, % and $ become their ASCII forms; full-width punctuation that ends
# or breaks sentences (。，！？) stays.
_FULLWIDTH = {
    c: unicodedata.normalize("NFKC", chr(c))
    for c in [*range(0xFF10, 0xFF1A), *range(0xFF21, 0xFF3B), *range(0xFF41, 0xFF5B)]
}
_FULLWIDTH |= {0xFF04: "$", 0xFF05: "%"}

# A unit after a number (`5km`) belongs to the number's run, not to the Latin script.
_UNIT_AFTER_NUMBER = re.compile(
    rf"(?<=\d)\s?(?:{'|'.join(re.escape(u) for u in sorted(UNITS, key=len, reverse=True))})"
    r"(?![A-Za-z])"
)


@dataclass(frozen=True)
class Prepared:
    normalized: str
    segments: list[str]


def prepare(text: str, spec: EngineSpec, max_chars: int, language: str | None = None) -> Prepared:
    """`text` (already through admission's `normalize`) as `spec`'s engine is given it:
    normalised where the farm normalises for that engine, then cut into segments of at most
    min(`spec.max_segment_chars`, `max_chars`) characters."""
    if language is None and len(spec.languages) == 1:
        language = next(iter(spec.languages))
    if not spec.normalizes_text or parse_markup(text):
        text = normalize_for_speech(text, language)
    return Prepared(text, split_segments(text, min(spec.max_segment_chars, max_chars)))


def normalize_for_speech(text: str, language: str | None = None) -> str:
    """Numbers, dates, money... as words in the language of each run; markup kept verbatim."""
    if language is not None and language not in NORMALISED_LANGUAGES:
        return text
    default = "en" if language == "en" else "zh" if language else _guess(text)
    out, at = [], 0
    for run in parse_markup(text):
        out.append(_normalize_plain(text[at : run.start], default))
        out.append(text[run.start : run.end])
        at = run.end
    out.append(_normalize_plain(text[at:], default))
    return "".join(out)


def _guess(text: str) -> str:
    return "zh" if any(_script(ch) == "zh" for ch in text) else "en"


def _script(ch: str) -> str | None:
    if "\u3000" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" or ch in "，！？：；（）":
        return "zh"
    if ch.isalpha():
        return "en"
    return None


def _normalize_plain(text: str, default: str) -> str:
    text = text.translate(_FULLWIDTH)
    text = re.sub(r"(?<=\d)．(?=\d)", ".", text)
    langs = _assign(text, default)
    out, start = [], 0
    for i in range(1, len(text) + 1):
        if i == len(text) or langs[i] != langs[start]:
            chunk = text[start:i]
            out.append(normalize_zh(chunk) if langs[start] == "zh" else normalize_en(chunk))
            start = i
    return "".join(out)


def _assign(text: str, default: str) -> list[str]:
    """Each character's language. A block of neutral characters (digits, symbols, spaces, a
    unit after a number) takes the script it touches, the following first (`3个`), else the
    one before it (`跑了5km`, `ran 5km`)."""
    langs: list[str | None] = [_script(ch) for ch in text]
    for m in _UNIT_AFTER_NUMBER.finditer(text):
        langs[m.start() : m.end()] = [None] * (m.end() - m.start())
    i = 0
    while i < len(text):
        if langs[i] is not None:
            i += 1
            continue
        j = i
        while j < len(text) and langs[j] is None:
            j += 1
        before = langs[i - 1] if i > 0 else None
        after = langs[j] if j < len(text) else None
        if after and not text[j - 1].isspace():
            lang = after
        elif before and not text[i].isspace():
            lang = before
        else:
            lang = before or after or default
        langs[i:j] = [lang] * (j - i)
        i = j
    return [lang or default for lang in langs]

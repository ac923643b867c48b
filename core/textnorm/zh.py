"""Chinese text as it is read aloud. `cn2an.transform(..., "an2cn")` reads numbers, dates
(`2024年3月5日`), percentages, fractions and temperatures; the rules here only rewrite what it
does not know (ISO dates, clock times, currency symbols, unit abbreviations) into a form it
reads, and drop digit-group commas."""

from __future__ import annotations

import re
from collections.abc import Callable

import cn2an

UNITS = {
    "km/h": "千米每小时",
    "km": "公里",
    "cm": "厘米",
    "mm": "毫米",
    "m": "米",
    "kg": "千克",
    "mg": "毫克",
    "g": "克",
    "ml": "毫升",
    "L": "升",
    "GB": "GB",
    "MB": "MB",
}
_CURRENCIES = {"¥": "元", "￥": "元", "$": "美元", "€": "欧元", "£": "英镑"}
_NUM = r"\d+(?:\.\d+)?"


def _amount(raw: str) -> str:
    """`12.50` -> `12.5`: money is read without trailing zeros (十二点五元)."""
    return raw.rstrip("0").rstrip(".") if "." in raw else raw


def _digits(raw: str) -> str:
    return str(cn2an.an2cn(raw, "low"))


def _time(m: re.Match[str]) -> str:
    hour, minute = int(m.group(1)), int(m.group(2))
    tail = "整" if minute == 0 else f"{'零' if minute < 10 else ''}{_digits(str(minute))}分"
    return f"{_digits(str(hour))}点{tail}"


_UNIT_RE = "|".join(re.escape(u) for u in sorted(UNITS, key=len, reverse=True))
_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(r"(?<=\d),(?=\d{3}(?!\d))"), lambda m: ""),
    (
        re.compile(r"(?<!\d)(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?!\d)"),
        lambda m: f"{m.group(1)}年{int(m.group(2))}月{int(m.group(3))}日",
    ),
    (re.compile(r"(?<!\d)([01]?\d|2[0-3])[:：]([0-5]\d)(?!\d)"), _time),
    (
        re.compile(rf"([¥￥$€£])\s?({_NUM})"),
        lambda m: _digits(_amount(m.group(2))) + _CURRENCIES[m.group(1)],
    ),
    (
        re.compile(rf"({_NUM})\s?({_UNIT_RE})(?![A-Za-z])"),
        lambda m: _digits(m.group(1)) + UNITS[m.group(2)],
    ),
]


def normalize_zh(text: str) -> str:
    """`2024年3月5日14:30花了¥12.50` -> `二零二四年三月五日十四点三十分花了十二点五元`."""
    for pattern, replace in _RULES:
        text = pattern.sub(replace, text)
    return str(cn2an.transform(text, "an2cn"))

"""English text as it is read aloud: numbers, money, percentages, units, times, dates and
common abbreviations, spelled out with `num2words`."""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal

from num2words import num2words

_ABBREVIATIONS = {
    "Dr.": "Doctor",
    "Mr.": "Mister",
    "Mrs.": "Missus",
    "Ms.": "Miss",
    "Prof.": "Professor",
    "Jr.": "Junior",
    "Sr.": "Senior",
    "vs.": "versus",
    "e.g.": "for example",
    "i.e.": "that is",
    "etc.": "et cetera",
    "approx.": "approximately",
}
_UNITS = {
    "km/h": ("kilometer per hour", "kilometers per hour"),
    "mph": ("mile per hour", "miles per hour"),
    "km": ("kilometer", "kilometers"),
    "cm": ("centimeter", "centimeters"),
    "mm": ("millimeter", "millimeters"),
    "m": ("meter", "meters"),
    "kg": ("kilogram", "kilograms"),
    "mg": ("milligram", "milligrams"),
    "g": ("gram", "grams"),
    "lb": ("pound", "pounds"),
    "lbs": ("pound", "pounds"),
    "ml": ("milliliter", "milliliters"),
    "L": ("liter", "liters"),
    "GB": ("gigabyte", "gigabytes"),
    "MB": ("megabyte", "megabytes"),
    "TB": ("terabyte", "terabytes"),
    "KB": ("kilobyte", "kilobytes"),
    "ms": ("millisecond", "milliseconds"),
    "°C": ("degree Celsius", "degrees Celsius"),
    "°F": ("degree Fahrenheit", "degrees Fahrenheit"),
}
# num2words' currency codes; yen/yuan are read as a plain amount and a name.
_CURRENCIES = {"$": "USD", "€": "EUR", "£": "GBP"}
_NAMED = {"¥": "yuan", "￥": "yuan"}
_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_NUM = r"-?\d+(?:\.\d+)?"
_YEAR_WORDS = r"(?:in|since|by|from|until|year|of)"


def _number(raw: str) -> str:
    return str(num2words(Decimal(raw)))


def _money(m: re.Match[str]) -> str:
    symbol, amount = m.group(1), Decimal(m.group(2))
    if symbol in _NAMED:
        return f"{num2words(amount)} {_NAMED[symbol]}"
    words = str(num2words(amount, to="currency", currency=_CURRENCIES[symbol]))
    return words.removesuffix(", zero cents").removesuffix(", zero pence")


def _unit(m: re.Match[str]) -> str:
    one, many = _UNITS[m.group(2)]
    return f"{_number(m.group(1))} {one if Decimal(m.group(1)) == 1 else many}"


def _time(m: re.Match[str]) -> str:
    hour, minute = int(m.group(1)), int(m.group(2))
    if minute == 0:
        return f"{num2words(hour)} o'clock" if hour <= 12 else f"{num2words(hour)} hundred"
    tail = f"oh {num2words(minute)}" if minute < 10 else num2words(minute)
    return f"{num2words(hour)} {tail}"


def _date(m: re.Match[str]) -> str:
    year, month, day = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return m.group(0)
    return f"{_MONTHS[month - 1]} {num2words(day, to='ordinal')}, {num2words(year, to='year')}"


def _abbreviation(m: re.Match[str]) -> str:
    words = _ABBREVIATIONS[m.group(1)]
    # The period of an abbreviation that ends a sentence still ends it.
    return words + "." if m.group(1) in ("etc.", "approx.") and m.group(2) is not None else words


_UNIT_RE = "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))
_ABBR_RE = "|".join(re.escape(a) for a in _ABBREVIATIONS)
_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(rf"(?<![\w.])({_ABBR_RE})(\s*$|(?=\s+[A-Z]))?"), _abbreviation),
    (re.compile(r"(?<=\d),(?=\d{3}\b)"), lambda m: ""),
    (re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b"), _date),
    (re.compile(r"\b([01]?\d|2[0-3]):([0-5]\d)\b"), _time),
    (re.compile(r"([$€£¥￥])\s?(\d+(?:\.\d+)?)"), _money),
    (re.compile(rf"({_NUM})\s?%"), lambda m: f"{_number(m.group(1))} percent"),
    (re.compile(rf"({_NUM})\s?({_UNIT_RE})(?![A-Za-z])"), _unit),
    (
        re.compile(r"\b(\d+)(st|nd|rd|th)\b"),
        lambda m: str(num2words(int(m.group(1)), to="ordinal")),
    ),
    (
        re.compile(rf"\b({_YEAR_WORDS} )(1[1-9]\d\d|20\d\d)\b", re.IGNORECASE),
        lambda m: m.group(1) + str(num2words(int(m.group(2)), to="year")),
    ),
    (re.compile(rf"(?<![\w.]){_NUM}(?![\w])"), lambda m: _number(m.group(0))),
]


def normalize_en(text: str) -> str:
    """`Dr. Lee paid $5.50 for 3kg at 14:30` -> `Doctor Lee paid five dollars, fifty cents for
    three kilograms at fourteen thirty`."""
    for pattern, replace in _RULES:
        text = pattern.sub(replace, text)
    return text

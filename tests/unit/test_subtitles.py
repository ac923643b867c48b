"""core/subtitles.py: SRT and WebVTT from segment timings."""

from __future__ import annotations

import pytest

from core.subtitles import CJK_WIDTH, LATIN_WIDTH, plain, render, srt, timestamp, vtt, wrap

TIMINGS = [
    {"index": 0, "text": "Hello there.", "start": 0.0, "end": 1.2345},
    {"index": 1, "text": "你好，世界。", "start": 1.3545, "end": 3661.5},
]


@pytest.mark.parametrize(
    ("seconds", "sep", "expected"),
    [
        (0.0, ",", "00:00:00,000"),
        (1.2346, ",", "00:00:01,235"),
        (59.9996, ".", "00:01:00.000"),
        (3661.5, ".", "01:01:01.500"),
        (-0.001, ",", "00:00:00,000"),
    ],
)
def test_timestamps(seconds: float, sep: str, expected: str) -> None:
    assert timestamp(seconds, sep) == expected


def test_srt_numbers_cues_and_uses_commas() -> None:
    assert srt(TIMINGS) == (
        "1\n00:00:00,000 --> 00:00:01,234\nHello there.\n\n"
        "2\n00:00:01,354 --> 01:01:01,500\n你好，世界。\n\n"
    )


def test_vtt_has_its_header_and_dots() -> None:
    assert vtt(TIMINGS) == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:01.234\nHello there.\n\n"
        "00:00:01.354 --> 01:01:01.500\n你好，世界。\n\n"
    )
    assert render("vtt", TIMINGS) == vtt(TIMINGS)
    with pytest.raises(ValueError):
        render("ass", TIMINGS)


def test_latin_text_wraps_at_word_boundaries() -> None:
    text = "The quick brown fox jumps over the lazy dog and keeps running far away from here."
    lines = wrap(text)
    assert all(len(line) <= LATIN_WIDTH for line in lines) and len(lines) == 2
    assert " ".join(lines) == text
    assert wrap("a" * 60) == ["a" * 60]  # one word longer than a line stands alone


def test_cjk_text_wraps_at_eighteen_characters_never_before_punctuation() -> None:
    text = "今天天气很好，我们去公园散步吧。然后我们一起吃午饭，下午再去图书馆看书。"
    lines = wrap(text)
    assert all(len(line) <= CJK_WIDTH for line in lines)
    assert "".join(lines) == text
    assert not any(line[0] in "，。" for line in lines)
    # Punctuation at a break takes the character before it to the next line.
    assert wrap("一二三四五六七八九十一二三四五六七八，后面") == [
        "一二三四五六七八九十一二三四五六七",
        "八，后面",
    ]


def test_mixed_text_shares_one_width() -> None:
    lines = wrap("我们使用 Python 和 PostgreSQL 搭建了一个语音合成服务，效果非常好。")
    assert len(lines) == 2
    assert "Python" in lines[0] and "PostgreSQL" in "".join(lines)


def test_markup_is_not_shown() -> None:
    assert plain("她[h][ào]干净") == "她干净"
    assert plain("say [M][AY0][N][UW1][T] <strong>now</strong> [breath]") == "say now"
    # A cue of markup only still has a text line (an empty one would end the cue in SRT).
    assert srt([{"start": 0, "end": 1, "text": "[breath]"}]).split("\n")[2] == "…"

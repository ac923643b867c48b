"""Normalisation, per-engine segmentation and tag parsing (core/textnorm, core/text)."""

from __future__ import annotations

import dataclasses

import pytest

from core.engines import BUILTIN
from core.errors import MarkupInvalid
from core.text import MarkupKind, markup_kinds, parse_markup, split_segments
from core.textnorm import normalize_for_speech, prepare


@pytest.mark.parametrize(
    ("text", "language", "expected"),
    [
        # Chinese
        ("我有3个苹果", None, "我有三个苹果"),
        ("温度-3.5度", None, "温度负三点五度"),
        ("2024年3月5日", None, "二零二四年三月五日"),
        ("会议在2024-03-05", None, "会议在二零二四年三月五日"),
        ("2024-03-05", "zh", "二零二四年三月五日"),
        ("下午14:30开会", None, "下午十四点三十分开会"),
        ("8:05出发", None, "八点零五分出发"),
        ("花了¥12.50", None, "花了十二点五元"),
        ("占50%的人", None, "占百分之五十的人"),
        ("跑了5km，背3kg", None, "跑了五公里，背三千克"),
        ("共1,000人", None, "共一千人"),
        ("１２３个", None, "一百二十三个"),
        # English
        ("I have 3 apples", None, "I have three apples"),
        ("It is 3.14 or -5", None, "It is three point one four or minus five"),
        ("on 2024-03-05", None, "on March fifth, twenty twenty-four"),
        ("born in 1999", None, "born in nineteen ninety-nine"),
        ("at 14:30", None, "at fourteen thirty"),
        ("costing $5.50", None, "costing five dollars, fifty cents"),
        ("costing $5", None, "costing five dollars"),
        ("50% off", None, "fifty percent off"),
        ("ran 5km with 3kg", None, "ran five kilometers with three kilograms"),
        ("Dr. Lee came", None, "Doctor Lee came"),
        ("apples, pears, etc.", None, "apples, pears, et cetera."),
        ("the 21st time", None, "the twenty-first time"),
        # Mixed: each run in its own language
        ("我有3个apple, costing $5.50", None, "我有三个apple, costing five dollars, fifty cents"),
        ("价格：$5.50", None, "价格：五点五美元"),
        # Markup and tags are never touched; the text between them is
        ("她[h][ào]干净，花了¥12", None, "她[h][ào]干净，花了十二元"),
        ("[breath]3个", None, "[breath]三个"),
        ("<strong>2024-03-05</strong>开会", None, "<strong>二零二四年三月五日</strong>开会"),
        ("say [M][AY0] 5 times", None, "say [M][AY0] five times"),
        # Other languages are left as written
        ("14:30 le 5", "fr", "14:30 le 5"),
    ],
)
def test_normalisation_table(text: str, language: str | None, expected: str) -> None:
    assert normalize_for_speech(text, language) == expected


def test_piper_gets_english_normalisation_and_cosyvoice_its_own_frontend() -> None:
    piper, cosy = BUILTIN["piper"], BUILTIN["cosyvoice"]
    assert prepare("It costs $5.", piper, 400).segments == ["It costs five dollars."]
    # CosyVoice's frontend (wetext) reads numbers itself...
    assert prepare("花了¥12。", cosy, 400).normalized == "花了¥12。"
    # ...except in text with markup, where the worker turns that frontend off.
    assert prepare("她[h][ào]花了¥12。", cosy, 400).normalized == "她[h][ào]花了十二元。"


def test_segments_follow_the_engine_limit_and_the_settings_limit() -> None:
    text = "这是一个很长的句子，" * 30 + "结束。"
    cosy = BUILTIN["cosyvoice"]
    segments = prepare(text, cosy, 400).segments
    assert max(len(s) for s in segments) <= cosy.max_segment_chars
    assert len(segments) > 1 and "".join(segments) == text
    assert max(len(s) for s in prepare(text, cosy, 50).segments) <= 50
    small = dataclasses.replace(cosy, max_segment_chars=30)
    assert max(len(s) for s in prepare(text, small, 400).segments) <= 30


def test_chinese_splits_at_sentence_ends_then_full_width_commas() -> None:
    text = "第一句话。第二句话！第三句话？第四句很长很长，还有后半句；最后"
    assert split_segments(text, 8) == [
        "第一句话。",
        "第二句话！",
        "第三句话？",
        "第四句很长很长，",
        "还有后半句；最后",
    ]
    # Short sentences pack together without spaces; a closing quote stays with its sentence.
    assert split_segments("他说：“你好。”然后走了。", 100) == ["他说：“你好。”然后走了。"]
    assert split_segments("他说：“你好。”然后走了。", 8) == ["他说：“你好。”", "然后走了。"]


@pytest.mark.parametrize(
    "text",
    [
        "她[h][ào]干净" * 20,
        "[breath]好[laughter]" * 20,
        "<strong>很长很长很长很长，很长很长很长很长。</strong>" * 5,
        "say [M][AY0][N][UW1][T] <laughter>ha ha</laughter> " * 8,
    ],
)
def test_markup_and_tags_are_never_split(text: str) -> None:
    for limit in (7, 13, 40):
        segments = split_segments(text, limit)
        for seg in segments:
            parse_markup(seg)  # balanced, no run cut in two
            assert not seg.startswith("[h]")  # a pinyin run stays with its character


def test_a_cut_inside_a_paired_tag_closes_and_reopens_it() -> None:
    segments = split_segments("<strong>第一句很长很长，第二句也很长很长。</strong>", 8)
    assert segments == ["<strong>第一句很长很长，</strong>", "<strong>第二句也很长很长。</strong>"]


def test_tags_are_their_own_kind() -> None:
    runs = parse_markup("好[h][ǎo][breath]<strong>重</strong>[laughter]")
    assert [(r.kind, r.tokens) for r in runs] == [
        (MarkupKind.pinyin, ("h", "ǎo")),
        (MarkupKind.tag, ("[breath]",)),
        (MarkupKind.tag, ("<strong>",)),
        (MarkupKind.tag, ("</strong>",)),
        (MarkupKind.tag, ("[laughter]",)),
    ]
    assert markup_kinds("[quick_breath] and [vocalized-noise] [mn]") == {MarkupKind.tag}
    assert markup_kinds("<laughter>哈<strong>哈</strong></laughter>") == {MarkupKind.tag}
    assert markup_kinds("[yuan2][h][ao3][zh][uang4]") == {MarkupKind.pinyin}


@pytest.mark.parametrize(
    ("text", "span"),
    [
        ("hello [xyz] there", "characters 6-11 '[xyz]'"),
        ("a [breathe] b", "characters 2-11 '[breathe]'"),
        ("<strong>never closed", "characters 0-8 '<strong>'"),
        ("closed</strong> only", "characters 6-15 '</strong>'"),
        ("<strong><laughter>x</strong></laughter>", "characters 19-28 '</strong>'"),
        ("<strong>a<strong>b</strong></strong>", "characters 9-17 '<strong>'"),
        ("<b>bold</b>", "characters 0-3 '<b>'"),
        ("mixed [h][AY1]", "characters 6-14 '[h][AY1]'"),
    ],
)
def test_bad_tags_are_refused_naming_the_span(text: str, span: str) -> None:
    with pytest.raises(MarkupInvalid) as info:
        parse_markup(text)
    assert info.value.message.startswith(span), info.value.message
    assert info.value.field == "text"

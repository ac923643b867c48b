import pytest

from core.errors import MarkupInvalid, TextEmpty
from core.text import (
    MarkupKind,
    halve,
    markup_kinds,
    normalize,
    parse_markup,
    split_segments,
)


def test_pinyin_and_arpabet_runs_are_classified() -> None:
    assert markup_kinds("她[h][ào]干净") == {MarkupKind.pinyin}
    assert markup_kinds("a [M][AY0][N][UW1][T] ago") == {MarkupKind.arpabet}
    runs = parse_markup("x [h][ao4] y [K][AE1][T]")
    assert [r.kind for r in runs] == [MarkupKind.pinyin, MarkupKind.arpabet]
    assert runs[1].tokens == ("K", "AE1", "T")


@pytest.mark.parametrize(
    "text",
    [
        "unclosed [AY1",
        "stray ] bracket",
        "nested [[AY1]]",
        "empty [] here",
        "bad [XX9] phone",
        "stress on consonant [K1]",
        "mixed [h][AY1]",
    ],
)
def test_bad_markup_is_refused_with_a_position(text: str) -> None:
    with pytest.raises(MarkupInvalid):
        parse_markup(text)


def test_normalize_trims_and_refuses_blank() -> None:
    assert normalize("  hello   world \r\n\n second  ") == "hello world\nsecond"
    with pytest.raises(TextEmpty):
        normalize(" \n\t ")


def test_segments_follow_sentences_and_pack_short_ones() -> None:
    text = "One. Two! Three? " + "Four is a longer sentence that goes on."
    assert split_segments(text, 12) == [
        "One. Two!",
        "Three?",
        "Four is a",
        "longer",
        "sentence",
        "that goes",
        "on.",
    ]
    assert split_segments(text, 400) == [text.strip()]
    assert split_segments("第一句。第二句！", 4) == ["第一句。", "第二句！"]


def test_long_sentence_is_never_cut_inside_markup() -> None:
    text = "say " + "[M][AY0][N][UW1][T] " * 6
    for seg in split_segments(text, 30):
        assert seg.count("[") == seg.count("]")
        parse_markup(seg)


def test_halve_prefers_sentence_then_comma_then_space_near_the_middle() -> None:
    assert halve("One two three. Four five six.") == ["One two three.", "Four five six."]
    assert halve("alpha beta, gamma delta") == ["alpha beta,", "gamma delta"]
    assert halve("alpha beta gamma delta") == ["alpha beta", "gamma delta"]
    # A sentence end far from the middle loses to a space near it.
    assert halve("Hi. one two three four five six") == ["Hi. one two three", "four five six"]


def test_halve_cuts_chinese_without_spaces_and_never_inside_markup() -> None:
    assert halve("第一句话。第二句话") == ["第一句话。", "第二句话"]
    assert halve("今天天气很好") == ["今天天", "气很好"]
    text = "大家都说她[h][ào]干净"
    pieces = halve(text)
    assert len(pieces) == 2 and "".join(pieces) == text
    assert any("她[h][ào]" in p for p in pieces)  # the run stays with the character it reads
    for p in pieces:
        parse_markup(p)


def test_halve_repeatedly_keeps_every_piece_valid() -> None:
    text = "她[h][ào]干净也[h][ào]客，又说 [M][AY0][N][UW1][T] 好[h][ǎo]看"
    pieces = [text]
    for _ in range(4):
        pieces = [h for p in pieces for h in halve(p)]
        for p in pieces:
            assert p and parse_markup(p) is not None
            for run in parse_markup(p):
                assert run.kind != MarkupKind.pinyin or run.start > 0  # never orphaned
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "")


def test_halve_leaves_an_uncuttable_text_whole() -> None:
    assert halve("a") == ["a"]
    assert halve("她[h][ào]") == ["她[h][ào]"]
    assert halve("[M][AY0][N][UW1][T]") == ["[M][AY0][N][UW1][T]"]


@pytest.mark.parametrize(
    "text",
    [
        "\u200b\u200b",
        "\ufeff",
        "...",
        "\u0301\u0302",
        "\u200d \u2060",
        "?!…",
        "—",
        "\ufeff\n\u200b",
    ],
)
def test_text_with_nothing_to_speak_is_empty(text: str) -> None:
    with pytest.raises(TextEmpty):
        normalize(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\ufeffHello", "Hello"),
        ("a\u200db", "a\u200db"),  # ZWJ inside a word is kept
        ("42", "42"),
        ("[M][AY0]", "[M][AY0]"),
        ("她[h][ào]干净", "她[h][ào]干净"),
        ("\u200b\nHi", "Hi"),
    ],
)
def test_speakable_text_is_kept(text: str, expected: str) -> None:
    assert normalize(text) == expected

import pytest

from core.errors import MarkupInvalid, TextEmpty
from core.text import MarkupKind, markup_kinds, normalize, parse_markup, split_segments


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

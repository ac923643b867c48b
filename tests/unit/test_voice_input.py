"""The API's shape checks of a voice upload (api/voice_input.py) and language codes."""

from __future__ import annotations

import io

import pytest

from api.voice_input import check_language, clean_text, is_multipart, read_audio, voice_fields
from core.errors import AudioEmpty, AudioMissing, RequestTooLarge, UnknownLanguage, ValidationFailed
from core.languages import normalize_language
from core.settings import Settings


@pytest.mark.parametrize(
    ("value", "expected"),
    [("  Joe  ", "Joe"), ("第一行\n第二行", "第一行\n第二行"), ("tab\there", "tab\there")],
)
def test_clean_text_keeps_text(value: str, expected: str) -> None:
    assert clean_text(value, "name", 20) == expected


@pytest.mark.parametrize(
    "value", [None, "", "   ", "a\x00b", "bell\x07", "lone \ud800 surrogate", "x" * 21]
)
def test_clean_text_refuses(value: str | None) -> None:
    with pytest.raises(ValidationFailed) as err:
        clean_text(value, "transcript", 20)
    assert err.value.field == "transcript" and err.value.status_code == 422


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("en", "en"),
        ("EN-US", "en-US"),
        ("zh-Hans-CN", "zh-Hans-CN"),
        ("yue", "yue"),
        (" ja ", "ja"),
    ],
)
def test_known_languages(tag: str, expected: str) -> None:
    assert normalize_language(tag) == expected
    assert check_language(tag) == expected


@pytest.mark.parametrize(
    "tag", ["xx", "klingon", "en_US", "e", "zh--CN", "日本語", "en-" + "x" * 20]
)
def test_unknown_languages(tag: str) -> None:
    assert normalize_language(tag) is None
    with pytest.raises(UnknownLanguage):
        check_language(tag)


def test_no_language_is_none() -> None:
    assert check_language(None) is None and check_language("  ") is None


def test_read_audio_bounds() -> None:
    assert read_audio(io.BytesIO(b"RIFF"), 10) == b"RIFF"
    assert read_audio(io.BytesIO(b"x" * 10), 10) == b"x" * 10
    with pytest.raises(AudioMissing):
        read_audio(None, 10)
    with pytest.raises(AudioEmpty):
        read_audio(io.BytesIO(b""), 10)
    with pytest.raises(RequestTooLarge):
        read_audio(io.BytesIO(b"x" * 11), 10)


def test_voice_fields_use_the_transcript_limit() -> None:
    settings = Settings(max_voice_transcript_chars=5)
    fields = voice_fields(" joe ", "hello", "EN", settings)
    assert (fields.name, fields.transcript, fields.language) == ("joe", "hello", "en")
    with pytest.raises(ValidationFailed):
        voice_fields("joe", "hello!", None, settings)


def test_is_multipart() -> None:
    assert is_multipart("multipart/form-data; boundary=x")
    assert is_multipart("Multipart/Form-Data")
    assert not is_multipart("application/json")
    assert not is_multipart("multipart/mixed; boundary=x")
    assert not is_multipart(None)

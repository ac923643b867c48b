"""The shape checks of a voice upload, done in the API process before anything is written.

Only the shape: the recording is not decoded here (the API never imports numpy or torch); a
worker decodes and judges the audio itself (workers/voices)."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import BinaryIO

from core.errors import AudioEmpty, AudioMissing, RequestTooLarge, UnknownLanguage, ValidationFailed
from core.languages import normalize_language
from core.settings import Settings

MAX_NAME_CHARS = 128
# Form fields beside the recording (name, transcript, language, multipart headers).
FORM_OVERHEAD_BYTES = 64 * 1024
_ALLOWED_CONTROLS = {"\n", "\t", "\r"}


@dataclass(frozen=True)
class VoiceFields:
    name: str
    transcript: str
    language: str | None


def clean_text(value: str | None, field: str, max_chars: int) -> str:
    """Stripped text, or a 422 naming the field: empty, too long, NUL and other control
    characters, lone surrogates (which UTF-8 cannot store)."""
    text = (value or "").strip()
    if not text:
        raise ValidationFailed(f"{field} must not be empty", field=field)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationFailed(f"{field} holds a lone surrogate", field=field) from None
    bad = next(
        (c for c in text if unicodedata.category(c) == "Cc" and c not in _ALLOWED_CONTROLS), None
    )
    if bad is not None:
        raise ValidationFailed(f"{field} holds control character U+{ord(bad):04X}", field=field)
    if len(text) > max_chars:
        raise ValidationFailed(
            f"{field} is {len(text)} characters long; at most {max_chars}", field=field
        )
    return text


def check_language(value: str | None) -> str | None:
    """None for no language; the normalised tag; or 422 `unknown_language`."""
    if value is None or not value.strip():
        return None
    tag = normalize_language(value)
    if tag is None:
        shown = value[:32].encode("utf-8", "replace").decode()
        raise UnknownLanguage(
            f"{shown!r} is not a language code this farm knows: use ISO 639-1 such as "
            "`en`, `zh` or `en-US`",
            field="language",
        )
    return tag


def voice_fields(
    name: str | None, transcript: str | None, language: str | None, settings: Settings
) -> VoiceFields:
    return VoiceFields(
        name=clean_text(name, "name", MAX_NAME_CHARS),
        transcript=clean_text(transcript, "transcript", settings.max_voice_transcript_chars),
        language=check_language(language),
    )


def read_audio(file: BinaryIO | None, max_bytes: int) -> bytes:
    """The uploaded recording's bytes, read at most one byte past the limit."""
    if file is None:
        raise AudioMissing("send the recording as the multipart file part `audio`", field="audio")
    data = file.read(max_bytes + 1)
    if not data:
        raise AudioEmpty("the `audio` part is empty", field="audio")
    if len(data) > max_bytes:
        raise RequestTooLarge(f"the recording is larger than {max_bytes} bytes", field="audio")
    return data


def is_multipart(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == "multipart/form-data"

"""Reading the Gradio-style `data` array of POST /api/predict.

    data = [mode, prompt, text, instruction-or-transcript]

`mode` is one of the WebUI's names (预训练音色, 3s极速复刻, 跨语种复刻, 自然语言控制) or its plain
English one. `prompt` is null, a voice id from POST /v1/voices, or the prompt recording inline
as Gradio sends files: a `data:audio/...;base64,...` URL, bare or as `{"data": ...}`. With an
inline recording in the cloning modes, data[3] is what the recording says (its transcript);
in `自然语言控制` data[3] is the instruction.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from typing import Any

from core.enums import JobMode
from core.errors import RequestTooLarge, UnsupportedMode, ValidationFailed

MODES = {
    "预训练音色": JobMode.preset,
    "preset": JobMode.preset,
    "3s极速复刻": JobMode.clone,
    "clone": JobMode.clone,
    "跨语种复刻": JobMode.cross_lingual,
    "cross_lingual": JobMode.cross_lingual,
    "自然语言控制": JobMode.instruct,
    "instruct": JobMode.instruct,
}
CLONING = (JobMode.clone, JobMode.cross_lingual)


@dataclass(frozen=True)
class PredictCall:
    mode: JobMode
    text: str
    voice_id: uuid.UUID | None
    instruction: str | None
    # An inline prompt recording and its transcript: a new voice is made from them first.
    upload: bytes | None = None
    transcript: str | None = None


def read_call(data: list[Any], max_upload_bytes: int) -> PredictCall:
    name, prompt, text = data[0], data[1], data[2]
    fourth = data[3] if len(data) > 3 else None
    if not isinstance(name, str) or not isinstance(text, str):
        raise ValidationFailed("data must be [mode, prompt, text, instruction]", field="data")
    mode = MODES.get(name.strip())
    if mode is None:
        raise UnsupportedMode(f"mode must be one of {sorted(MODES)}", field="data")
    if fourth is not None and not isinstance(fourth, str):
        raise ValidationFailed("data[3] must be text", field="data")
    instruction = (fourth or None) if mode == JobMode.instruct else None
    if prompt is None:
        return PredictCall(mode, text, None, instruction)
    voice_id = _voice_id(prompt)
    if voice_id is not None:
        return PredictCall(mode, text, voice_id, instruction)
    upload = _inline_audio(prompt, max_upload_bytes)
    if mode not in CLONING:
        raise ValidationFailed(
            "an inline prompt recording goes with 3s极速复刻 or 跨语种复刻; for other modes "
            "upload it with POST /v1/voices and pass its id",
            field="data",
        )
    if not fourth:
        raise ValidationFailed(
            "with an inline prompt recording, data[3] must be what the recording says",
            field="data",
        )
    return PredictCall(mode, text, None, None, upload, fourth)


def _voice_id(prompt: Any) -> uuid.UUID | None:
    if isinstance(prompt, str) and len(prompt) <= 36:
        try:
            return uuid.UUID(prompt)
        except ValueError:
            return None
    return None


def _inline_audio(prompt: Any, max_bytes: int) -> bytes:
    raw = prompt.get("data") if isinstance(prompt, dict) else prompt
    if not isinstance(raw, str) or not raw:
        raise ValidationFailed(
            "the prompt (data[1]) must be null, a voice id from POST /v1/voices, or the "
            "recording as a base64 data URL",
            field="data",
        )
    head, comma, payload = raw.partition(",")
    if comma and head.startswith("data:"):
        raw = payload
    if len(raw) > max_bytes * 4 // 3 + 4:
        raise RequestTooLarge(f"the prompt recording is larger than {max_bytes} bytes")
    try:
        audio = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValidationFailed("the prompt recording is not valid base64", field="data") from exc
    if not audio:
        raise ValidationFailed("the prompt recording is empty", field="data")
    return audio

"""CosyVoice 2/3: the production engine, over the official CosyVoice code and a local model
directory. FP16 on CUDA. The official package is not on PyPI: put its checkout on PYTHONPATH
(the GPU image does, see infra/docker/worker.Dockerfile).

Modes served here: `preset` (a speaker the model directory already holds: SFT speakers of
CosyVoice 1, saved zero-shot speakers of CosyVoice 2/3) and `instruct` (natural-language style
and dialect instructions). Markup (`她[h][ào]干净`, `[M][AY0][N][UW1][T]`) goes to the model as
written, with CosyVoice's own text normaliser off so it is not rewritten.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from core.engines import BUILTIN
from core.settings import Settings
from core.text import parse_markup
from workers.engines.base import Audio, EngineBase, RequestRejected, SegmentRequest

END_OF_PROMPT = "<|endofprompt|>"
_SPECIAL_TOKEN = re.compile(r"<\|[^|>]*\|>")


class CosyVoiceEngine(EngineBase):
    spec = BUILTIN["cosyvoice"]

    def __init__(self, settings: Settings) -> None:
        self.model_dir = settings.cosyvoice_model_dir
        self.model: Any = None
        self.speakers: list[str] = []
        self.sample_rate = self.spec.sample_rate

    def load(self, device: str, dtype: str) -> None:
        # Never let AutoModel fall back to a hub download: a missing directory is an error here.
        if self.model_dir is None or not Path(self.model_dir).is_dir():
            raise RuntimeError(
                f"VOICEFARM_COSYVOICE_MODEL_DIR={self.model_dir} is not a model directory"
            )
        from cosyvoice.cli.cosyvoice import AutoModel

        self.model = AutoModel(
            model_dir=str(self.model_dir), fp16=device == "cuda" and dtype == "fp16"
        )
        self.sample_rate = int(self.model.sample_rate)
        self.speakers = list(self.model.list_available_spks())

    def _voice(self, requested: str | None) -> str:
        if requested is None:
            if not self.speakers:
                raise RequestRejected("this CosyVoice model directory holds no speakers")
            return self.speakers[0]
        if requested not in self.speakers:
            raise RequestRejected(
                f"voice {requested!r} is not in the model; it has {self.speakers}"
            )
        return requested

    def _instruct_text(self, instruction: str) -> str:
        """CosyVoice 2 wants `<instruction><|endofprompt|>`; CosyVoice 3 also the system line.
        Special tokens typed by the client are removed, so they cannot steer the prompt."""
        clean = _SPECIAL_TOKEN.sub("", instruction).strip()
        if type(self.model).__name__ == "CosyVoice3":
            return f"You are a helpful assistant. {clean}{END_OF_PROMPT}"
        return f"{clean}{END_OF_PROMPT}"

    def synthesize(self, batch: list[SegmentRequest]) -> list[Audio]:
        if self.model is None:
            raise RuntimeError("CosyVoiceEngine.load() was not called")
        return [self._one(req) for req in batch]

    def _one(self, req: SegmentRequest) -> Audio:
        voice = self._voice(req.voice)
        instruction = (req.options or {}).get("instruction")
        kw = {"stream": False, "speed": req.speed, "text_frontend": not parse_markup(req.text)}
        m = self.model
        v2 = hasattr(m, "inference_instruct2")  # CosyVoice 2 and 3
        if instruction and v2:
            outputs = m.inference_instruct2(
                req.text, self._instruct_text(instruction), "", zero_shot_spk_id=voice, **kw
            )
        elif instruction:
            outputs = m.inference_instruct(req.text, voice, instruction, **kw)
        elif v2:
            outputs = m.inference_zero_shot(req.text, "", "", zero_shot_spk_id=voice, **kw)
        else:
            outputs = m.inference_sft(req.text, voice, **kw)
        chunks = [o["tts_speech"].float().cpu().numpy().reshape(-1) for o in outputs]
        samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        return Audio(np.clip(samples, -1.0, 1.0).astype(np.float32), self.sample_rate)

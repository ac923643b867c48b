"""Engine figures per device and precision (issue 9, item 5): Piper on onnxruntime (the CUDA
provider when present) in fp32 and fp16 at batch sizes 1, 4 and 8, and the tiny CosyVoice 2/3
models in fp32 and fp16 (throughput and memory).

    .venv/bin/python bench/gpu.py [--sentences 32] [--write]
    VOICEFARM_COSYVOICE_SRC=/path/to/snapshot .venv/bin/python bench/gpu.py   # + CosyVoice rows

On a machine without CUDA it runs the same measurements on the CPU (onnxruntime's CPU provider;
CosyVoice fp16 falls back to fp32 there, as upstream does), which is how this script is checked
where no GPU is lent. `--write` puts the table, machine and command in docs/BENCHMARKS.md
between the bench/gpu.py markers.

Piper: the bundled voice with sampling noise off (the same phonemes give the same audio), its
graph patched to return each item's length as the worker's batch path does
(workers/engines/piper_batch.py); fp16 is onnxruntime's float16 conversion of that graph with
float32 inputs and outputs kept. "audio vs fp32": how many items came out as long as in fp32
(fp16 can round a phoneme's duration differently) and the largest sample difference among those
(audio is peak-normalised to 1.0). Memory: the process's GPU
memory from nvidia-smi after the run on CUDA, the process's peak RSS so far on the CPU.

CosyVoice: the tiny random models of ../shared/cosyvoice-tiny (built once into
~/.cache/voicefarm-tiny) through workers/engines/cosyvoice.py, one clone-mode segment per
call; memory is torch's peak allocation on CUDA. The audio is noise (random weights): the
figures are the adapter's and upstream's cost, not a real model's speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.doc_block import markers, write_block  # noqa: E402
from bench.efficiency import SENTENCES as _EFFICIENCY_SENTENCES  # noqa: E402

# The efficiency bench's sentences (its first eight, as measured in docs/BENCHMARKS.md).
SENTENCES = _EFFICIENCY_SENTENCES[:8]


def _nvidia_smi(*query: str) -> str | None:
    """nvidia-smi's CSV answer to `query`, or None on a machine without it."""
    if shutil.which("nvidia-smi") is None:
        return None
    return subprocess.run(
        ["nvidia-smi", *query, "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout


def _gpu_memory_mib() -> float | None:
    """This process's GPU memory according to nvidia-smi, or None without one."""
    out = _nvidia_smi("--query-compute-apps=pid,used_memory")
    if out is None:
        return None
    for line in out.splitlines():
        pid, _, used = line.partition(",")
        if pid.strip() == str(os.getpid()):
            return float(used)
    return 0.0


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def piper_rows(n: int) -> list[dict[str, Any]]:
    import onnx
    import onnxruntime
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from piper import PiperVoice

    from workers.engines.piper import bundled_voice_path, to_piper_text
    from workers.engines.piper_batch import (
        LENGTHS_OUTPUT,
        Sentence,
        _lengths_tensor,
        run_sentences,
    )

    path = bundled_voice_path()
    voice = PiperVoice.load(path)  # on the CPU: only its phonemizer is used here
    cfg = voice.config
    speaker = cfg.default_speaker_id if cfg.num_speakers > 1 else None
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(n)]
    sentences = []
    for n_, text in enumerate(texts):
        for phonemes in voice.phonemize(to_piper_text(text)):
            if phonemes:
                ids = voice.phonemes_to_ids(phonemes)
                sentences.append(Sentence(n_, ids, (0.0, 1.0, 0.0), speaker))
    cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    provider = "CUDAExecutionProvider" if cuda else "CPUExecutionProvider"
    rows = []
    reference: dict[int, list[np.ndarray]] = {}
    for precision in ("fp32", "fp16"):
        model = onnx.load(str(path))
        model.graph.node.append(
            onnx.helper.make_node("Identity", [_lengths_tensor(model.graph)], [LENGTHS_OUTPUT])
        )
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(LENGTHS_OUTPUT, onnx.TensorProto.INT64, ["b"])
        )
        if precision == "fp16":
            model = convert_float_to_float16(model, keep_io_types=True)
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=[provider])
        for batch in (1, 4, 8):
            run_sentences(session, sentences[:batch], batch, cfg.hop_length)  # warm-up
            t0 = time.perf_counter()
            audio = run_sentences(session, sentences, batch, cfg.hop_length)
            wall = time.perf_counter() - t0
            seconds = sum(len(a) for a in audio) / cfg.sample_rate
            diff = None
            if precision == "fp32":
                reference[batch] = audio
            else:
                # fp16 may round a duration differently: a shifted item is not comparable
                # sample by sample, so it counts as different and the rest are compared.
                pairs = list(zip(audio, reference[batch], strict=True))
                same = [(a, r) for a, r in pairs if len(a) == len(r)]
                worst = max((float(np.max(np.abs(a - r))) for a, r in same), default=0.0)
                diff = f"{len(same)}/{len(pairs)} same length, max {worst:.3f}"
            rows.append(
                {
                    "engine": "piper",
                    "device": provider.removesuffix("ExecutionProvider"),
                    "precision": precision,
                    "batch": batch,
                    "items": len(sentences),
                    "wall_s": wall,
                    "audio_s": seconds,
                    "x_realtime": seconds / wall,
                    "vs_fp32": diff,
                    "memory_mib": _gpu_memory_mib() if cuda else _rss_mib(),
                }
            )
        del session
    return rows


def cosyvoice_rows(n: int) -> list[dict[str, Any]]:
    src = os.environ.get("VOICEFARM_COSYVOICE_SRC")
    if not src:
        print("VOICEFARM_COSYVOICE_SRC is not set: no CosyVoice rows", file=sys.stderr)
        return []
    import torch

    from core.settings import Settings
    from tests.fixtures.cosyvoice_models import DEFAULT_TINY, _build
    from workers.engines.base import PreparedVoice, SegmentRequest, VoicePrompt
    from workers.engines.cosyvoice import CosyVoiceEngine

    cache = Path(
        os.environ.get("VOICEFARM_COSYVOICE_TINY_CACHE", Path.home() / ".cache" / "voicefarm-tiny")
    )
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    rate = 16000
    t = np.arange(int(3.2 * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * (150 + 50 * t) * t)).astype(np.float32)
    prompt = VoicePrompt("bench", 1, "希望你以后能够做的比我还好呦。", "zh", "sha", samples, rate)
    rows = []
    for version in (2, 3):
        model_dir = _build(
            Path(os.environ.get("VOICEFARM_COSYVOICE_TINY", DEFAULT_TINY)),
            Path(src),
            version,
            cache,
        )
        for precision in ("fp32", "fp16"):
            engine = CosyVoiceEngine(
                Settings(cosyvoice_model_dir=model_dir, cosyvoice_src=Path(src))
            )
            engine.load(device, precision)
            voice = PreparedVoice(
                f"bench:{version}", engine.prepare_voice(prompt), "bench", prompt.transcript
            )
            request = [SegmentRequest("你好，欢迎使用语音合成。", None, mode="clone", prompt=voice)]
            engine.synthesize(request)  # warm-up
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            seconds = 0.0
            for _ in range(n):
                (audio,) = engine.synthesize(request)
                seconds += len(audio.samples) / audio.sample_rate
            if cuda:
                torch.cuda.synchronize()
            wall = time.perf_counter() - t0
            rows.append(
                {
                    "engine": f"cosyvoice{version} (tiny)",
                    "device": device,
                    "precision": precision
                    if engine.fp16 or precision == "fp32"
                    else "fp32 (fp16 off)",
                    "batch": 1,
                    "items": n,
                    "wall_s": wall,
                    "audio_s": seconds,
                    "x_realtime": seconds / wall if wall else 0.0,
                    "vs_fp32": None,
                    "memory_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else _rss_mib(),
                }
            )
            del engine
            if cuda:
                torch.cuda.empty_cache()
    return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| engine | device | precision | batch | items | wall (s) | audio (s) | x realtime "
        "| audio vs fp32 | memory (MiB) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in rows:
        diff = r["vs_fp32"] or "-"
        mem = "-" if r["memory_mib"] is None else f"{r['memory_mib']:.0f}"
        out.append(
            f"| {r['engine']} | {r['device']} | {r['precision']} | {r['batch']} | {r['items']} "
            f"| {r['wall_s']:.2f} | {r['audio_s']:.1f} | {r['x_realtime']:.1f} | {diff} | {mem} |"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sentences", type=int, default=32, help="Piper sentences per run")
    parser.add_argument("--calls", type=int, default=8, help="CosyVoice calls per run")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = piper_rows(args.sentences) + cosyvoice_rows(args.calls)
    head = (
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, GPU: {_gpu_name() or 'none'}; "
        f"`python bench/gpu.py {' '.join(sys.argv[1:])}`"
    )
    lines = [head, "", *table(rows)]
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.write:
        write(lines)


def _gpu_name() -> str | None:
    out = (_nvidia_smi("--query-gpu=name") or "").strip()
    return out.splitlines()[0] if out else None


def write(lines: list[str]) -> None:
    begin, end = markers("gpu.py")
    block = begin + "\n" + "\n".join(lines) + "\n" + end
    write_block("gpu.py", block, "Engines by device and precision")


if __name__ == "__main__":
    main()

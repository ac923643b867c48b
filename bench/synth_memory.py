"""Peak memory of one job against its text length: the streaming path the task uses (resample
per segment, write each segment to a temporary WAV, upload the file) beside the old in-memory
path (keep every segment, join, resample the whole signal, encode to bytes, upload the bytes).

    .venv/bin/python bench/synth_memory.py [--lengths 100,1000,5000] [--rate 16000]
        [--format wav|flac|mp3|ogg|opus|pcm] [--loudness -16]

Each (length, path) runs in a fresh process with the real Piper engine, so the process's peak
RSS belongs to that run alone. Printed per run: RSS after the engine is loaded and warm, the
peak RSS of the whole process, and the peak of Python/numpy allocations during the job
(tracemalloc; the engine's own onnxruntime buffers are not Python allocations). No database or
broker involved; the "upload" goes to a local-folder store in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

SENTENCE = "The quick brown fox jumps over the lazy dog while the farm keeps every job safe. "


def text_of(chars: int) -> str:
    text = (SENTENCE * (chars // len(SENTENCE) + 1))[:chars]
    return text.rsplit(" ", 1)[0] + "."


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(
    chars: int, mode: str, rate: int | None, fmt: str = "wav", loudness: float | None = None
) -> dict[str, float | int | str]:
    from core.settings import Settings
    from core.storage import FileStorage
    from core.text import split_segments
    from tasks.synthesize import JobInput, _synthesize_segment
    from workers import audio as audio_ops
    from workers.engines.piper import PiperEngine

    settings = Settings()
    engine = PiperEngine(settings)
    engine.load("cpu", "fp32")
    inp = JobInput("piper", None, None, text_of(chars), fmt, rate, 1.0, loudness_target=loudness)
    segments = split_segments(inp.text, settings.segment_max_chars)
    # Warm up on a segment as long as any the job has: onnxruntime grows its arena to the
    # longest input it has seen, and that growth is the engine's, not the job's.
    warm = split_segments(text_of(5000), settings.segment_max_chars)[0]
    _synthesize_segment(engine, warm, inp, None)
    loaded = rss_mib()
    store = FileStorage(Path(tempfile.mkdtemp(prefix="voicefarm-bench-")))
    tracemalloc.start()
    t0 = time.perf_counter()
    if mode == "streaming":  # what tasks/synthesize.py does
        with audio_ops.WavFileWriter.temporary(
            inp.format, inp.sample_rate, loudness=inp.loudness_target
        ) as writer:
            for segment in segments:
                writer.add_all(_synthesize_segment(engine, segment, inp, None))
            writer.stats()  # the quality figures, as the task takes them
            encoded = writer.finish()
            store.put_file(f"jobs/bench/1.{fmt}", encoded.path, encoded.content_type)
            audio_s, size = encoded.duration_s, encoded.bytes
    elif mode == "engine":  # the engine alone, audio dropped: what no audio path can avoid
        audio_s = size = 0
        for segment in segments:
            audio_s += sum(a.duration_s for a in _synthesize_segment(engine, segment, inp, None))
    else:  # the path before streaming
        parts = []
        for segment in segments:
            parts.extend(_synthesize_segment(engine, segment, inp, None))
        joined = audio_ops.join(parts)
        if inp.sample_rate and inp.sample_rate != joined.sample_rate:
            joined = audio_ops.resample(joined, inp.sample_rate)
        enc = audio_ops.encode(joined, "wav")
        store.put("jobs/bench/1.wav", enc.data, enc.content_type)
        audio_s, size = enc.duration_s, len(enc.data)
    seconds = time.perf_counter() - t0
    _, traced_peak = tracemalloc.get_traced_memory()
    return {
        "chars": len(inp.text),
        "mode": mode if mode != "streaming" else f"{fmt}{'' if loudness is None else '+lufs'}",
        "segments": len(segments),
        "audio_s": audio_s,
        "wav_mib": size / 2**20,
        "seconds": seconds,
        "rss_loaded_mib": loaded,
        "rss_peak_mib": rss_mib(),
        "traced_peak_mib": traced_peak / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", default="100,1000,5000")
    parser.add_argument("--rate", type=int, default=16000, help="0: the voice's own rate")
    parser.add_argument("--modes", default="engine,streaming,in-memory")
    parser.add_argument("--format", default="wav", help="streaming path only")
    parser.add_argument("--loudness", type=float, default=None, help="LUFS target (streaming)")
    parser.add_argument("--child", nargs=2, metavar=("CHARS", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    rate = args.rate or None
    if args.child:
        result = child(int(args.child[0]), args.child[1], rate, args.format, args.loudness)
        print(json.dumps(result))
        return
    print(
        f"{'path':>9} {'chars':>5} {'segs':>4} {'audio_s':>7} {'wav MiB':>7} "
        f"{'RSS loaded':>10} {'RSS peak':>8} {'job +RSS':>8} {'numpy/py peak':>13}"
    )
    for mode in args.modes.split(","):
        for chars in (int(n) for n in args.lengths.split(",")):
            extra = ["--format", args.format]
            if args.loudness is not None:
                extra += ["--loudness", str(args.loudness)]
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--rate",
                    str(args.rate),
                    *extra,
                    "--child",
                    str(chars),
                    mode,
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(
                f"{r['mode']:>9} {r['chars']:>5} {r['segments']:>4} {r['audio_s']:>7.1f} "
                f"{r['wav_mib']:>7.2f} {r['rss_loaded_mib']:>10.0f} {r['rss_peak_mib']:>8.0f} "
                f"{r['rss_peak_mib'] - r['rss_loaded_mib']:>8.1f} {r['traced_peak_mib']:>13.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()

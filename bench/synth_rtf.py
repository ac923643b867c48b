"""Piper engine speed on this machine: real-time factor, throughput and memory.

    .venv/bin/python bench/synth_rtf.py [--runs 5]

Prints one line per text length and a summary. No database or broker involved.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

from core.settings import Settings
from core.text import split_segments
from workers.audio import encode, join
from workers.engines.base import SegmentRequest
from workers.engines.piper import PiperEngine

SENTENCE = "The quick brown fox jumps over the lazy dog while the farm keeps every job safe."


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    engine = PiperEngine(Settings())
    engine.load("cpu", "fp32")
    load_s = time.perf_counter() - t0
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    engine.synthesize([SegmentRequest("Warm up.", None)])
    print(f"load: {load_s:.2f} s, RSS +{(rss_loaded - rss0) / 1024:.0f} MiB")
    print(f"{'sentences':>9} {'chars':>6} {'audio_s':>8} {'synth_s p50':>11} {'RTF p50':>8}")
    for n in (1, 4, 16):
        text = " ".join([SENTENCE] * n)
        times, audio_s = [], 0.0
        for _ in range(args.runs):
            s0 = time.perf_counter()
            parts = [
                engine.synthesize([SegmentRequest(seg, None)])[0]
                for seg in split_segments(text, 400)
            ]
            enc = encode(join(parts), "wav")
            times.append(time.perf_counter() - s0)
            audio_s = enc.duration_s
        p50 = statistics.median(times)
        print(f"{n:>9} {len(text):>6} {audio_s:>8.2f} {p50:>11.3f} {p50 / audio_s:>8.3f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"peak RSS: {peak / 1024:.0f} MiB")


if __name__ == "__main__":
    main()

"""The `tone` fixture engine that also writes when each synthesis starts and ends.

bench/admission.py runs the worker with `VOICEFARM_EXTRA_ENGINES=tone=bench.stamp_engine:Stamp`:
one line per engine call, `<start> <end> <text>` (wall-clock seconds), in the file
`VOICEFARM_BENCH_STAMPS` names. Measures the farm's overhead around the engine, not the engine.
"""

from __future__ import annotations

import os
import time

from tests.fixtures.engines import ToneEngine
from workers.engines.base import Audio, SegmentRequest


class Stamp(ToneEngine):
    def synthesize(self, batch: list[SegmentRequest]) -> list[Audio]:
        start = time.time()
        out = super().synthesize(batch)
        end = time.time()
        with open(os.environ["VOICEFARM_BENCH_STAMPS"], "a") as f:
            for r in batch:
                f.write(f"{start:.6f} {end:.6f} {r.text}\n")
        return out

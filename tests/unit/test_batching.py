"""Cross-job micro-batching: Piper's batched ONNX path and the batch's shared engine proxy."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from core.engines import BUILTIN
from core.settings import Settings
from tasks.batch import BatchingEngine
from workers.engines.base import Audio, EngineBase, SegmentRequest


@pytest.fixture(scope="module")
def piper() -> Any:
    from workers.engines.piper import PiperEngine

    engine = PiperEngine(Settings(batch_max=8))
    engine.load("cpu", "fp32")
    # No sampling noise: the same phonemes give the same audio, batched or not.
    engine._voice.config.noise_scale = 0.0
    engine._voice.config.noise_w_scale = 0.0
    return engine


def test_piper_batched_output_equals_one_by_one(piper: Any) -> None:
    assert piper.max_batch == 8
    requests = [
        SegmentRequest("Hello there. This one is short.", None),
        SegmentRequest("A much longer sentence follows here, with a pause or two.", None, 1.3),
        SegmentRequest("Third!", None),
        SegmentRequest("The [M][AY0][N][UW1][T] is spelled out.", None, 0.8),
    ]
    batched = piper.synthesize(requests)
    for req, got in zip(requests, batched, strict=True):
        (alone,) = piper.synthesize([req])
        assert got.sample_rate == alone.sample_rate
        assert len(got.samples) == len(alone.samples)
        assert np.abs(got.samples - alone.samples).max() < 5e-3


class _Recorder(EngineBase):
    spec = BUILTIN["piper"]
    max_batch = 8

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def load(self, device: str, dtype: str) -> None:
        pass

    def synthesize(self, batch: list[SegmentRequest]) -> list[Audio]:
        self.calls.append([r.text for r in batch])
        if any(r.text == "boom" for r in batch):
            raise RuntimeError("bad input")
        return [Audio(np.full(10, len(r.text), dtype=np.float32), 16000) for r in batch]


def _run_members(shared: BatchingEngine, texts: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for _ in texts:
        shared.join()

    def one(text: str) -> None:
        try:
            results[text] = shared.synthesize([SegmentRequest(text, None)])[0]
        except Exception as exc:
            results[text] = exc
        finally:
            shared.leave()

    threads = [threading.Thread(target=one, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results


def test_concurrent_jobs_share_one_engine_call() -> None:
    engine = _Recorder()
    shared = BatchingEngine(engine, 8, window_s=5.0)  # members, not the window, close it
    results = _run_members(shared, ["a", "bb", "ccc"])
    assert len(engine.calls) == 1 and sorted(engine.calls[0]) == ["a", "bb", "ccc"]
    assert {t: int(a.samples[0]) for t, a in results.items()} == {"a": 1, "bb": 2, "ccc": 3}


def test_a_bad_job_fails_alone() -> None:
    engine = _Recorder()
    shared = BatchingEngine(engine, 8, window_s=5.0)
    results = _run_members(shared, ["a", "boom", "ccc"])
    assert isinstance(results["boom"], RuntimeError)
    assert int(results["a"].samples[0]) == 1 and int(results["ccc"].samples[0]) == 3
    # One batched call, then each request alone.
    assert len(engine.calls) == 4


def test_a_member_that_left_does_not_hold_the_batch() -> None:
    """A job that stopped (canceled, lease lost) leaves; the others still run, without
    waiting for it beyond the window."""
    engine = _Recorder()
    shared = BatchingEngine(engine, 8, window_s=0.05)
    shared.join()  # a member that never submits again
    results = _run_members(shared, ["a", "bb"])
    assert set(results) == {"a", "bb"}
    shared.leave()
    assert sum(len(c) for c in engine.calls) == 2


def test_piper_threads_setting_sizes_both_sessions_and_keeps_the_audio(piper: Any) -> None:
    """VOICEFARM_PIPER_THREADS: the plain and the batch session run on that many intra-op
    threads, and the audio is what the default session makes (noise off, as above)."""
    from workers.engines.piper import PiperEngine

    one = PiperEngine(Settings(batch_max=8, piper_threads=1))
    one.load("cpu", "fp32")
    one._voice.config.noise_scale = 0.0
    one._voice.config.noise_w_scale = 0.0
    assert one._voice.session.get_session_options().intra_op_num_threads == 1
    assert one._batch_session.get_session_options().intra_op_num_threads == 1
    request = [SegmentRequest("Threads do not change the voice.", None)]
    mine, default = one.synthesize(request)[0], piper.synthesize(request)[0]
    assert len(mine.samples) == len(default.samples) > 0
    assert np.max(np.abs(mine.samples - default.samples)) < 1e-3

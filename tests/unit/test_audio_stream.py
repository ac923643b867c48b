"""The streaming WAV writer: same bytes as the in-memory encoder, loudness tracked as it goes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.audio_checks import read_wav
from workers.audio import WavFileWriter, encode, join, resample
from workers.engines.base import Audio


def _sine(freq: float, rate: int, seconds: float, amp: float = 0.5) -> Audio:
    t = np.arange(int(rate * seconds)) / rate
    return Audio((amp * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)


def _write(path: Path, parts: list[Audio], rate: int | None = None) -> WavFileWriter:
    writer = WavFileWriter(path, rate)
    writer.add_all(parts)
    return writer


def test_streamed_wav_is_byte_identical_to_the_in_memory_encoder(tmp_path: Path) -> None:
    parts = [_sine(300, 22050, 0.7), _sine(500, 22050, 0.3), _sine(200, 22050, 1.1)]
    old = encode(join(parts), "wav")
    enc = _write(tmp_path / "a.wav", parts).finish()
    data = enc.path.read_bytes()
    assert data == old.data  # header (sizes patched at the end) and samples
    assert (enc.sample_rate, enc.duration_s, enc.format) == (22050, old.duration_s, "wav")
    assert enc.bytes == len(data) == enc.path.stat().st_size
    assert enc.sha256 == hashlib.sha256(data).hexdigest() == old.sha256


def test_per_segment_resampling_matches_the_whole_signal_resample(tmp_path: Path) -> None:
    parts = [_sine(440, 22050, 0.9), _sine(440, 22050, 1.3)]
    whole = resample(join(parts), 16000)
    enc = _write(tmp_path / "r.wav", parts, rate=16000).finish()
    samples, rate = read_wav(enc.path.read_bytes())
    assert rate == enc.sample_rate == 16000
    # Segments are rounded one by one: at most a sample per segment apart.
    assert abs(len(samples) - len(whole.samples)) <= len(parts)
    assert abs(enc.duration_s - round(whole.duration_s, 3)) <= 0.001
    first = samples[: int(16000 * 0.9)]
    peak_hz = np.argmax(np.abs(np.fft.rfft(first))) * 16000 / len(first)
    assert abs(peak_hz - 440) < 2


def test_empty_and_silent_audio_are_reported(tmp_path: Path) -> None:
    empty = _write(tmp_path / "e.wav", [Audio(np.zeros(0, np.float32), 16000)])
    assert empty.frames == 0 and "no audio" in (empty.silence() or "")
    nothing = WavFileWriter(tmp_path / "n.wav")
    assert nothing.silence() and nothing.parts == 0
    with pytest.raises(ValueError):
        nothing.finish()
    quiet = _write(tmp_path / "s.wav", [Audio(np.full(16000, 1e-5, np.float32), 16000)] * 2)
    assert "silence" in (quiet.silence() or "")
    # Loudness is over the whole output: one audible part among silent ones is audio.
    silent_second = Audio(np.zeros(16000, np.float32), 16000)
    loud = _write(tmp_path / "l.wav", [silent_second, _sine(300, 16000, 0.2, amp=0.05)])
    assert loud.silence() is None and loud.peak == pytest.approx(0.05, rel=1e-3)


def test_temporary_writer_removes_its_file(tmp_path: Path) -> None:
    with WavFileWriter.temporary("wav", 16000) as writer:
        writer.add(_sine(300, 16000, 0.1))
        enc = writer.finish()
        assert enc.path.exists() and enc.bytes > 44 and writer.path.exists()
    assert not enc.path.exists() and not writer.path.exists()
    with pytest.raises(RuntimeError), WavFileWriter.temporary("wav") as failing:
        raise RuntimeError("engine crashed mid-job")
    assert not failing.path.exists()
    with pytest.raises(ValueError):
        WavFileWriter.temporary("aiff")


@pytest.mark.parametrize(("rate_in", "rate_out"), [(22050, 16000), (22050, 8000), (16000, 24000)])
def test_block_resampler_is_accurate_below_nyquist_and_stops_aliases(
    rate_in: int, rate_out: int
) -> None:
    from workers.audio import Resampler

    r = Resampler(rate_in, rate_out)
    tone = _sine(440, rate_in, 2.0)
    out = np.concatenate(list(r.blocks(tone.samples)))
    assert len(out) == r.output_length(len(tone.samples)) == round(2.0 * rate_out)
    t = np.arange(len(out)) / rate_out
    inner = slice(rate_out // 10, -rate_out // 10)  # away from the edges
    assert np.max(np.abs(out[inner] - 0.5 * np.sin(2 * np.pi * 440 * t[inner]))) < 2e-3
    if rate_out < rate_in:  # a tone above the output's Nyquist must not fold back in
        alias = np.concatenate(list(r.blocks(_sine(0.56 * rate_out, rate_in, 1.0).samples)))
        assert np.sqrt(np.mean(alias[inner] ** 2)) < 1e-3

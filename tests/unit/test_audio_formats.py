"""The writer per format and bit depth, loudness measured block by block and normalised, the
peak limiter, and non-finite samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile

from core.engines import CONTENT_TYPES
from workers.audio import WavFileWriter
from workers.engines.base import Audio
from workers.loudness import LoudnessMeter, limiter_gains

CEILING = 10 ** (-1 / 20)


def _sine(freq: float, rate: int, seconds: float, amp: float = 0.5) -> Audio:
    t = np.arange(int(rate * seconds)) / rate
    return Audio((amp * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)


def _speechlike(rate: int, seconds: float) -> Audio:
    """Bursts of a few harmonics with pauses: loudness gating and peaks matter."""
    t = np.arange(int(rate * seconds)) / rate
    voice = sum(np.sin(2 * np.pi * f * t) / (k + 1) for k, f in enumerate((180, 360, 720, 1400)))
    envelope = (np.sin(2 * np.pi * 1.5 * t) > -0.2).astype(np.float64)
    return Audio((0.3 * voice * envelope).astype(np.float32), rate)


def _decode(path: Path, fmt: str, rate: int, bit_depth: int | None) -> np.ndarray:
    if fmt == "pcm":
        raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        if bit_depth == 16:
            return raw.view("<i2").astype(np.float64) / 32767
        quads = np.zeros((len(raw) // 3, 4), dtype=np.uint8)
        quads[:, 1:] = raw.reshape(-1, 3)  # shifted up a byte: sign lands in the top one
        return quads.view("<i4").ravel().astype(np.float64) / (8388607 * 256)
    data, got_rate = soundfile.read(str(path), dtype="float64")
    assert got_rate == rate
    return np.asarray(data)


CASES = [
    ("wav", 16, "PCM_16"),
    ("wav", 24, "PCM_24"),
    ("flac", 16, "PCM_16"),
    ("flac", 24, "PCM_24"),
    ("mp3", None, "MPEG_LAYER_III"),
    ("ogg", None, "VORBIS"),
    ("opus", None, "OPUS"),
    ("pcm", 16, None),
    ("pcm", 24, None),
]


@pytest.mark.parametrize(("fmt", "bit_depth", "subtype"), CASES)
def test_each_format_decodes_back_at_its_rate_and_length(
    fmt: str, bit_depth: int | None, subtype: str | None
) -> None:
    parts = [_sine(440, 22050, 0.8), _sine(660, 22050, 0.5)]
    with WavFileWriter.temporary(fmt, 24000, bit_depth=bit_depth) as writer:
        writer.add_all(parts)
        enc = writer.finish()
        assert enc.path.suffix == f".{fmt}" and enc.format == fmt
        assert enc.content_type == CONTENT_TYPES[fmt] and enc.bit_depth == bit_depth
        assert enc.bytes == enc.path.stat().st_size and enc.sample_rate == 24000
        if subtype is not None:
            assert soundfile.info(str(enc.path)).subtype == subtype
        data = _decode(enc.path, fmt, 24000, bit_depth)
        expected = 0.8 + 0.12 + 0.5
        assert enc.duration_s == pytest.approx(expected, abs=0.002)
        # Lossy codecs pad a frame or so at the ends.
        assert len(data) / 24000 == pytest.approx(expected, abs=0.002 if bit_depth else 0.08)
        if bit_depth:  # lossless: the samples themselves
            first = np.concatenate(list(writer._resamplers[22050].blocks(parts[0].samples)))
            step = 2.0 ** -(bit_depth - 1)
            assert np.max(np.abs(data[: len(first)] - first)) <= 2 * step
        else:
            t = np.arange(len(data)) / 24000
            inner = slice(2400, 16000)
            ref = 0.5 * np.sin(2 * np.pi * 440 * t[inner])
            assert np.std(data[inner]) == pytest.approx(np.std(ref), rel=0.1)
            peak_hz = np.argmax(np.abs(np.fft.rfft(data[inner]))) * 24000 / len(data[inner])
            assert abs(peak_hz - 440) < 3
    assert not enc.path.exists()


def test_twenty_four_bits_keep_detail_sixteen_bits_lose() -> None:
    quiet = _sine(440, 16000, 0.5, amp=1e-5)  # below one 16-bit step, above 24-bit steps
    loud = _sine(440, 16000, 0.5)  # keeps the job out of the silence check
    got = {}
    for depth in (16, 24):
        with WavFileWriter.temporary("flac", bit_depth=depth) as writer:
            writer.add_all([loud, quiet])
            data, _ = soundfile.read(str(writer.finish().path), dtype="float64")
            got[depth] = data[-4000:]
    assert np.max(np.abs(got[16])) == 0
    assert np.max(np.abs(got[24])) > 5e-6


def test_opus_without_a_rate_gets_the_next_opus_rate_up() -> None:
    with WavFileWriter.temporary("opus") as writer:
        writer.add(_sine(440, 22050, 0.5))
        enc = writer.finish()
        assert enc.sample_rate == 24000 == soundfile.info(str(enc.path)).samplerate
    with pytest.raises(ValueError):
        WavFileWriter.temporary("mp3", bit_depth=24)


def test_streamed_meter_equals_pyloudnorm_on_the_whole_signal() -> None:
    for rate in (16000, 22050, 48000):
        x = _speechlike(rate, 3.37).samples
        meter = LoudnessMeter(rate)
        for i in range(0, len(x), 1234):
            meter.add(x[i : i + 1234])
        expected = pyloudnorm.Meter(rate).integrated_loudness(x.astype(np.float64))
        assert meter.integrated() == pytest.approx(expected, abs=1e-6)
    short = LoudnessMeter(16000)
    short.add(np.ones(1000, dtype=np.float32))
    assert short.integrated() is None  # shorter than one 400 ms block


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "ogg", "opus"])
@pytest.mark.parametrize("target", [-23.0, -16.0])
def test_loudness_is_normalised_to_the_target_within_one_lu(fmt: str, target: float) -> None:
    audio = _speechlike(24000, 4.0)
    with WavFileWriter.temporary(fmt, loudness=target) as writer:
        writer.add(audio)
        enc = writer.finish()
        data, rate = soundfile.read(str(enc.path), dtype="float64")
        measured = pyloudnorm.Meter(rate).integrated_loudness(data)
        assert measured == pytest.approx(target, abs=1.0)
        assert writer.loudness_after == pytest.approx(target, abs=0.2)
        before = pyloudnorm.Meter(24000).integrated_loudness(audio.samples.astype(np.float64))
        assert writer.loudness_before == pytest.approx(before, abs=1e-6)


def test_the_limiter_holds_peaks_at_minus_one_dbfs_when_gain_would_clip() -> None:
    # Peaks near full scale at about -20 LUFS: +15 dB of gain would drive them far past 0 dBFS.
    rate = 16000
    t = np.arange(rate * 4) / rate
    x = 0.05 * np.sin(2 * np.pi * 300 * t)
    x[::4000] = 0.95  # clicks
    with WavFileWriter.temporary("wav", bit_depth=24, loudness=-8.0) as writer:
        writer.add(Audio(x.astype(np.float32), rate))
        enc = writer.finish()
        data, _ = soundfile.read(str(enc.path), dtype="float64")
    assert np.max(np.abs(data)) <= CEILING + 1e-6
    assert writer.output_peak <= CEILING + 1e-6
    assert writer.loudness_after == pytest.approx(-8.0, abs=1.0)


def test_limiter_gains_never_exceed_what_each_frame_allows() -> None:
    rng = np.random.default_rng(7)
    peaks = rng.uniform(0, 1, 500).astype(np.float32)
    gains = limiter_gains(peaks, 3.0, 16, 16000)
    assert len(gains) == 501 and np.all(gains <= 1.0)
    allowed = np.minimum(1.0, CEILING / (peaks * 3.0))
    assert np.all(gains[:-1] <= allowed * (1 + 1e-6))
    assert np.all(gains[1:] <= allowed * (1 + 1e-6))
    assert np.all(limiter_gains(np.full(10, 0.1, np.float32), 2.0, 16, 16000) == 1.0)


def test_non_finite_samples_are_counted_and_written_as_silence(tmp_path: Path) -> None:
    samples = _sine(440, 16000, 1.0).samples.copy()
    samples[100:150] = np.nan
    samples[200] = np.inf
    writer = WavFileWriter(tmp_path / "n.wav", 16000)
    writer.add(Audio(samples, 16000))
    stats = writer.stats()
    assert stats.nan_count == 51 and np.isfinite(stats.peak) and stats.peak <= 0.5
    assert stats.loudness_lufs is not None and np.isfinite(stats.loudness_lufs)
    data, _ = soundfile.read(str(writer.finish().path))
    assert np.all(np.isfinite(data)) and np.all(data[100:150] == 0)


def test_stats_measure_clipping_and_silence(tmp_path: Path) -> None:
    rate = 16000
    clipped = np.clip(4 * _sine(440, rate, 1.0).samples, -1, 1)
    writer = WavFileWriter(tmp_path / "c.wav", rate)
    writer.add(Audio(clipped, rate))
    # |2 sin| >= 1 for a third of the period's time
    assert writer.stats().clipped_ratio == pytest.approx(2 / 3, abs=0.01)
    half = _sine(440, rate, 2.0).samples.copy()
    half[rate:] = 0
    writer = WavFileWriter(tmp_path / "s.wav", rate)
    writer.add(Audio(half, rate))
    stats = writer.stats()
    assert stats.silence_ratio == pytest.approx(0.5, abs=0.02) and stats.clipped == 0

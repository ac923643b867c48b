import numpy as np

from tests.fixtures.audio_checks import read_wav
from workers.audio import encode, join, resample
from workers.engines.base import Audio
from workers.engines.piper import arpabet_to_ipa, to_piper_text


def _sine(freq: float, rate: int, seconds: float) -> Audio:
    t = np.arange(int(rate * seconds)) / rate
    return Audio((0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)


def test_resample_keeps_pitch_and_duration() -> None:
    out = resample(_sine(440, 22050, 1.0), 16000)
    assert out.sample_rate == 16000 and len(out.samples) == 16000
    spectrum = np.abs(np.fft.rfft(out.samples))
    assert abs(np.argmax(spectrum) * 16000 / len(out.samples) - 440) < 2


def test_join_inserts_pauses_and_encode_writes_valid_wav() -> None:
    a = _sine(300, 16000, 0.5)
    joined = join([a, a])
    assert 1.1 < joined.duration_s < 1.2
    enc = encode(joined, "wav")
    samples, rate = read_wav(enc.data)
    assert rate == 16000 and len(samples) == len(joined.samples)
    assert enc.duration_s == round(joined.duration_s, 3) and len(enc.sha256) == 64


def test_arpabet_becomes_piper_raw_phonemes() -> None:
    assert arpabet_to_ipa(("M", "AY1", "N", "AH0", "T")) == "mˈaɪnət"
    assert to_piper_text("a [K][AE1][T] sat") == "a [[ kˈæt ]] sat"
    assert to_piper_text("no markup") == "no markup"

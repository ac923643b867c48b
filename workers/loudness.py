"""Loudness (ITU-R BS.1770 / EBU R128) measured as audio streams past, and a peak limiter.

Both work in bounded memory: the meter keeps one sum per 100 ms of K-weighted audio, the
limiter one peak per millisecond, so a long job never needs its whole signal in memory.
"""

from __future__ import annotations

import math

import numpy as np
from pyloudnorm.iirfilter import IIRfilter
from scipy.signal import lfilter

BLOCK_S = 0.4  # BS.1770 gating block
STEP = 0.25  # blocks overlap by 75%: one starts every 100 ms
ABSOLUTE_GATE = -70.0
RELATIVE_GATE = -10.0

# Output peaks are held at or below -1 dBFS (sample peak) after normalisation.
CEILING_DBFS = -1.0
# How fast the limiter lets go of a gain reduction, and how early it starts one (dB per second).
RELEASE_DB_PER_S = 200.0
ATTACK_DB_PER_S = 1000.0


class LoudnessMeter:
    """Integrated loudness in LUFS, fed block by block; equal to
    `pyloudnorm.Meter(rate).integrated_loudness` on the whole signal (a unit test holds it to
    that), using pyloudnorm's K-weighting filters with their state carried across blocks."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.frames = 0
        self.hop = round(rate * BLOCK_S * STEP)
        # pyloudnorm's two K-weighting stages as one 4th-order filter (the product of their
        # transfer functions and gains): one pass per block instead of two, and the
        # coefficients computed once (pyloudnorm's `IIRfilter.b`/`.a` recompute on every read).
        shelf = IIRfilter(4.0, 1 / np.sqrt(2), 1500.0, rate, "high_shelf")
        high_pass = IIRfilter(0.0, 0.5, 38.0, rate, "high_pass")
        gain = shelf.passband_gain * high_pass.passband_gain
        self._b = gain * np.polymul(shelf.b, high_pass.b)
        self._a = np.polymul(shelf.a, high_pass.a)
        self._state = np.zeros(max(len(self._a), len(self._b)) - 1)
        self._carry = np.zeros(0)
        self._sums: list[np.ndarray] = []

    def add(self, samples: np.ndarray) -> None:
        if not len(samples):
            return
        x, self._state = lfilter(self._b, self._a, samples.astype(np.float64), zi=self._state)
        self.frames += len(samples)
        buf = np.concatenate([self._carry, x * x])
        whole = len(buf) // self.hop * self.hop
        if whole:
            self._sums.append(buf[:whole].reshape(-1, self.hop).sum(axis=1))
        self._carry = buf[whole:]

    def integrated(self) -> float | None:
        """LUFS, or None for audio shorter than one gating block or below the absolute gate."""
        length = self.frames / self.rate
        blocks = int(np.round((length - BLOCK_S) / (BLOCK_S * STEP))) + 1
        if length < BLOCK_S or blocks < 1:
            return None
        hops = [*self._sums, np.array([self._carry.sum()])]
        per_hop = np.concatenate([*hops, np.zeros(4)])
        per_block = np.sum([per_hop[k : blocks + k] for k in range(4)], axis=0)
        z = per_block / (BLOCK_S * self.rate)
        with np.errstate(divide="ignore"):
            loud = -0.691 + 10.0 * np.log10(z)
        gated = z[loud >= ABSOLUTE_GATE]
        if not len(gated):
            return None
        relative = -0.691 + 10.0 * math.log10(float(gated.mean())) + RELATIVE_GATE
        kept = z[(loud > relative) & (loud > ABSOLUTE_GATE)]
        if not len(kept):
            return None
        return -0.691 + 10.0 * math.log10(float(kept.mean()))


def limiter_gains(frame_peaks: np.ndarray, gain: float, frame: int, rate: int) -> np.ndarray:
    """Gain at each frame boundary (len(frame_peaks) + 1 values, linear) that keeps
    `peak * gain * g` at or below the ceiling everywhere once interpolated linearly between
    boundaries: each boundary is at most what both frames it touches allow, and the attack and
    release ramps only ever lower it. Ramps are min-plus recursions, computed with cumulative
    minima rather than a loop."""
    ceiling = 10 ** (CEILING_DBFS / 20)
    peaks = np.maximum(frame_peaks.astype(np.float64) * gain, 1e-12)
    allowed = np.minimum(0.0, 20 * np.log10(ceiling / peaks))  # dB, per frame
    edge = np.concatenate([allowed[:1], np.minimum(allowed[:-1], allowed[1:]), allowed[-1:]])
    k = np.arange(len(edge), dtype=np.float64)
    release = RELEASE_DB_PER_S * frame / rate
    attack = ATTACK_DB_PER_S * frame / rate
    # b[k] = min(edge[k], b[k-1] + release), then b[k] = min(b[k], b[k+1] + attack).
    held = release * k + np.minimum.accumulate(edge - release * k)
    ramped = (attack * k + np.minimum.accumulate(held[::-1] - attack * k))[::-1]
    return np.asarray(10 ** (ramped / 20))

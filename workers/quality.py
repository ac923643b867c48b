"""Measurements of a finished job's audio, recorded on the job (`quality`) and in metrics."""

from __future__ import annotations

from pathlib import Path

# Enough speech for a stable speaker embedding; longer outputs are not read past this.
MAX_SECONDS = 30.0


def similarity_to(wav_path: Path, embedding: list[float]) -> float:
    """Cosine similarity between the speaker embedding of `wav_path` and `embedding` (the
    voice's, from the same encoder), in [-1, 1]."""
    import soundfile

    from workers.voices import embed, similarity

    info = soundfile.info(str(wav_path))
    frames = int(min(info.frames, MAX_SECONDS * info.samplerate))
    samples, rate = soundfile.read(str(wav_path), frames=frames, dtype="float32", always_2d=True)
    return similarity(embed(samples.mean(axis=1), int(rate)), embedding)

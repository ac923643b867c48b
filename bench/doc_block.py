"""The generated blocks of docs/BENCHMARKS.md: each bench's `--write` replaces what stands
between its markers and keeps the prose around them, or appends a section holding the block."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"


def markers(bench: str) -> tuple[str, str]:
    """The begin and end markers of `bench`'s block (`bench` is its file name: admission.py)."""
    return f"<!-- bench/{bench}:begin -->", f"<!-- bench/{bench}:end -->"


def write_block(bench: str, block: str, heading: str) -> None:
    """Put `block` (markers included) in place of `bench`'s block, or under a new `heading`."""
    begin, end = markers(bench)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n" + block + "\n"
    DOC.write_text(text)

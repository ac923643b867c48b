"""Device and precision. Nothing here touches CUDA in a process that will fork (DESIGN traps)."""

from __future__ import annotations

import shutil
import subprocess
import sys

from core.settings import Settings


def visible_gpus(settings: Settings) -> list[str]:
    """GPU indices for the supervisor, read without initialising CUDA in this process."""
    if settings.device == "cpu":
        return []
    if settings.gpus is not None:
        return [g.strip() for g in settings.gpus.split(",") if g.strip()]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def resolve(settings: Settings) -> tuple[str, str]:
    """(device, dtype) for this worker process; called after the process has started."""
    if settings.device == "cpu":
        return "cpu", "fp32"
    import torch

    if torch.cuda.is_available():
        return "cuda", settings.precision if settings.precision in ("fp16", "fp32") else "fp16"
    if settings.device == "cuda":
        raise RuntimeError("VOICEFARM_DEVICE=cuda but torch sees no CUDA device")
    return "cpu", "fp32"


def is_oom(exc: BaseException) -> bool:
    """A CUDA out-of-memory error, recognised by type, never by message text."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError)


def free_cuda_cache() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def gpu_memory_bytes() -> tuple[int, int] | None:
    """(allocated, reserved) on the current device, or None without CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return int(torch.cuda.memory_allocated()), int(torch.cuda.memory_reserved())

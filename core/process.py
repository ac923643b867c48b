"""Process lifetime helpers shared by the supervisors (workers/supervisor.py, api/serve.py)."""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send `sig` to this process when its parent dies, so no child outlives a
    supervisor killed with SIGKILL (or the OOM killer) and keeps a port or a GPU. Elsewhere it
    does nothing."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig)
    except OSError:
        return
    if os.getppid() != parent:  # the parent died before the request: nobody will signal
        os.kill(os.getpid(), sig)

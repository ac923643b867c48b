"""The garbage collector and long-lived processes (the API's and the workers')."""

from __future__ import annotations

import gc

_frozen = False


def freeze_startup_objects() -> int:
    """Move every object alive now out of the collector's sight, once startup is done (modules,
    models, clients, an engine's weights' Python objects): they live as long as the process, and
    a full collection then walks only what was made since. Measured under the admission bench,
    each gen-2 collection of an API process walked about 130,000 startup objects in 110-170 ms
    with the GIL held, and every request in flight waited for it; frozen, about 12 ms. Returns
    how many objects were frozen."""
    global _frozen
    if not _frozen:  # once per process: a test process starts many apps
        _frozen = True
        gc.collect()
        gc.freeze()
    return gc.get_freeze_count()

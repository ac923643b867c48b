"""`batches.concatenate`: join a complete batch's audio, in item order, into one WAV.

Streaming with flat memory: each item's WAV is read block by block and appended to one
temporary file (soundfile), which is then uploaded to `batches/<tenant>/<id>/all.wav`. Every item
must have the same sample rate; otherwise the batch's audio fails with a message saying so.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from pathlib import Path

import soundfile as sf

from core.enums import TaskName
from core.settings import get_settings
from core.storage import Storage, get_storage
from db import batches as bq
from db.models import Batch
from db.session import session_scope
from tasks.app import celery_app

log = logging.getLogger("voicefarm.batches")
BLOCK = 65536


def batch_audio_key(tenant_id: uuid.UUID | str, batch_id: uuid.UUID | str) -> str:
    return f"batches/{tenant_id}/{batch_id}/all.wav"


@celery_app.task(name=TaskName.concatenate_batch.value, ignore_result=True)
def concatenate(batch_id: str) -> None:
    settings = get_settings()
    bid = uuid.UUID(batch_id)
    with session_scope(settings.database_url) as s:
        batch = bq.claim_concatenation(s, bid)
        if batch is None:
            return  # done, failed or taken by a duplicate message
        tenant_id = batch.tenant_id
    storage = get_storage(settings)
    key = batch_audio_key(tenant_id, bid)
    status, error, duration = "ready", None, None
    try:
        with tempfile.TemporaryDirectory(prefix="vf-batch-") as tmp:
            out = Path(tmp) / "all.wav"
            duration = _join(settings.database_url, bid, storage, Path(tmp), out)
            storage.put_file(key, out, "audio/wav")
    except Exception as exc:
        status, error = "failed", f"{type(exc).__name__}: {exc}"[:500]
        log.warning("event=batches.concatenate_failed batch=%s error=%s", bid, error)
    with session_scope(settings.database_url) as s:
        row = s.get(Batch, bid, populate_existing=True)
        if row is not None:
            row.audio_status = status
            row.audio_error = error
            row.audio_key = key if status == "ready" else None
            row.audio_duration_s = duration
    log.info("event=batches.concatenated batch=%s status=%s duration_s=%s", bid, status, duration)


def _join(database_url: str, bid: uuid.UUID, storage: Storage, tmp: Path, out: Path) -> float:
    writer: sf.SoundFile | None = None
    frames = 0
    rate = 0
    try:
        for item in bq.iter_items(database_url, bid):
            if not item.result_key:
                raise RuntimeError(f"item {item.batch_index} has no audio")
            part = tmp / "item.wav"
            with part.open("wb") as fh:  # one item at a time on disk, never in memory
                for chunk in storage.iter_bytes(item.result_key):
                    fh.write(chunk)
            with sf.SoundFile(part) as src:
                if writer is None:
                    rate = src.samplerate
                    writer = sf.SoundFile(out, "w", rate, 1, subtype="PCM_16", format="WAV")
                if src.samplerate != rate:
                    raise RuntimeError(
                        f"item {item.batch_index} is at {src.samplerate} Hz, the first at {rate}"
                    )
                for block in src.blocks(blocksize=BLOCK, dtype="float32", always_2d=True):
                    writer.write(block.mean(axis=1))
                    frames += len(block)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise RuntimeError("the batch has no items")
    return frames / rate

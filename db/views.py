"""The public shape of a job: one function, used by API responses and webhook payloads alike."""

from __future__ import annotations

from typing import Any

from core.engines import BIT_DEPTHS, content_type
from db.models import Job


def iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def job_view(job: Job, base_url: str) -> dict[str, Any]:
    base = base_url.rstrip("/")
    self_url = f"{base}/v1/jobs/{job.id}"
    result = None
    if job.status == "succeeded" and job.result_key:
        result = {
            "url": f"{self_url}/audio",
            "format": job.result_format,
            "content_type": content_type(job.result_format or ""),
            "bit_depth": job.bit_depth if job.result_format in BIT_DEPTHS else None,
            "sample_rate": job.result_sample_rate,
            "duration_s": job.result_duration_s,
            "bytes": job.result_bytes,
            "sha256": job.result_sha256,
        }
    error = None
    if job.error_code:
        error = {"code": job.error_code, "message": job.error_message or ""}
    return {
        "id": str(job.id),
        "tenant_id": str(job.tenant_id),
        "status": job.status,
        "engine": job.engine,
        "voice": job.voice,
        "mode": job.mode,
        "voice_id": None if job.voice_id is None else str(job.voice_id),
        "language": job.language,
        "instruction": job.instruction,
        "format": job.format,
        "priority": job.priority,
        "metadata": job.metadata_ or {},
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "progress": {
            "segments_done": job.segments_done,
            "segments_total": job.segments_total,
        },
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "error": error,
        "result": result,
        "quality": job.quality,
        "links": {
            "self": self_url,
            "cancel": f"{self_url}/cancel",
            "audio": f"{self_url}/audio",
            "timings": f"{self_url}/timings" if result and job.timings_key else None,
            "subtitles": f"{self_url}/subtitles" if result and job.subtitles_key else None,
        },
    }

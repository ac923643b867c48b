"""The one error family: each error carries its HTTP status and a stable machine code."""

from __future__ import annotations

from typing import ClassVar


class VoicefarmError(Exception):
    """Base class. Subclasses set `status_code` and `code`; the message is for a person."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(
        self, message: str, *, field: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        # Seconds; sent as `Retry-After` (503 and 429 answers carry one).
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}

    def to_body(self) -> dict[str, dict[str, str]]:
        err = {"code": self.code, "message": self.message}
        if self.field:
            err["field"] = self.field
        return {"error": err}


class ValidationFailed(VoicefarmError):
    status_code = 422
    code = "validation_failed"


class TextEmpty(VoicefarmError):
    status_code = 422
    code = "text_empty"


class TextTooLong(VoicefarmError):
    status_code = 422
    code = "text_too_long"


class MarkupInvalid(VoicefarmError):
    status_code = 422
    code = "markup_invalid"


class UnknownEngine(VoicefarmError):
    status_code = 422
    code = "unknown_engine"


class UnknownVoice(VoicefarmError):
    status_code = 422
    code = "unknown_voice"


class UnsupportedMode(VoicefarmError):
    status_code = 422
    code = "unsupported_mode"


class VoiceRequired(VoicefarmError):
    status_code = 422
    code = "voice_required"


class VoiceNotReady(VoicefarmError):
    status_code = 422
    code = "voice_not_ready"


class VoiceUnusable(VoicefarmError):
    """A prompt recording sent inline (/api/predict) that the voice checks refused."""

    status_code = 422
    code = "voice_unusable"


class VoiceNotFound(VoicefarmError):
    status_code = 404
    code = "voice_not_found"


class VoiceInUse(VoicefarmError):
    """Queued or running jobs speak with this voice: it cannot be deleted until they finish."""

    status_code = 409
    code = "voice_in_use"


class UnsupportedMediaType(VoicefarmError):
    status_code = 415
    code = "unsupported_media_type"


class AudioMissing(VoicefarmError):
    status_code = 422
    code = "audio_missing"


class AudioEmpty(VoicefarmError):
    status_code = 422
    code = "audio_empty"


class UnknownLanguage(VoicefarmError):
    status_code = 422
    code = "unknown_language"


class UnsupportedFormat(VoicefarmError):
    status_code = 422
    code = "unsupported_format"


class WebhookUrlInvalid(VoicefarmError):
    status_code = 422
    code = "webhook_url_invalid"


class WebhookUrlForbidden(VoicefarmError):
    status_code = 422
    code = "webhook_url_forbidden"


class IdempotencyConflict(VoicefarmError):
    status_code = 409
    code = "idempotency_key_reused"


class Unauthorized(VoicefarmError):
    status_code = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str]:
        # RFC 9110 15.5.2: a 401 names the scheme the client should use.
        return {**super().headers(), "WWW-Authenticate": 'Bearer realm="voicefarm"'}


class TooManyAuthFailures(VoicefarmError):
    """Too many failed authentications from one client address; carries Retry-After."""

    status_code = 429
    code = "too_many_auth_failures"


class RequestTooLarge(VoicefarmError):
    status_code = 413
    code = "request_too_large"


class JobNotFound(VoicefarmError):
    status_code = 404
    code = "job_not_found"


class JobNotCancelable(VoicefarmError):
    status_code = 409
    code = "job_not_cancelable"


class AudioNotReady(VoicefarmError):
    status_code = 409
    code = "audio_not_ready"


class SubtitlesNotRequested(VoicefarmError):
    status_code = 404
    code = "subtitles_not_requested"


class TimingsNotAvailable(VoicefarmError):
    """A job that succeeded before timings were stored has none."""

    status_code = 404
    code = "timings_not_available"


class AudioGone(VoicefarmError):
    """The job succeeded but its stored object is gone (deleted or lost): submit it again."""

    status_code = 410
    code = "audio_gone"


class InvalidCursor(VoicefarmError):
    status_code = 400
    code = "invalid_cursor"


class ServiceUnavailable(VoicefarmError):
    status_code = 503
    code = "service_unavailable"


class TooManyWaiting(VoicefarmError):
    status_code = 429
    code = "too_many_waiting"


class QuotaExceeded(VoicefarmError):
    """A tenant limit (active jobs, jobs per minute, characters per day, voices) would be passed.
    The message names the limit and its value; `Retry-After` says when the request would pass."""

    status_code = 429
    code = "quota_exceeded"


class StorageError(VoicefarmError):
    status_code = 502
    code = "storage_error"


class BatchInvalid(VoicefarmError):
    """Some items of a batch failed admission: nothing was written. `items` lists the first
    failures as {index, code, message, field}."""

    status_code = 422
    code = "batch_invalid"

    def __init__(self, message: str, items: list[dict[str, object]]) -> None:
        super().__init__(message, field="items")
        self.items = items


class BatchNotFound(VoicefarmError):
    status_code = 404
    code = "batch_not_found"


class BatchNotCancelable(VoicefarmError):
    status_code = 409
    code = "batch_not_cancelable"


class BatchAudioNotRequested(VoicefarmError):
    """The batch was submitted without `concatenate: true`."""

    status_code = 404
    code = "batch_audio_not_requested"


class DeliveryNotFound(VoicefarmError):
    status_code = 404
    code = "delivery_not_found"


class DeliveryInFlight(VoicefarmError):
    """The delivery is being attempted right now; replay it once this attempt is recorded."""

    status_code = 409
    code = "delivery_in_flight"


class WebhookEndpointNotDisabled(VoicefarmError):
    status_code = 404
    code = "webhook_endpoint_not_disabled"


class RequestRejected(ValueError):
    """Raised by an engine that cannot serve a request as asked (unknown voice, ...). Not an
    HTTP error: retrying is useless, so the worker fails the job at once with `invalid_input`."""

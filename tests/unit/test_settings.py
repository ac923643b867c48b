import pytest
from pydantic import ValidationError

from core.settings import Settings


def test_production_refuses_development_secrets() -> None:
    with pytest.raises(ValidationError, match="WEBHOOK_SECRET"):
        Settings(environment="production")


def test_webhook_secret_must_be_whsec() -> None:
    with pytest.raises(ValidationError, match="whsec_"):
        Settings(webhook_secret="plain")
    with pytest.raises(ValidationError, match="whsec_"):
        Settings(webhook_secret="whsec_not*base64!")
    with pytest.raises(ValidationError, match="16"):
        Settings(webhook_secret="whsec_c2hvcnQ=")


def test_the_test_environment_has_timings_that_agree() -> None:
    """tests/conftest.py sets VOICEFARM_* variables; the rest are defaults."""
    settings = Settings()
    assert settings.lease_seconds == 30 and settings.reconcile_interval_seconds == 1


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (
            {"job_deadline_seconds": 7100, "worker_hang_seconds": 180},
            ["VISIBILITY_TIMEOUT_SECONDS=7200", "JOB_DEADLINE_SECONDS=7100"],
        ),
        ({"lease_seconds": 2, "reconcile_interval_seconds": 5}, ["LEASE_SECONDS=2"]),
        (
            {"worker_hang_seconds": 20, "worker_heartbeat_seconds": 10},
            ["WORKER_HANG_SECONDS=20", "WORKER_HEARTBEAT_SECONDS=10"],
        ),
        (
            {"segment_max_chars": 400, "segment_seconds_per_char": 1, "job_deadline_seconds": 300},
            ["SEGMENT_MAX_CHARS=400", "= 400 s", "JOB_DEADLINE_SECONDS=300"],
        ),
    ],
)
def test_timing_settings_that_cannot_work_together_are_refused(
    overrides: dict[str, float], names: list[str]
) -> None:
    with pytest.raises(ValidationError, match="timing settings disagree") as info:
        Settings(**overrides)
    for name in names:
        assert name in str(info.value)


def test_every_timing_problem_is_reported_at_once() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(lease_seconds=1, reconcile_interval_seconds=2, worker_heartbeat_seconds=100)
    assert "LEASE_SECONDS" in str(info.value) and "HEARTBEAT_SECONDS" in str(info.value)

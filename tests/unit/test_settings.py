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

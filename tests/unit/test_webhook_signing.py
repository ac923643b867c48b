import base64

import pytest

from core.errors import WebhookUrlForbidden, WebhookUrlInvalid
from core.webhooks import check_webhook_url, retry_delay, sign, verify
from tasks.webhooks import parse_retry_after

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def test_signature_matches_standard_webhooks_reference_vector() -> None:
    # The example from the Standard Webhooks spec's reference libraries.
    sig = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_verify_accepts_own_signature_and_rejects_tampering() -> None:
    header = sign(SECRET, "msg_1", 1700000000, b"{}")
    assert verify(SECRET, "msg_1", 1700000000, b"{}", header)
    assert verify(SECRET, "msg_1", 1700000000, b"{}", "v1,bogus " + header)
    assert not verify(SECRET, "msg_1", 1700000000, b"{ }", header)
    assert not verify(SECRET, "msg_2", 1700000000, b"{}", header)


def test_retry_schedule_with_jitter_and_end() -> None:
    schedule = (0, 5, 300)
    assert retry_delay(schedule, 1, 0) == 0
    assert retry_delay(schedule, 2, 0) == 5
    assert 270 <= (retry_delay(schedule, 3, 0.1) or 0) <= 330
    assert retry_delay(schedule, 4, 0) is None


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("120") == 120
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0  # in the past


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://localhost:8080/",
        "http://10.1.2.3/",
        "http://192.168.0.5/",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://metadata.internal/",
        # IPv6 addresses that carry an IPv4 one: decided on the IPv4 address inside.
        "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
        "http://[64:ff9b:1::a00:1]/",  # local-use NAT64 of 10.0.0.1
        "http://[2002:a9fe:a9fe::]/",  # 6to4 of 169.254.169.254
        "http://[2002:7f00:1::1]/",  # 6to4 of 127.0.0.1
        "http://[::127.0.0.1]/",  # IPv4-compatible
        "http://[::a9fe:a9fe]/",
        "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",  # Teredo
    ],
)
def test_private_targets_are_refused_by_default(url: str) -> None:
    with pytest.raises(WebhookUrlForbidden):
        check_webhook_url(url, allow_private=False)
    assert check_webhook_url(url, allow_private=True) == url


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "not a url",
        "http://",
        "https://user:pw@example.com/",
        "http://example.com:99999/",
        "https://example.com/" + "a" * 3000,
    ],
)
def test_malformed_urls_are_invalid(url: str) -> None:
    with pytest.raises(WebhookUrlInvalid):
        check_webhook_url(url, allow_private=True)


def test_public_ip_literal_is_allowed() -> None:
    assert check_webhook_url("https://93.184.216.34/hook", allow_private=False)


def test_pinned_request_connects_to_the_checked_address_with_original_host_and_sni() -> None:
    from core.webhooks import Target, pinned_request

    url, headers, ext = pinned_request(
        Target("https://hooks.example.com:8443/a?b=1", "93.184.216.34")
    )
    assert url == "https://93.184.216.34:8443/a?b=1"
    assert headers == {"host": "hooks.example.com:8443"}
    assert ext == {"sni_hostname": "hooks.example.com"}
    url6, _, _ = pinned_request(Target("http://h.example/x", "2606:2800:220:1::1"))
    assert url6 == "http://[2606:2800:220:1::1]/x"
    assert pinned_request(Target("http://127.0.0.1/x")) == ("http://127.0.0.1/x", {}, {})


def test_public_ip_literal_is_pinned_to_itself() -> None:
    from core.webhooks import resolve_webhook_target

    target = resolve_webhook_target("https://93.184.216.34/hook", allow_private=False)
    assert target.address == "93.184.216.34"


def test_pinned_request_sends_idn_hosts_in_ascii() -> None:
    from core.webhooks import Target, pinned_request

    url, headers, ext = pinned_request(Target("https://bücher.example:8443/h", "93.184.216.34"))
    assert url == "https://93.184.216.34:8443/h"
    assert headers == {"host": "xn--bcher-kva.example:8443"}
    assert ext == {"sni_hostname": "xn--bcher-kva.example"}


@pytest.mark.parametrize(
    "url",
    ["http://[64:ff9b::808:808]/hook", "http://[2002:808:808::1]/", "http://[2606:4700::1111]/"],
)
def test_ipv6_with_a_public_ipv4_inside_is_allowed(url: str) -> None:
    assert check_webhook_url(url, allow_private=False) == url

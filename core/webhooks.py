"""Standard Webhooks signing and the webhook-URL policy (SSRF guard), shared by API and tasks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import random
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from core.errors import WebhookUrlForbidden, WebhookUrlInvalid

MAX_URL_LENGTH = 2048


def secret_bytes(secret: str) -> bytes:
    """`whsec_<base64>` -> key bytes, as the Standard Webhooks libraries read it."""
    body = secret.removeprefix("whsec_")
    return base64.b64decode(body)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,<base64 HMAC-SHA256 of id.timestamp.body>`."""
    to_sign = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), to_sign, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, msg_id: str, timestamp: int, body: bytes, header: str) -> bool:
    expected = sign(secret, msg_id, timestamp, body).split(",", 1)[1]
    for part in header.split():
        version, _, sig = part.partition(",")
        if version == "v1" and hmac.compare_digest(sig, expected):
            return True
    return False


def retry_delay(schedule: tuple[float, ...], attempt: int, jitter: float) -> float | None:
    """Seconds to wait before attempt `attempt` (1-based), or None when the schedule is spent."""
    if attempt > len(schedule):
        return None
    base = schedule[attempt - 1]
    return max(0.0, base * (1 + random.uniform(-jitter, jitter)))


_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and a router or the kernel may deliver to:
    IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d), NAT64 (RFC 6052, 64:ff9b::/96 and
    the local-use 64:ff9b:1::/48), 6to4 (2002:aabb:ccdd::) and Teredo (2001:0::/32)."""
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    value = int(ip)
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    if value >> 32 == 0 and value > 1:  # ::a.b.c.d (not :: or ::1, which are v6 themselves)
        return ipaddress.IPv4Address(value)
    return None


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            # Decide on the IPv4 address the packet really goes to (a NAT64 prefix is "global"
            # to the ipaddress module, 169.254.169.254 behind it is not).
            return _is_public(inner)
    return ip.is_global and not ip.is_multicast


def check_webhook_url(url: str, *, allow_private: bool, resolve: bool = True) -> str:
    """Validate a webhook target and return it (see `resolve_webhook_target`)."""
    resolve_webhook_target(url, allow_private=allow_private, resolve=resolve)
    return url


@dataclass(frozen=True)
class Target:
    url: str
    # Set when the address was checked: connect to exactly this one (no second DNS lookup).
    address: str | None = None


def pinned_request(target: Target) -> tuple[str, dict[str, str], dict[str, str]]:
    """(url, extra headers, httpx extensions) that connect to the checked address while keeping
    the Host header and the TLS server name (SNI and certificate check) of the original URL.
    This closes the DNS-rebinding gap between the check and the connection."""
    if target.address is None:
        return target.url, {}, {}
    parts = urlsplit(target.url)
    host = (parts.hostname or "").encode("idna").decode("ascii")  # bücher.example -> xn--...
    ip = ipaddress.ip_address(target.address)
    literal = f"[{ip}]" if ip.version == 6 else str(ip)
    port = "" if parts.port is None else f":{parts.port}"
    url = urlunsplit(parts._replace(netloc=literal + port))
    return url, {"host": host + port}, {"sni_hostname": host}


def resolve_webhook_target(url: str, *, allow_private: bool, resolve: bool = True) -> Target:
    """Validate a webhook target; refuse loopback, private and link-local unless allowed.

    `resolve` looks the host up so a public name that points at 127.0.0.1 is refused too; the
    delivery task checks again right before connecting (DNS can change in between).
    """
    if len(url) > MAX_URL_LENGTH:
        raise WebhookUrlInvalid(f"webhook_url is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        if parts.hostname:
            parts.hostname.encode("idna")  # refuses empty or over-long labels
    except (ValueError, UnicodeError) as exc:
        raise WebhookUrlInvalid(
            f"webhook_url is not a valid URL: {exc}", field="webhook_url"
        ) from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookUrlInvalid(
            "webhook_url must be an absolute http(s) URL, e.g. https://example.com/hooks",
            field="webhook_url",
        )
    if parts.username or parts.password:
        raise WebhookUrlInvalid("webhook_url must not carry credentials", field="webhook_url")
    try:
        port = parts.port
    except ValueError as exc:
        raise WebhookUrlInvalid(f"webhook_url has a bad port: {exc}", field="webhook_url") from exc
    if allow_private:
        return Target(url)
    host = parts.hostname
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
            raise WebhookUrlForbidden(
                f"webhook_url host {host!r} is not public", field="webhook_url"
            ) from None
        if not resolve:
            return Target(url)
        try:
            infos = socket.getaddrinfo(host, port or 443, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError, ValueError) as exc:
            raise WebhookUrlInvalid(
                f"webhook_url host {host!r} does not resolve", field="webhook_url"
            ) from exc
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if not all(_is_public(a) for a in addresses):
        raise WebhookUrlForbidden(
            f"webhook_url points at a private, loopback or link-local address ({host}); "
            "set VOICEFARM_WEBHOOK_ALLOW_PRIVATE=true to allow it",
            field="webhook_url",
        )
    return Target(url, str(addresses[0]))

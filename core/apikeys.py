"""API key format: `vf_<prefix>_<secret>`, of which only the prefix and a hash are stored.

The prefix (8 characters) identifies the key in lists and is the lookup index; the secret is 32
random bytes (256 bits, 43 URL-safe characters). A key is checked by looking its prefix up and
comparing sha256(whole key) with the stored hash in constant time.

Why a plain sha256 and not bcrypt/argon2: a slow KDF protects low-entropy secrets (passwords)
against guessing from a stolen hash. A 256-bit random secret cannot be guessed however fast the
hash is, and a fast hash keeps authentication cheap on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

PREFIX_CHARS = 8
_PREFIX_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_KEY = re.compile(r"^vf_([a-z0-9]{8})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class NewKey:
    key: str  # shown to the operator once, never stored
    prefix: str
    key_hash: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate() -> NewKey:
    prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(PREFIX_CHARS))
    key = f"vf_{prefix}_{secrets.token_urlsafe(32)}"
    return NewKey(key, prefix, hash_key(key))


def prefix_of(key: str) -> str | None:
    """The prefix of a well-formed key; None for anything else (never looked up)."""
    match = _KEY.match(key)
    return match.group(1) if match else None


def matches(key: str, key_hash: str) -> bool:
    return hmac.compare_digest(hash_key(key).encode(), key_hash.encode())

"""Who an API key belongs to, from the API's event loop (api/auth.py, on every request with auth
on): one statement on db/aio.py's pools, a second only when `last_used_at` is due, with no thread
hop and no session. A revoked key fails on its next request: nothing is cached.

Timing: an unknown prefix hashes as a wrong secret does, and the secret is compared in constant
time (core/apikeys.py).
"""

from __future__ import annotations

import logging

import asyncpg

from core import apikeys
from db.aio import DatabaseUnavailable, fetchrow, plain
from db.tenants import LAST_USED_RESOLUTION, Authenticated

log = logging.getLogger("voicefarm.api")

_LOOKUP = (
    "SELECT k.id, k.tenant_id, k.scope, k.key_hash, k.revoked_at IS NOT NULL AS revoked, "
    "(k.last_used_at IS NULL OR k.last_used_at < now() - $2::interval) AS due, t.name "
    "FROM api_keys AS k LEFT JOIN tenants AS t ON t.id = k.tenant_id WHERE k.prefix = $1"
)
# At most once per LAST_USED_RESOLUTION per key, whichever process or request gets there first.
_TOUCH = (
    "UPDATE api_keys SET last_used_at = now() WHERE id = $1 "
    "AND (last_used_at IS NULL OR last_used_at < now() - $2::interval)"
)


async def authenticate(database_url: str, key: str) -> Authenticated | None:
    """Who `key` belongs to; None for a malformed, unknown, wrong or revoked key. Raises
    db.aio.DatabaseUnavailable when PostgreSQL cannot answer."""
    prefix = apikeys.prefix_of(key)
    if prefix is None:
        return None
    row = await fetchrow(database_url, _LOOKUP, prefix, LAST_USED_RESOLUTION)
    if row is None:
        apikeys.matches(key, "0" * 64)  # same work as a wrong secret
        return None
    if not apikeys.matches(key, row["key_hash"]) or row["revoked"]:
        return None
    if row["due"]:
        try:
            await fetchrow(database_url, _TOUCH, row["id"], LAST_USED_RESOLUTION)
        except (DatabaseUnavailable, asyncpg.PostgresError) as exc:
            # A bookkeeping write: the key is valid whether or not it is recorded this minute.
            log.warning("event=api.key_last_used_failed error=%s", type(exc).__name__)
    return Authenticated(plain(row["tenant_id"]), row["name"], row["scope"])

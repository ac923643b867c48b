"""Who an API key belongs to, from the API's event loop (api/auth.py, on every request with auth
on): one statement on db/aio.py's pools, a second only when `last_used_at` is due, with no thread
hop and no session. A revoked key fails on its next request: nothing is cached. Lookups made
while one is on its way go together in the next statement (db/aio.py `Grouped`): it is sent
after every one of them was asked, so none reads older rows than a statement of its own would.

Timing: an unknown prefix hashes as a wrong secret does, and the secret is compared in constant
time (core/apikeys.py).
"""

from __future__ import annotations

import logging

import asyncpg

from core import apikeys
from db.aio import DatabaseUnavailable, Grouped, Waiting, fetch, fetchrow, plain
from db.tenants import LAST_USED_RESOLUTION, Authenticated

log = logging.getLogger("voicefarm.api")

_LOOKUP = (
    "SELECT k.prefix, k.id, k.tenant_id, k.scope, k.key_hash, k.revoked_at IS NOT NULL AS revoked, "
    "(k.last_used_at IS NULL OR k.last_used_at < now() - $2::interval) AS due, t.name "
    "FROM api_keys AS k LEFT JOIN tenants AS t ON t.id = k.tenant_id "
    "WHERE k.prefix = ANY($1::VARCHAR[])"
)
MAX_GROUP = 64
# At most once per LAST_USED_RESOLUTION per key, whichever process or request gets there first.
_TOUCH = (
    "UPDATE api_keys SET last_used_at = now() WHERE id = $1 "
    "AND (last_used_at IS NULL OR last_used_at < now() - $2::interval)"
)


async def _lookup(database_url: str, group: list[Waiting[str]]) -> None:
    """The keys of `group` (whole keys) in one statement; each waiting caller gets (row, due),
    `due` only for the first caller in the group whose key is right, so one touches
    `last_used_at` (a wrong secret on the same prefix does not take it)."""
    prefixes = [apikeys.prefix_of(w.item) or "" for w in group]
    rows = await fetch(database_url, _LOOKUP, list(set(prefixes)), LAST_USED_RESOLUTION)
    by_prefix = {row["prefix"]: row for row in rows}
    touched: set[str] = set()
    for w, prefix in zip(group, prefixes, strict=True):
        row = by_prefix.get(prefix)
        if row is None:
            w.settle(None)
            continue
        due = (
            bool(row["due"]) and prefix not in touched and apikeys.matches(w.item, row["key_hash"])
        )
        if due:
            touched.add(prefix)
        w.settle((row, due))


_lookups: Grouped[str] = Grouped(_lookup, MAX_GROUP)


async def authenticate(database_url: str, key: str) -> Authenticated | None:
    """Who `key` belongs to; None for a malformed, unknown, wrong or revoked key. Raises
    db.aio.DatabaseUnavailable when PostgreSQL cannot answer."""
    prefix = apikeys.prefix_of(key)
    if prefix is None:
        return None
    found = await _lookups(database_url, key)
    if found is None:
        apikeys.matches(key, "0" * 64)  # same work as a wrong secret
        return None
    row, due = found
    if not apikeys.matches(key, row["key_hash"]) or row["revoked"]:
        return None
    if due:
        try:
            await fetchrow(database_url, _TOUCH, row["id"], LAST_USED_RESOLUTION)
        except (DatabaseUnavailable, asyncpg.PostgresError) as exc:
            # A bookkeeping write: the key is valid whether or not it is recorded this minute.
            log.warning("event=api.key_last_used_failed error=%s", type(exc).__name__)
    return Authenticated(plain(row["tenant_id"]), row["name"], row["scope"])

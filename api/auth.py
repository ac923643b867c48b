"""Who is calling: a tenant key, an admin key, or (auth switched off) the default tenant.

`Authorization: Bearer vf_<prefix>_<secret>` (core/apikeys.py). Failed attempts are counted per
client address in Redis, so the limit holds across API processes: past
VOICEFARM_AUTH_FAILURES_PER_MINUTE in the current minute, every request from that address is a
429 `too_many_auth_failures` with Retry-After until the minute ends. Redis being down never
fails a request: the limiter then lets everything through (fails open) and logs it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from api import errors
from api.settings import current_settings
from core.errors import TooManyAuthFailures, Unauthorized
from core.settings import Settings
from db import keys
from db import tenants as tq
from db.aio import DatabaseUnavailable
from db.models import DEFAULT_TENANT_ID

log = logging.getLogger("voicefarm.api")
WINDOW_SECONDS = 60
REDIS_TIMEOUT_SECONDS = 0.5
REDIS_MAX_CONNECTIONS = 32


@dataclass(frozen=True)
class Caller:
    """The tenant a request acts for. Jobs and voices it creates belong to `tenant_id`; an admin
    key creates as the default tenant and reads or cancels every tenant's rows."""

    tenant_id: uuid.UUID
    scope: str
    tenant_name: str = "default"

    @property
    def is_admin(self) -> bool:
        return self.scope == tq.SCOPE_ADMIN

    @property
    def sees(self) -> uuid.UUID | None:
        """The tenant every read is limited to; None: all of them (admin)."""
        return None if self.is_admin else self.tenant_id


DEFAULT_CALLER = Caller(DEFAULT_TENANT_ID, tq.SCOPE_TENANT)


def _client(request: Request) -> str:
    # The peer address. Behind a proxy every client shares the proxy's address: run the API
    # with --forwarded-allow-ips=<proxy> so this is the client's own (docs/SECURITY.md).
    return request.client.host if request.client else "unknown"


# The limiter's Redis client: one per event loop (redis.asyncio binds its connections to the
# loop), made on first use in the process that serves (house rule 5), closed by the lifespan.
_clients: dict[tuple[str, asyncio.AbstractEventLoop], Any] = {}


def _redis(settings: Settings) -> Any:
    loop = asyncio.get_running_loop()
    client = _clients.get((settings.redis_url, loop))
    if client is None:
        import redis.asyncio

        for key in [k for k in _clients if k[1].is_closed()]:  # loops gone (tests' clients)
            del _clients[key]
        client = _clients[(settings.redis_url, loop)] = redis.asyncio.Redis.from_url(
            settings.redis_url,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            # Bounded: a flood of requests must not open a Redis connection each; past the
            # bound a request's check fails open, as when Redis is down.
            max_connections=REDIS_MAX_CONNECTIONS,
        )
    return client


async def close_clients() -> None:
    """Close this event loop's limiter clients (the app's lifespan, at shutdown)."""
    loop = asyncio.get_running_loop()
    for key in [k for k in _clients if k[1] is loop]:
        await _clients.pop(key).aclose()


def _window() -> tuple[int, int]:
    now = time.time()
    return int(now // WINDOW_SECONDS), WINDOW_SECONDS - int(now % WINDOW_SECONDS)


async def _failures(settings: Settings, client: str, add: bool) -> int:
    """Failures from `client` this minute (after adding one when `add`); 0 when Redis is down."""
    window, _ = _window()
    key = f"voicefarm:authfail:{client}:{window}"
    try:
        r = _redis(settings)
        if not add:
            return int(await r.get(key) or 0)
        async with r.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, WINDOW_SECONDS * 2)
            counted = await pipe.execute()
        return int(counted[0])
    except Exception as exc:  # redis errors, timeouts: fail open, never a 500
        log.warning("event=api.auth_limiter_unavailable error=%s", type(exc).__name__)
        return 0


async def get_caller(request: Request) -> Caller:
    """The caller of a request (every router but health's depends on it).

    Settings and the Authorization header are read here rather than declared as dependencies:
    FastAPI solves a dependency's own dependencies on every use, before it looks in its
    per-request cache, so each declared one cost every route a few dozen microseconds of
    CPU twice over (the router's and the route's CallerDep; docs/BENCHMARKS.md, Admission)."""
    settings = await current_settings(request)
    if not settings.auth_enabled:
        return DEFAULT_CALLER
    # In the event loop, no thread hop: a Redis GET for the address's failures and one
    # statement for the key (db/keys.py), both async.
    client = _client(request)
    limit = settings.auth_failures_per_minute
    if await _failures(settings, client, add=False) >= limit:
        raise TooManyAuthFailures(
            f"too many failed authentications from this address; retry in {_window()[1]} s",
            retry_after=_window()[1],
        )
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    who = None
    if scheme.lower() == "bearer" and token:
        try:
            who = await keys.authenticate(settings.database_url, token)
        except DatabaseUnavailable:
            raise errors.database_unavailable() from None
    if who is None:
        failures = await _failures(settings, client, add=True)
        log.info("event=api.auth_failed client=%s failures=%d", client, failures)
        raise Unauthorized("send a valid API key as `Authorization: Bearer <key>`")
    if who.tenant_id is None:
        return Caller(DEFAULT_TENANT_ID, tq.SCOPE_ADMIN)
    return Caller(who.tenant_id, who.scope, who.tenant_name or "")

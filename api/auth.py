"""Who is calling: a tenant key, an admin key, or (auth switched off) the default tenant.

`Authorization: Bearer vf_<prefix>_<secret>` (core/apikeys.py). Failed attempts are counted per
client address in Redis, so the limit holds across API processes: past
VOICEFARM_AUTH_FAILURES_PER_MINUTE in the current minute, every request from that address is a
429 `too_many_auth_failures` with Retry-After until the minute ends. Redis being down never
fails a request: the limiter then lets everything through (fails open) and logs it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fastapi import Request

from api.settings import current_settings
from api.threads import in_thread
from core.errors import TooManyAuthFailures, Unauthorized
from core.settings import Settings
from db import tenants as tq
from db.models import DEFAULT_TENANT_ID
from db.session import session_scope

log = logging.getLogger("voicefarm.api")
WINDOW_SECONDS = 60
REDIS_TIMEOUT_SECONDS = 0.5


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


_REDIS_LOCK = threading.Lock()


def _redis(settings: Settings) -> Any:
    """The process's client (and connection pool) for the limiter, made on first use (house
    rule 5): a client per request opened a TCP connection per request. Locked like
    db.session.get_engine, so a first burst of threads makes one pool."""
    with _REDIS_LOCK:
        return _redis_for(settings.redis_url)


@lru_cache
def _redis_for(url: str) -> Any:
    import redis

    return redis.Redis.from_url(
        url,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
    )


def _window() -> tuple[int, int]:
    now = time.time()
    return int(now // WINDOW_SECONDS), WINDOW_SECONDS - int(now % WINDOW_SECONDS)


def _failures(settings: Settings, client: str, add: bool) -> int:
    """Failures from `client` this minute (after adding one when `add`); 0 when Redis is down."""
    window, _ = _window()
    key = f"voicefarm:authfail:{client}:{window}"
    try:
        r = _redis(settings)
        if not add:
            return int(r.get(key) or 0)
        pipe = r.pipeline()
        pipe.incr(key)
        pipe.expire(key, WINDOW_SECONDS * 2)
        return int(pipe.execute()[0])
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
    # async, and one thread hop for the blocking part (Redis, PostgreSQL), only when there is
    # one: with auth off a request needs no hand-off for this.
    authorization = request.headers.get("authorization")
    return await in_thread(_authenticate, settings, _client(request), authorization)


def _authenticate(settings: Settings, client: str, authorization: str | None) -> Caller:
    limit = settings.auth_failures_per_minute
    if _failures(settings, client, add=False) >= limit:
        raise TooManyAuthFailures(
            f"too many failed authentications from this address; retry in {_window()[1]} s",
            retry_after=_window()[1],
        )
    scheme, _, token = (authorization or "").partition(" ")
    who = None
    if scheme.lower() == "bearer" and token:
        with session_scope(settings.database_url) as session:
            who = tq.authenticate(session, token)
    if who is None:
        failures = _failures(settings, client, add=True)
        log.info("event=api.auth_failed client=%s failures=%d", client, failures)
        raise Unauthorized("send a valid API key as `Authorization: Bearer <key>`")
    if who.tenant_id is None:
        return Caller(DEFAULT_TENANT_ID, tq.SCOPE_ADMIN)
    return Caller(who.tenant_id, who.scope, who.tenant_name or "")

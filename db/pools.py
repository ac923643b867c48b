"""Routing (the seed's sharding by tenant or voice): which worker pool a job goes to, and the
pins that decide it. Each function only flushes; the caller's scope commits.

A voice pinned to a pool wins over its tenant's pool; a tenant's pool is `default` unless set
(`voicefarm tenants set NAME --pool P`). A pool no worker serves yet still admits jobs: they wait
in `synth.<pool>.<engine>` until `voicefarm workers --pool <pool>` starts (and the reconciler
re-publishes them there if the broker loses them)."""

from __future__ import annotations

import re
import uuid

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.enums import DEFAULT_POOL, POOL_NAME_PATTERN
from core.errors import VoiceNotFound
from db.models import Tenant, Voice


def check_pool_name(name: str) -> str:
    """`name` if it can be part of queue names and hostnames; ValueError otherwise."""
    if not re.fullmatch(POOL_NAME_PATTERN, name):
        raise ValueError(
            f"pool {name!r} is not a valid name: 1-64 of a-z, 0-9, '_' and '-', "
            "starting with a letter or digit"
        )
    return name


def pool_for(session: Session, tenant_id: uuid.UUID, voice_id: uuid.UUID | None) -> str:
    """The pool a job of `tenant_id` speaking with `voice_id` (None: no cloned voice) goes to."""
    if voice_id is not None:
        pinned = session.scalar(select(Voice.pool).where(Voice.id == voice_id))
        if pinned:
            return pinned
    # session.get: the quota check that follows reads the same row from the identity map.
    tenant = session.get(Tenant, tenant_id)
    return (tenant.pool if tenant is not None else None) or DEFAULT_POOL


def pin_voice(session: Session, voice_id: uuid.UUID, pool: str | None) -> None:
    """Pin every later job with this voice to `pool`; None unpins (back to the tenant's pool).
    Jobs already admitted keep the pool they were routed to."""
    if pool is not None:
        check_pool_name(pool)
    found = session.execute(
        update(Voice).where(Voice.id == voice_id).values(pool=pool).returning(Voice.id)
    ).first()
    if found is None:
        raise VoiceNotFound(f"no voice with id {voice_id}")

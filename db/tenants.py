"""Tenants and their API keys: the queries the CLI, the API's auth and the tests share. Each
only flushes; the caller's scope commits."""

from __future__ import annotations

import base64
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import apikeys
from db.models import ApiKey, Tenant

# last_used_at is written at most this often per key: a busy key costs one UPDATE a minute,
# not one per request.
LAST_USED_RESOLUTION = timedelta(seconds=60)
LIMIT_FIELDS = ("pool", "max_running", "jobs_per_minute", "chars_per_day", "max_voices", "weight")
SCOPE_TENANT = "tenant"
SCOPE_ADMIN = "admin"


class TenantError(ValueError):
    """A CLI-level mistake: unknown tenant or key, duplicate name."""


def get_tenant_by_name(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        raise TenantError(f"no tenant named {name!r}")
    return tenant


def create_tenant(session: Session, name: str, **limits: Any) -> Tenant:
    if not name or len(name) > 64:
        raise TenantError("a tenant name has 1-64 characters")
    if session.scalar(select(Tenant.id).where(Tenant.name == name)) is not None:
        raise TenantError(f"tenant {name!r} already exists")
    tenant = Tenant(id=uuid.uuid4(), name=name, webhook_secret=new_webhook_secret())
    _apply(tenant, limits)
    session.add(tenant)
    session.flush()
    session.refresh(tenant)
    return tenant


def set_tenant(session: Session, name: str, **limits: Any) -> Tenant:
    """Change the given limits (None leaves one as it is)."""
    tenant = get_tenant_by_name(session, name)
    _apply(tenant, limits)
    session.flush()
    return tenant


def _apply(tenant: Tenant, limits: dict[str, Any]) -> None:
    for field, value in limits.items():
        if field not in LIMIT_FIELDS:
            raise TenantError(f"unknown tenant setting {field!r}")
        if value is None:
            continue
        if field == "pool":
            from db.pools import check_pool_name

            check_pool_name(value)
        elif value < (1 if field == "weight" else 0):
            raise TenantError(f"{field} must be at least {1 if field == 'weight' else 0}")
        setattr(tenant, field, value)
    if tenant.weight is None:
        tenant.weight = 1
    if tenant.pool is None:
        tenant.pool = "default"


def new_webhook_secret() -> str:
    """`whsec_` + base64 of 32 random bytes, the Standard Webhooks format."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def rotate_webhook_secret(session: Session, name: str) -> Tenant:
    tenant = get_tenant_by_name(session, name)
    tenant.webhook_secret = new_webhook_secret()
    session.flush()
    return tenant


def list_tenants(session: Session) -> list[Tenant]:
    return list(session.scalars(select(Tenant).order_by(Tenant.name)))


@dataclass(frozen=True)
class CreatedKey:
    key: str  # the only time the whole key exists outside the client
    row: ApiKey


def create_key(
    session: Session, tenant: str | None, *, admin: bool = False, name: str | None = None
) -> CreatedKey:
    """A key of `tenant`, or an admin key (all tenants) when `admin`."""
    if admin == (tenant is not None):
        raise TenantError("a key belongs to one tenant, or is an admin key: give exactly one")
    tenant_id = None if tenant is None else get_tenant_by_name(session, tenant).id
    new = apikeys.generate()
    row = ApiKey(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        scope=SCOPE_ADMIN if admin else SCOPE_TENANT,
        name=name,
        prefix=new.prefix,
        key_hash=new.key_hash,
    )
    session.add(row)
    session.flush()
    session.refresh(row)
    return CreatedKey(new.key, row)


@dataclass(frozen=True)
class KeyRow:
    prefix: str
    tenant: str | None
    scope: str
    name: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def list_keys(session: Session, tenant: str | None = None) -> list[KeyRow]:
    stmt = (
        select(ApiKey, Tenant.name)
        .outerjoin(Tenant, Tenant.id == ApiKey.tenant_id)
        .order_by(ApiKey.created_at, ApiKey.prefix)
    )
    if tenant is not None:
        stmt = stmt.where(ApiKey.tenant_id == get_tenant_by_name(session, tenant).id)
    return [
        KeyRow(k.prefix, t, k.scope, k.name, k.created_at, k.last_used_at, k.revoked_at)
        for k, t in session.execute(stmt).all()
    ]


def revoke_key(session: Session, prefix: str) -> bool:
    """Revoke the key; False when it was already revoked. Takes effect on the next request."""
    key = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix).with_for_update())
    if key is None:
        raise TenantError(f"no key with prefix {prefix!r}")
    if key.revoked_at is not None:
        return False
    key.revoked_at = func.now()  # type: ignore[assignment]
    session.flush()
    return True


@dataclass(frozen=True)
class Authenticated:
    tenant_id: uuid.UUID | None  # None: an admin key
    tenant_name: str | None
    scope: str

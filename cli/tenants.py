"""`voicefarm tenants create|list|set` and `voicefarm keys create|list|revoke`: operator commands
that write the database directly (VOICEFARM_DATABASE_URL). A new key is printed once; only its
prefix is ever shown again."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import Any

LIMIT_FLAGS = (
    ("--pool", "pool", str, "worker pool its jobs go to (voicefarm workers --pool)"),
    ("--max-running", "max_running", int, "queued + running jobs at once"),
    ("--jobs-per-minute", "jobs_per_minute", int, "jobs admitted per minute"),
    ("--chars-per-day", "chars_per_day", int, "characters of text per day"),
    ("--max-voices", "max_voices", int, "cloned voices"),
    ("--weight", "weight", int, "share of the workers when tenants compete (default 1)"),
)


def add_parsers(sub: Any) -> None:
    tenants = sub.add_parser("tenants", help="create, list and change tenants")
    tcmd = tenants.add_subparsers(dest="tenants_command", required=True)
    for verb, text in (("create", "add a tenant"), ("set", "change a tenant's pool or limits")):
        p = tcmd.add_parser(verb, help=text)
        p.add_argument("name")
        for flag, dest, kind, about in LIMIT_FLAGS:
            p.add_argument(flag, dest=dest, type=kind, help=about)
    tcmd.add_parser("list", help="every tenant with its pool and limits")
    secret = tcmd.add_parser(
        "webhook-secret", help="print the secret this tenant's webhooks are signed with"
    )
    secret.add_argument("name")
    secret.add_argument("--rotate", action="store_true", help="make a new one first")

    keys = sub.add_parser("keys", help="create, list and revoke API keys")
    kcmd = keys.add_subparsers(dest="keys_command", required=True)
    create = kcmd.add_parser("create", help="make a key; it is printed once")
    owner = create.add_mutually_exclusive_group(required=True)
    owner.add_argument("--tenant", help="the tenant the key acts for")
    owner.add_argument("--admin", action="store_true", help="an operator key: every tenant")
    create.add_argument("--name", help="a label for the key (who or what uses it)")
    listing = kcmd.add_parser("list", help="keys by prefix (secrets are never shown)")
    listing.add_argument("--tenant")
    revoke = kcmd.add_parser("revoke", help="refuse a key from its next request on")
    revoke.add_argument("prefix")


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    return {dest: getattr(args, dest) for _, dest, _, _ in LIMIT_FLAGS}


def run_tenants(args: argparse.Namespace) -> int:
    from core.settings import get_settings
    from db import tenants as tq
    from db.session import session_scope

    try:
        with session_scope(get_settings().database_url) as session:
            if args.tenants_command == "create":
                t = tq.create_tenant(session, args.name, **_limits(args))
                print(f"tenant {t.name} created (id {t.id}, pool {t.pool})")
            elif args.tenants_command == "webhook-secret":
                if args.rotate:
                    t = tq.rotate_webhook_secret(session, args.name)
                else:
                    t = tq.get_tenant_by_name(session, args.name)
                # The default tenant signs with the farm's VOICEFARM_WEBHOOK_SECRET.
                print(t.webhook_secret or get_settings().webhook_secret.get_secret_value())
            elif args.tenants_command == "set":
                t = tq.set_tenant(session, args.name, **_limits(args))
                print(f"tenant {t.name} updated (pool {t.pool})")
            else:
                rows = [["NAME", "ID", "POOL", "MAX_RUNNING", "JOBS/MIN", "CHARS/DAY", "VOICES"]]
                rows[0].append("WEIGHT")
                for t in tq.list_tenants(session):
                    limits = (t.max_running, t.jobs_per_minute, t.chars_per_day, t.max_voices)
                    shown = ["-" if v is None else str(v) for v in limits]
                    rows.append([t.name, str(t.id), t.pool, *shown, str(t.weight)])
                _table(rows)
    except ValueError as exc:  # TenantError, a bad pool name
        print(f"voicefarm: {exc}", file=sys.stderr)
        return 2
    return 0


def run_keys(args: argparse.Namespace) -> int:
    from core.settings import get_settings
    from db import tenants as tq
    from db.session import session_scope

    try:
        with session_scope(get_settings().database_url) as session:
            if args.keys_command == "create":
                made = tq.create_key(session, args.tenant, admin=args.admin, name=args.name)
                owner = "admin (every tenant)" if args.admin else f"tenant {args.tenant}"
                print(made.key)
                print(
                    f"key {made.row.prefix} for {owner}: store it now, it is not shown again",
                    file=sys.stderr,
                )
            elif args.keys_command == "list":
                rows = [["PREFIX", "TENANT", "SCOPE", "NAME", "CREATED", "LAST_USED", "REVOKED"]]
                for k in tq.list_keys(session, args.tenant):
                    rows.append(
                        [
                            k.prefix,
                            k.tenant or "*",
                            k.scope,
                            k.name or "-",
                            _when(k.created_at),
                            _when(k.last_used_at),
                            _when(k.revoked_at),
                        ]
                    )
                _table(rows)
            elif tq.revoke_key(session, args.prefix):
                print(f"key {args.prefix} revoked")
            else:
                print(f"key {args.prefix} was already revoked")
    except ValueError as exc:
        print(f"voicefarm: {exc}", file=sys.stderr)
        return 2
    return 0

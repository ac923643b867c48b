"""`voicefarm <command>`; each command imports only what it needs."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voicefarm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    say = sub.add_parser("say", help="synthesize text through the HTTP API and save the audio")
    say.add_argument("text", help="text to speak ('-' reads standard input)")
    say.add_argument("-o", "--output", default="out.wav", help="where to write the audio")
    say.add_argument("--api", default=None, help="API base URL (default VOICEFARM_PUBLIC_BASE_URL)")
    say.add_argument("--engine")
    say.add_argument("--voice")
    say.add_argument("--speed", type=float, default=1.0)
    say.add_argument("--sample-rate", type=int)
    say.add_argument("--timeout", type=float, default=600.0, help="seconds to wait")
    say.add_argument(
        "--api-key",
        default=os.environ.get("VOICEFARM_API_KEY"),
        help="API key (default $VOICEFARM_API_KEY)",
    )

    workers = sub.add_parser("workers", help="run the worker supervisor (one process per GPU)")
    workers.add_argument(
        "--pool", help="serve this worker pool's queues (default $VOICEFARM_WORKER_POOL)"
    )
    workers.add_argument("--gpus", help="GPU indexes, e.g. 0,2 (default $VOICEFARM_GPUS: all)")
    workers.add_argument("--cpu-workers", type=int, help="CPU worker processes (no GPU)")
    from cli.api_commands import add_parsers as add_api_parsers

    add_api_parsers(sub)
    sub.add_parser("reconcile", help="run one reconciler pass now (operator; the database)")
    from cli.voices import add_voices_parser

    add_voices_parser(sub)
    from cli.tenants import add_parsers as add_tenant_parsers

    add_tenant_parsers(sub)
    migrate = sub.add_parser("migrate", help="wait for PostgreSQL and apply migrations")
    migrate.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for it")
    sub.add_parser("farm", help="migrate, then run API, workers, beat and Flower (make run)")

    args = parser.parse_args(argv)
    from cli.api_commands import COMMANDS

    if args.command in COMMANDS:
        from cli.api_commands import run

        return run(args)
    if args.command == "reconcile":
        import json

        from tasks.maintenance import reconcile

        print(json.dumps(reconcile()))
        return 0
    if args.command == "say":
        from cli.say import run_say

        return run_say(args)
    if args.command == "workers":
        from cli.farm import run_workers

        # Flags become the settings the supervisor reads (VOICEFARM_GPUS, _CPU_WORKERS).
        if args.gpus is not None:
            os.environ["VOICEFARM_GPUS"] = args.gpus
        if args.cpu_workers is not None:
            os.environ["VOICEFARM_CPU_WORKERS"] = str(args.cpu_workers)
        from core.settings import get_settings

        get_settings.cache_clear()
        return run_workers(args.pool)
    if args.command in ("tenants", "keys"):
        from cli.tenants import run_keys, run_tenants

        return run_tenants(args) if args.command == "tenants" else run_keys(args)
    if args.command == "voices":
        from cli.voices import run_voices

        return run_voices(args)
    if args.command == "migrate":
        from cli.farm import run_migrate

        return run_migrate(timeout=args.timeout)
    from cli.farm import run_farm

    return run_farm()


if __name__ == "__main__":
    sys.exit(main())

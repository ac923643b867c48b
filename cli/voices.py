"""`voicefarm voices pin VOICE_ID --pool NAME` and `voicefarm voices unpin VOICE_ID`: route every
later job with a voice to a worker pool (the seed's sharding by voice). An operator command: it
writes the database directly (VOICEFARM_DATABASE_URL), for any tenant's voice."""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import Any


def add_voices_parser(sub: Any) -> None:
    voices = sub.add_parser("voices", help="operator commands for cloned voices")
    cmds = voices.add_subparsers(dest="voices_command", required=True)
    pin = cmds.add_parser("pin", help="send every later job with this voice to a worker pool")
    pin.add_argument("voice_id", type=uuid.UUID)
    pin.add_argument("--pool", required=True, help="pool name (workers: voicefarm workers --pool)")
    unpin = cmds.add_parser("unpin", help="jobs with this voice follow its tenant's pool again")
    unpin.add_argument("voice_id", type=uuid.UUID)


def run_voices(args: argparse.Namespace) -> int:
    from core.errors import VoiceNotFound
    from core.settings import get_settings
    from db.pools import pin_voice
    from db.session import session_scope

    pool: str | None = args.pool if args.voices_command == "pin" else None
    try:
        with session_scope(get_settings().database_url) as session:
            pin_voice(session, args.voice_id, pool)
    except (ValueError, VoiceNotFound) as exc:
        print(f"voicefarm: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    where = f"pool {pool}" if pool else "its tenant's pool"
    print(f"voice {args.voice_id}: later jobs go to {where}")
    return 0

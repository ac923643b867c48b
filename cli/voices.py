"""`voicefarm voices add|list|rm` go through the HTTP API with the caller's key (like `submit`);
`voicefarm voices pin VOICE_ID --pool NAME` and `unpin VOICE_ID` route every later job with a
voice to a worker pool (the seed's sharding by voice): operator commands that write the database
directly (VOICEFARM_DATABASE_URL), for any tenant's voice."""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import Any


def add_voices_parser(sub: Any) -> None:
    from cli.client import add_api_args

    voices = sub.add_parser("voices", help="cloned voices: add, list, remove, pin to a pool")
    cmds = voices.add_subparsers(dest="voices_command", required=True)
    add = cmds.add_parser("add", help="upload a 3-15 s recording and what it says")
    add.add_argument("audio", help="WAV, FLAC or Ogg file")
    add.add_argument("--transcript", required=True, help="exactly what the recording says")
    add.add_argument("--name", required=True)
    add.add_argument("--language", help="ISO 639-1, e.g. zh, en")
    add.add_argument("--wait", action="store_true", help="wait until it is ready or failed")
    add.add_argument("--timeout", type=float, default=120.0)
    add_api_args(add)
    listing = cmds.add_parser("list", help="your voices, newest first")
    add_api_args(listing)
    rm = cmds.add_parser("rm", help="delete a voice (409 while queued jobs use it)")
    rm.add_argument("voice_id", type=uuid.UUID)
    add_api_args(rm)
    pin = cmds.add_parser("pin", help="send every later job with this voice to a worker pool")
    pin.add_argument("voice_id", type=uuid.UUID)
    pin.add_argument("--pool", required=True, help="pool name (workers: voicefarm workers --pool)")
    unpin = cmds.add_parser("unpin", help="jobs with this voice follow its tenant's pool again")
    unpin.add_argument("voice_id", type=uuid.UUID)


def run_voices(args: argparse.Namespace) -> int:
    if args.voices_command in ("add", "list", "rm"):
        return _over_http(args)
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


def _over_http(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    from cli.client import EXIT_OK, CliError, call, client, fail

    try:
        with client(args) as c:
            if args.voices_command == "rm":
                call(c, "DELETE", f"/v1/voices/{args.voice_id}")
                out: Any = {"id": str(args.voice_id), "deleted": True}
            elif args.voices_command == "list":
                out = call(c, "GET", "/v1/voices")["items"]
            else:
                path = Path(args.audio)
                if not path.is_file():
                    raise CliError("audio_missing", f"no such file: {path}", 2)
                form = {"transcript": args.transcript, "name": args.name}
                if args.language:
                    form["language"] = args.language
                with path.open("rb") as f:
                    out = call(c, "POST", "/v1/voices", data=form, files={"audio": (path.name, f)})
                deadline = time.monotonic() + args.timeout
                while args.wait and out["status"] == "processing":
                    if time.monotonic() > deadline:
                        raise CliError("timeout", f"voice {out['id']} is still processing", 3)
                    time.sleep(0.5)
                    out = call(c, "GET", f"/v1/voices/{out['id']}")
    except CliError as exc:
        return fail(args, exc)
    if args.json:
        print(json.dumps(out))
    elif args.voices_command == "list":
        for v in out:
            print(f"{v['id']}  {v['status']:<10}  {v['name']}  {v['transcript'][:40]}")
    elif args.voices_command == "rm":
        print(f"voice {args.voice_id} deleted")
    else:
        print(
            f"voice {out['id']}: {out['status']}"
            + (f" ({out['error']['code']})" if out.get("error") else "")
        )
    if args.voices_command == "add" and out.get("status") == "failed":
        return 1
    return EXIT_OK

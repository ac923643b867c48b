"""`voicefarm say "text" -o out.wav`: submit through the API, show progress, save the audio."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import httpx

from core.settings import get_settings

BAR_WIDTH = 30


def _bar(done: int, total: int | None, status: str) -> str:
    if not total:
        return f"\r[{' ' * BAR_WIDTH}] {status:<10}"
    filled = int(BAR_WIDTH * done / total)
    return f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total} {status:<10}"


def run_say(args: argparse.Namespace) -> int:
    base = (args.api or get_settings().public_base_url).rstrip("/")
    text = sys.stdin.read() if args.text == "-" else args.text
    body: dict[str, object] = {"text": text, "speed": args.speed}
    for key in ("engine", "voice"):
        if getattr(args, key):
            body[key] = getattr(args, key)
    if args.sample_rate:
        body["sample_rate"] = args.sample_rate
    tty = sys.stderr.isatty()
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with httpx.Client(
        base_url=base, timeout=30.0, follow_redirects=True, headers=headers
    ) as client:
        try:
            resp = client.post("/v1/jobs", json=body)
        except httpx.HTTPError as exc:
            print(f"voicefarm: cannot reach the API at {base}: {exc}", file=sys.stderr)
            return 2
        if resp.status_code != 202:
            err = (
                resp.json().get("error", {})
                if resp.headers.get("content-type", "").startswith("application/json")
                else {}
            )
            print(
                f"voicefarm: {err.get('code', resp.status_code)}: {err.get('message', resp.text)}",
                file=sys.stderr,
            )
            return 1
        job = resp.json()
        deadline = time.monotonic() + args.timeout
        last = ""
        while job["status"] not in ("succeeded", "failed", "canceled"):
            if time.monotonic() > deadline:
                print(
                    f"\nvoicefarm: gave up waiting; job {job['id']} is {job['status']}",
                    file=sys.stderr,
                )
                return 3
            time.sleep(0.25)
            job = client.get(f"/v1/jobs/{job['id']}").json()
            p = job["progress"]
            line = _bar(p["segments_done"], p["segments_total"], job["status"])
            if tty and line != last:
                sys.stderr.write(line)
                sys.stderr.flush()
                last = line
        if tty:
            sys.stderr.write("\n")
        if job["status"] != "succeeded":
            err = job.get("error") or {}
            print(
                f"voicefarm: job {job['id']} {job['status']}: {err.get('code', '')} "
                f"{err.get('message', '')}".rstrip(),
                file=sys.stderr,
            )
            return 1
        audio = client.get(f"/v1/jobs/{job['id']}/audio")
        audio.raise_for_status()
        Path(args.output).write_bytes(audio.content)
        r = job["result"]
        print(f"{args.output}: {r['duration_s']:.2f} s, {r['sample_rate']} Hz, {r['bytes']} bytes")
    return 0

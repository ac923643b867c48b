"""`voicefarm submit|status|wait|cancel|jobs|batches|webhooks`: the HTTP API from a terminal.

Rich tables and one progress bar on a terminal; `--json` prints the API's answers for scripts.
Exit codes: cli/client.py.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

from cli.client import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_TIMEOUT,
    CliError,
    add_api_args,
    call,
    client,
    fail,
)

TERMINAL = ("succeeded", "failed", "canceled")


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("submit", help="submit one text, or a JSONL/CSV file as a batch")
    p.add_argument("text", nargs="?", help="text to speak (or use --file)")
    p.add_argument("--file", type=Path, help="JSONL (one job a line) or CSV (a `text` column)")
    p.add_argument("--engine")
    p.add_argument("--voice")
    p.add_argument("--webhook-url")
    p.add_argument("--concatenate", action="store_true", help="batch: one joined WAV too")
    p.add_argument("--wait", action="store_true", help="wait until done, with a progress bar")
    p.add_argument("--timeout", type=float, default=3600.0)
    add_api_args(p)
    for name, what in (("status", "show a job"), ("cancel", "cancel a job")):
        q = sub.add_parser(name, help=what)
        q.add_argument("job_id")
        add_api_args(q)
    w = sub.add_parser("wait", help="wait for a job or batch to finish")
    w.add_argument("id")
    w.add_argument("--batch", action="store_true", help="the id is a batch's")
    w.add_argument("--timeout", type=float, default=3600.0)
    add_api_args(w)
    j = sub.add_parser("jobs", help="list jobs, newest first")
    j.add_argument("--status", choices=["queued", "running", *TERMINAL])
    j.add_argument("--limit", type=int, default=20)
    j.add_argument("--tenant-id", help="only this tenant's jobs (admin keys)")
    add_api_args(j)
    b = sub.add_parser("batches", help="list batches, or show/cancel/manifest one")
    b.add_argument(
        "action", nargs="?", choices=["list", "show", "cancel", "manifest"], default="list"
    )
    b.add_argument("batch_id", nargs="?")
    add_api_args(b)
    h = sub.add_parser("webhooks", help="webhook deliveries: list a job's, retry one")
    h.add_argument("action", choices=["list", "retry", "disabled", "enable"])
    h.add_argument("target", nargs="?", help="job id (list, retry) or URL (enable)")
    h.add_argument("delivery_id", nargs="?")
    add_api_args(h)


def run(args: argparse.Namespace) -> int:
    try:
        return int(COMMANDS[args.command](args))
    except CliError as exc:
        return fail(args, exc)


def _out(args: argparse.Namespace, data: Any, rows: list[dict[str, Any]], cols: list[str]) -> None:
    if args.json:
        print(json.dumps(data))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*cols)
    for r in rows:
        table.add_row(*[str(r.get(c, "") if r.get(c) is not None else "") for c in cols])
    Console().print(table)


def _items_from(path: Path, base: dict[str, Any]) -> list[dict[str, Any]]:
    raw = path.read_text()
    if path.suffix.lower() == ".csv":
        items = [dict(r) for r in csv.DictReader(io.StringIO(raw))]
    else:
        items = [json.loads(line) for line in raw.splitlines() if line.strip()]
    return [{**base, **{k: v for k, v in i.items() if v not in (None, "")}} for i in items]


def submit(args: argparse.Namespace) -> int:
    base = {k: getattr(args, k) for k in ("engine", "voice") if getattr(args, k)}
    with client(args) as c:
        if args.file:
            body: dict[str, Any] = {
                "items": _items_from(args.file, base),
                "concatenate": args.concatenate,
            }
            if args.webhook_url:
                body["webhook_url"] = args.webhook_url
            batch = call(c, "POST", "/v1/batches", json=body)
            if args.wait:
                return _wait_batch(args, c, batch["id"])
            _out(args, batch, [{"batch": batch["id"], "items": batch["items"]}], ["batch", "items"])
            return EXIT_OK
        if not args.text:
            raise CliError("usage", "give a text or --file", 2)
        text = sys.stdin.read() if args.text == "-" else args.text
        job = call(c, "POST", "/v1/jobs", json={"text": text, **base, **_hook(args)})
        if args.wait:
            return _wait_job(args, c, job["id"])
        _show_job(args, job)
    return EXIT_OK


def _hook(args: argparse.Namespace) -> dict[str, Any]:
    return {"webhook_url": args.webhook_url} if args.webhook_url else {}


def _show_job(args: argparse.Namespace, job: dict[str, Any]) -> None:
    err = job.get("error") or {}
    row = {
        "id": job["id"],
        "status": job["status"],
        "engine": job["engine"],
        "error": err.get("code"),
    }
    _out(args, job, [row], ["id", "status", "engine", "error"])


def status(args: argparse.Namespace) -> int:
    with client(args) as c:
        _show_job(args, call(c, "GET", f"/v1/jobs/{args.job_id}"))
    return EXIT_OK


def cancel(args: argparse.Namespace) -> int:
    with client(args) as c:
        _show_job(args, call(c, "POST", f"/v1/jobs/{args.job_id}/cancel"))
    return EXIT_OK


def wait(args: argparse.Namespace) -> int:
    with client(args) as c:
        return _wait_batch(args, c, args.id) if args.batch else _wait_job(args, c, args.id)


def _progress(args: argparse.Namespace) -> Any:
    if args.json or not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import Progress

    return Progress(console=Console(stderr=True))


def _wait_job(args: argparse.Namespace, c: Any, job_id: str) -> int:
    deadline = time.monotonic() + args.timeout
    bar = _progress(args)
    task = bar.add_task(job_id, total=None) if bar else None
    if bar:
        bar.start()
    try:
        while True:
            job = call(c, "GET", f"/v1/jobs/{job_id}")
            if bar:
                p = job["progress"]
                bar.update(task, completed=p["segments_done"], total=p["segments_total"])
            if job["status"] in TERMINAL:
                break
            if time.monotonic() > deadline:
                raise CliError("timeout", f"job {job_id} is still {job['status']}", EXIT_TIMEOUT)
            time.sleep(0.25)
    finally:
        if bar:
            bar.stop()
    _show_job(args, job)
    return EXIT_OK if job["status"] == "succeeded" else EXIT_REFUSED


def _wait_batch(args: argparse.Namespace, c: Any, batch_id: str) -> int:
    """One progress bar across the whole batch: items that reached a terminal state."""
    deadline = time.monotonic() + args.timeout
    bar = _progress(args)
    task = bar.add_task(f"batch {batch_id[:8]}", total=None) if bar else None
    if bar:
        bar.start()
    try:
        while True:
            batch = call(c, "GET", f"/v1/batches/{batch_id}")
            ended = sum(batch["counts"].get(s, 0) for s in TERMINAL)
            if bar:
                bar.update(task, completed=ended, total=batch["items"])
            if batch["completed_at"]:
                break
            if time.monotonic() > deadline:
                raise CliError("timeout", f"batch {batch_id}: {ended}/{batch['items']}", 3)
            time.sleep(0.5)
    finally:
        if bar:
            bar.stop()
    _show_batches(args, batch, [batch])
    return EXIT_OK if batch["counts"]["succeeded"] == batch["items"] else EXIT_REFUSED


def _show_batches(args: argparse.Namespace, data: Any, batches: list[dict[str, Any]]) -> None:
    rows = [
        {"id": b["id"], "status": b["status"], "items": b["items"], **b["counts"]} for b in batches
    ]
    cols = ["id", "status", "items", "queued", "running", "succeeded", "failed", "canceled"]
    _out(args, data, rows, cols)


def jobs(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.status:
        params["status"] = args.status
    if args.tenant_id:
        params["tenant_id"] = args.tenant_id
    with client(args) as c:
        data = call(c, "GET", "/v1/jobs", params=params)
    rows = [{**j, "error": (j.get("error") or {}).get("code")} for j in data["items"]]
    _out(args, data, rows, ["id", "tenant_id", "status", "engine", "created_at", "error"])
    return EXIT_OK


def batches(args: argparse.Namespace) -> int:
    with client(args) as c:
        if args.action == "list":
            data = call(c, "GET", "/v1/batches")
            _show_batches(args, data, data)
            return EXIT_OK
        if not args.batch_id:
            raise CliError("usage", f"batches {args.action} needs a batch id", 2)
        if args.action == "manifest":
            sys.stdout.write(call(c, "GET", f"/v1/batches/{args.batch_id}/manifest"))
            return EXIT_OK
        method = "POST" if args.action == "cancel" else "GET"
        suffix = "/cancel" if args.action == "cancel" else ""
        batch = call(c, method, f"/v1/batches/{args.batch_id}{suffix}")
        _show_batches(args, batch, [batch])
    return EXIT_OK


def webhooks(args: argparse.Namespace) -> int:
    with client(args) as c:
        if args.action == "disabled":
            data = call(c, "GET", "/v1/webhooks/disabled")
            _out(args, data, data, ["url", "deliveries", "last_at"])
            return EXIT_OK
        if not args.target:
            raise CliError("usage", f"webhooks {args.action} needs a job id or URL", 2)
        if args.action == "enable":
            data = call(c, "POST", "/v1/webhooks/enable", json={"url": args.target})
            _out(args, data, [data], ["url", "enabled"])
            return EXIT_OK
        if args.action == "retry":
            if not args.delivery_id:
                raise CliError("usage", "webhooks retry JOB_ID DELIVERY_ID", 2)
            path = f"/v1/jobs/{args.target}/webhooks/{args.delivery_id}/retry"
            data = call(c, "POST", path)
            _out(args, data, [data], ["id", "event", "status", "attempts"])
            return EXIT_OK
        data = call(c, "GET", f"/v1/jobs/{args.target}/webhooks")
        _out(args, data, data, ["id", "event", "url", "status", "attempts"])
    return EXIT_OK


COMMANDS = {
    "submit": submit,
    "status": status,
    "cancel": cancel,
    "wait": wait,
    "jobs": jobs,
    "batches": batches,
    "webhooks": webhooks,
}

"""The CLI's HTTP client: base URL and key from flags or the environment, errors by code.

Exit codes (README, CLI): 0 done; 1 the API refused the request or a job/batch did not succeed;
2 the API cannot be reached; 3 gave up waiting (`--timeout`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import httpx

EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_TIMEOUT = 0, 1, 2, 3


class CliError(Exception):
    def __init__(self, code: str, message: str, exit_code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.code, self.message, self.exit_code = code, message, exit_code


def add_api_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api", default=os.environ.get("VOICEFARM_API_URL"), help="API base URL")
    p.add_argument("--api-key", default=os.environ.get("VOICEFARM_API_KEY"), help="API key")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def base_url(args: argparse.Namespace) -> str:
    if getattr(args, "api", None):
        return str(args.api).rstrip("/")
    from core.settings import get_settings

    return get_settings().public_base_url.rstrip("/")


def client(args: argparse.Namespace, timeout: float = 60.0) -> httpx.Client:
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    return httpx.Client(
        base_url=base_url(args), timeout=timeout, follow_redirects=True, headers=headers
    )


def call(c: httpx.Client, method: str, path: str, **kw: Any) -> Any:
    """The decoded JSON answer of a 2xx; CliError with the API's error code otherwise."""
    try:
        resp = c.request(method, path, **kw)
    except httpx.HTTPError as exc:
        raise CliError("unreachable", f"cannot reach the API at {c.base_url}: {exc}", 2) from exc
    if resp.status_code >= 400:
        err: dict[str, Any] = {}
        if resp.headers.get("content-type", "").startswith("application/json"):
            err = resp.json().get("error", {})
        raise CliError(err.get("code", str(resp.status_code)), err.get("message", resp.text))
    if resp.headers.get("content-type", "").startswith("application/json"):
        return resp.json()
    return resp.text


def fail(args: argparse.Namespace, exc: CliError) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"error": {"code": exc.code, "message": exc.message}}))
    print(f"voicefarm: {exc.code}: {exc.message}", file=sys.stderr)
    return exc.exit_code

#!/usr/bin/env bash
# Print the path of `promtool` for the alert-rules test (tests/unit/test_observability.py),
# installing Debian's `prometheus` package (which ships it) when it is missing and we may (root
# with apt-get). Exit 1, with the reason on stderr, when none can be had.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then command -v promtool; exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "ensure-promtool: installing Debian's prometheus (for promtool)" >&2
  { apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } >&2 \
    || { echo "ensure-promtool: apt-get install prometheus failed" >&2; exit 1; }
  # The package's service is not wanted here: it would start a Prometheus on :9090.
  { command -v systemctl >/dev/null 2>&1 && systemctl disable --now prometheus; } >/dev/null 2>&1 || true
  command -v promtool >/dev/null 2>&1 && { command -v promtool; exit 0; }
fi
echo "ensure-promtool: no promtool on PATH and not root with apt-get to install it" >&2
exit 1

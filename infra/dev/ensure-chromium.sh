#!/usr/bin/env bash
# Print the path of a headless-capable Chromium for the console's browser test
# (tests/integration/test_console.py), installing Debian's `chromium` when it is missing and we
# may (root with apt-get). Exit 1, with the reason on stderr, when none can be had.
set -euo pipefail

find_chromium() {
  for c in "${VOICEFARM_CHROMIUM:-}" chromium chromium-browser google-chrome; do
    [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 && { command -v "$c"; return 0; }
  done
  return 1
}

if find_chromium; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "ensure-chromium: installing Debian's chromium" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >&2 \
    || { echo "ensure-chromium: apt-get install chromium failed" >&2; exit 1; }
  find_chromium && exit 0
fi
echo "ensure-chromium: no chromium on PATH and not root with apt-get to install it" >&2
exit 1

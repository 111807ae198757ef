#!/usr/bin/env bash
# Setup for the browser interop test (tests/interop/test_browser.py); idempotent and quick when done.
#  1. Debian's Chromium at /usr/bin/chromium (apt-get; the machine cannot fetch browser builds
#     of its own, so Playwright's browser download is never used).
#  2. The pinned npm packages of this folder (playwright-core, the TS MCP SDK, esbuild) into
#     tests/interop/browser/node_modules, by `npm ci` from package-lock.json.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ ! -x /usr/bin/chromium ]]; then
  echo "installing chromium (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""
  [[ "$(id -u)" == 0 ]] || SUDO="sudo"
  $SUDO apt-get install -y --no-install-recommends chromium </dev/null \
    || { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends chromium </dev/null; }
fi
/usr/bin/chromium --version 2>/dev/null || echo "warning: /usr/bin/chromium --version failed" >&2

lock_sum="$(sha256sum "$HERE/package.json" "$HERE/package-lock.json" | sha256sum | cut -d' ' -f1)"
stamp="$HERE/node_modules/.mcplex-stamp"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$lock_sum" ]]; then
  echo "browser test npm packages: up to date"
else
  (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_sum" > "$stamp"
fi

#!/usr/bin/env bash
# Installs what tests/interop/test_scale_out.py needs: nginx from Debian's packages.
# Idempotent and quick when done: does nothing if /usr/sbin/nginx exists.  The test runs
# nginx in the foreground as the test user with its own prefix, config and temp dirs, so
# the package's own service is neither needed nor started (policy-rc.d keeps apt from
# starting it; any instance apt did start is stopped again).
set -euo pipefail
NGINX=/usr/sbin/nginx
if [[ -x "$NGINX" ]]; then
  "$NGINX" -v 2>&1
  exit 0
fi
SUDO=()
if [[ "$(id -u)" != 0 ]]; then
  command -v sudo >/dev/null || { echo "setup.sh: need root (or sudo) to apt-get install nginx" >&2; exit 1; }
  SUDO=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
# Don't let the package start its service (there may be no init system at all).
policy=/usr/sbin/policy-rc.d
made_policy=0
if [[ ! -e "$policy" ]]; then
  printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
  "${SUDO[@]}" chmod 755 "$policy"
  made_policy=1
fi
cleanup() { if ((made_policy)); then "${SUDO[@]}" rm -f "$policy"; fi; }
trap cleanup EXIT
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends nginx >/dev/null
# Some package versions start nginx from the postinst anyway: stop only that daemon, by its pid file.
if [[ -f /run/nginx.pid ]]; then
  "${SUDO[@]}" "$NGINX" -s quit 2>/dev/null || true
fi
"$NGINX" -v 2>&1

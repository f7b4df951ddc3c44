#!/usr/bin/env bash
# Install what castml's JavaScript side needs: the pinned npm packages in web/ (onnxruntime-web,
# playwright-core; `npm ci`, so exactly web/package-lock.json) and Debian's chromium for the browser
# tests (apt-get, as root, only when /usr/bin/chromium is missing). No browser is downloaded by
# playwright. Idempotent: a second run with everything in place changes nothing.
#
# Usage: scripts/install_web.sh        (from anywhere; CI calls it before pytest)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
web="$root/web"

command -v node >/dev/null || { echo "install_web.sh: node is not installed (Node.js 20 or newer needed)" >&2; exit 1; }
command -v npm >/dev/null || { echo "install_web.sh: npm is not installed" >&2; exit 1; }

# npm ci wipes node_modules and reinstalls; skip it when the installed tree already matches the lock
stamp="$web/node_modules/.castml-lock.sha256"
want="$(sha256sum "$web/package-lock.json" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -d "$web/node_modules/onnxruntime-web" \
      && -d "$web/node_modules/playwright-core" ]]; then
  echo "install_web.sh: web/node_modules is up to date"
else
  (cd "$web" && npm ci --no-audit --no-fund)
  echo "$want" > "$stamp"
fi

if [[ -x /usr/bin/chromium ]]; then
  echo "install_web.sh: $(/usr/bin/chromium --version 2>/dev/null | head -n1)"
else
  if [[ "$(id -u)" != 0 ]]; then
    echo "install_web.sh: /usr/bin/chromium is missing; run as root (or: sudo apt-get install -y chromium)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y chromium || { apt-get update && apt-get install -y chromium; }
fi

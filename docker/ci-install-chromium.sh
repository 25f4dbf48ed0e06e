#!/usr/bin/env bash
# Installs Debian's chromium, the browser that tests/integration/test_mlflow_ui.py drives through Playwright (with
# executable_path=/usr/bin/chromium: `playwright install` and its downloads are never used). Called by .ci/run;
# safe to call again: it does nothing when /usr/bin/chromium is already there. Needs root (CI runs as root) or sudo.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    as_root=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium > /dev/null

[ -x /usr/bin/chromium ] || { echo "ci-install-chromium.sh: chromium installed but /usr/bin/chromium not found" >&2; exit 1; }

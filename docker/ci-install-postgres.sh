#!/usr/bin/env bash
# Installs the PostgreSQL server binaries that tests/integration/test_postgres_tracking.py starts (as a throwaway
# cluster in a temp dir; the Debian package's own cluster is not used). Called by .ci/run; safe to call again:
# it does nothing when initdb is already there. Needs root (CI runs as root) or sudo.
set -euo pipefail

have_initdb() {
    command -v initdb > /dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null
}

if have_initdb; then
    exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    as_root=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends postgresql > /dev/null

have_initdb || { echo "ci-install-postgres.sh: postgresql installed but initdb not found" >&2; exit 1; }

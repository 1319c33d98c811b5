#!/usr/bin/env bash
# Install Debian's PostgreSQL server (for MLflow's backend store and the test that uses it).
#
#   bash scripts/install_postgres.sh          # idempotent; prints the server's bin directory
#
# Does nothing when a PostgreSQL server (initdb + pg_ctl) is already installed. Otherwise
# installs the `postgresql` package with apt-get (as root, or through passwordless sudo),
# without creating or starting Debian's default `main` cluster: difflab starts its own
# server in a directory of its choice (see docs/operations.md), on loopback.
# Exit status 0: installed; 1: failed; 3: impossible here (no apt-get, or not root and no sudo).
set -euo pipefail

find_bindir() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [[ -x "$d/initdb" && -x "$d/pg_ctl" ]]; then echo "$d"; return 0; fi
    done
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v initdb)"; return 0
    fi
    return 1
}

if bindir=$(find_bindir); then
    echo "$bindir"
    exit 0
fi

source "$(dirname "$0")/apt.sh"
apt_ready install_postgres
# No default cluster: skips initdb + service start in the package's postinst (faster, nothing left running).
# A drop-in of the package's own createcluster.conf (which include_dir's this folder), so the
# ucf-managed file itself is left alone; delete the drop-in to get Debian's default behaviour back.
"${SUDO[@]}" mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false  # written by difflab's scripts/install_postgres.sh" | \
    "${SUDO[@]}" tee /etc/postgresql-common/createcluster.d/difflab-no-main-cluster.conf >/dev/null

apt_install_retry install_postgres postgresql

if bindir=$(find_bindir); then
    echo "$bindir"
    exit 0
fi
echo "install_postgres: postgresql installed but initdb/pg_ctl not found" >&2
exit 1

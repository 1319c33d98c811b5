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

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_postgres: apt-get not found; install a PostgreSQL server (initdb, pg_ctl) another way" >&2
    exit 3
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        echo "install_postgres: need root (or passwordless sudo) to apt-get install postgresql" >&2
        exit 3
    fi
fi

export DEBIAN_FRONTEND=noninteractive
# No default cluster: skips initdb + service start in the package's postinst (faster, nothing left running).
# A drop-in of the package's own createcluster.conf (which include_dir's this folder), so the
# ucf-managed file itself is left alone; delete the drop-in to get Debian's default behaviour back.
"${SUDO[@]}" mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false  # written by difflab's scripts/install_postgres.sh" | \
    "${SUDO[@]}" tee /etc/postgresql-common/createcluster.d/difflab-no-main-cluster.conf >/dev/null

apt_install() {
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends postgresql
}
# Retry once after refreshing the package lists (a fresh machine has none, or stale ones).
if ! apt_install >/tmp/install_postgres.log 2>&1; then
    "${SUDO[@]}" apt-get update -q >>/tmp/install_postgres.log 2>&1 || true
    if ! apt_install >>/tmp/install_postgres.log 2>&1; then
        tail -n 30 /tmp/install_postgres.log >&2
        echo "install_postgres: apt-get install postgresql failed (log: /tmp/install_postgres.log)" >&2
        exit 1
    fi
fi

if bindir=$(find_bindir); then
    echo "$bindir"
    exit 0
fi
echo "install_postgres: postgresql installed but initdb/pg_ctl not found" >&2
exit 1

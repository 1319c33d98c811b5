#!/usr/bin/env bash
# Install Debian's headless-capable Chromium (for the report page's browser tests).
#
#   bash scripts/install_chromium.sh          # idempotent; prints the browser's path
#
# Does nothing when chromium (or chromium-browser / google-chrome) is already on PATH.
# Otherwise installs the `chromium` package with apt-get (as root, or through passwordless sudo).
# Exit status 0: installed; 1: failed; 3: impossible here (no apt-get, or not root and no sudo).
set -euo pipefail

find_browser() {
    local b
    for b in chromium chromium-browser google-chrome google-chrome-stable; do
        if command -v "$b" >/dev/null 2>&1; then command -v "$b"; return 0; fi
    done
    return 1
}

if path=$(find_browser); then
    echo "$path"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium: apt-get not found; install Chromium another way and put it on PATH" >&2
    exit 3
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        echo "install_chromium: need root (or passwordless sudo) to apt-get install chromium" >&2
        exit 3
    fi
fi

export DEBIAN_FRONTEND=noninteractive
LOG=/tmp/install_chromium.log
apt_install() {
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
}
# Retry once after refreshing the package lists (a fresh machine has none, or stale ones).
if ! apt_install >"$LOG" 2>&1; then
    "${SUDO[@]}" apt-get update -q >>"$LOG" 2>&1 || true
    if ! apt_install >>"$LOG" 2>&1; then
        tail -n 30 "$LOG" >&2
        echo "install_chromium: apt-get install chromium failed (log: $LOG)" >&2
        exit 1
    fi
fi

if path=$(find_browser); then
    echo "$path"
    exit 0
fi
echo "install_chromium: chromium installed but not found on PATH" >&2
exit 1

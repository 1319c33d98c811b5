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

source "$(dirname "$0")/apt.sh"
apt_ready install_chromium
apt_install_retry install_chromium chromium fonts-dejavu-core

if path=$(find_browser); then
    echo "$path"
    exit 0
fi
echo "install_chromium: chromium installed but not found on PATH" >&2
exit 1

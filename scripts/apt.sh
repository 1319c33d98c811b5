# Sourced by scripts/install_*.sh: apt-get as root (or through passwordless sudo), retried once.
#
#   source "$(dirname "$0")/apt.sh"
#   apt_ready NAME                 # sets SUDO; exits 3 when apt-get or root is missing
#   apt_install_retry NAME PKG...  # installs; on failure refreshes the package lists and tries again

apt_ready() {
    local name=$1
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "$name: apt-get not found; install it another way and put it on PATH" >&2
        exit 3
    fi
    SUDO=()
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            SUDO=(sudo -n)
        else
            echo "$name: need root (or passwordless sudo) to apt-get install" >&2
            exit 3
        fi
    fi
    export DEBIAN_FRONTEND=noninteractive
}

apt_install_retry() {
    local name=$1; shift
    local log=/tmp/$name.log
    # Retry once after refreshing the package lists (a fresh machine has none, or stale ones).
    if ! "${SUDO[@]}" apt-get install -y -q --no-install-recommends "$@" >"$log" 2>&1; then
        "${SUDO[@]}" apt-get update -q >>"$log" 2>&1 || true
        if ! "${SUDO[@]}" apt-get install -y -q --no-install-recommends "$@" >>"$log" 2>&1; then
            tail -n 30 "$log" >&2
            echo "$name: apt-get install $* failed (log: $log)" >&2
            exit 1
        fi
    fi
}

#!/usr/bin/env bash
# One entry point for a fresh Debian machine (run as root, or with sudo available):
#   ./run.sh serve [ARGS...]   set up what the service needs, then run `cimsnap serve`
#   ./run.sh test  [ARGS...]   set up everything the tests need, then run the whole suite
#   ./run.sh bench [ARGS...]   set up like test, then run the benchmarks (python -m bench)
#   ./run.sh cimsnap ARGS...   set up, then run any cimsnap command
# Set-up is idempotent and skipped when nothing changed (stamp in .venv/).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

# Debian packages: the runtime needs FUSE for `cim mount`; the tests also need the independent
# tools that check what cimsnap writes.
APT_RUNTIME=(python3 python3-venv python3-dev gcc fuse3)
APT_TEST=(qemu-utils libvhdi-utils gdisk fdisk parted ntfs-3g libhivex-bin python3-hivex
          containerd tar gzip zstd golang-go python3-samba xfsprogs)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_ensure() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "run.sh: installing Debian packages: ${missing[*]}" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

venv_ensure() {  # $1 = pip extras spec, e.g. "." or ".[test]"
    local spec=$1 stamp=.venv/.cimsnap-stamp want
    want=$(cat pyproject.toml | sha256sum | cut -c1-16)-$spec
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "run.sh: installing Python packages ($spec)" >&2
        .venv/bin/python -m pip install -q --upgrade pip
        .venv/bin/python -m pip install -q -e "$spec"
        echo "$want" > "$stamp"
    fi
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    serve)
        apt_ensure "${APT_RUNTIME[@]}"; venv_ensure "."
        exec .venv/bin/cimsnap serve "$@" ;;
    cimsnap)
        apt_ensure "${APT_RUNTIME[@]}"; venv_ensure "."
        exec .venv/bin/cimsnap "$@" ;;
    test)
        apt_ensure "${APT_RUNTIME[@]}" "${APT_TEST[@]}"; venv_ensure ".[test]"
        exec .venv/bin/python -m pytest "$@" ;;
    bench)
        apt_ensure "${APT_RUNTIME[@]}" "${APT_TEST[@]}"; venv_ensure ".[test]"
        exec .venv/bin/python -m bench "$@" ;;
    *)
        sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac

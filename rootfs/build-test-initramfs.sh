#!/usr/bin/env bash
# Build the test initramfs: Debian's static busybox as /bin/busybox and
# rootfs/test-init.sh as /init (a stand-in until the peapod guest agent).
#
#   rootfs/build-test-initramfs.sh [--output FILE]
#
# Arguments are passed on to rootfs/build.sh. The last stdout line is the
# absolute path of the initramfs.
set -euo pipefail

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" >/dev/null && pwd -P)
busybox=${PEAPOD_BUSYBOX:-/bin/busybox}

if [[ ! -x $busybox ]]; then
    printf 'peapod-rootfs: error: %s not found\n  fix: apt-get install -y busybox-static\n' "$busybox" >&2
    exit 1
fi
if command -v file >/dev/null 2>&1 && [[ $(LC_ALL=C file -L -- "$busybox") != *"statically linked"* ]]; then
    printf 'peapod-rootfs: error: %s is not statically linked\n  fix: apt-get install -y busybox-static (replaces the dynamic busybox)\n' "$busybox" >&2
    exit 1
fi

exec "$script_dir/build.sh" --init "$script_dir/test-init.sh" --add "$busybox:/bin/busybox" "$@"

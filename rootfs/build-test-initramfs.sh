#!/usr/bin/env bash
# Build the test initramfs: Debian's static busybox as /bin/busybox,
# peapod-vsock-probe and peapod-hostile (built by scripts/build-guest-bins) in /bin,
# and rootfs/test-init.sh as /init (a stand-in until the peapod guest agent).
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

# The vsock probe of the e2e tests (`peapod.test=e2e`, see test-init.sh), a static binary of
# this package; PEAPOD_VSOCK_PROBE names a prebuilt one.
# The hostile guest (`peapod.test=hostile`, src/bin/peapod-hostile/): PEAPOD_HOSTILE names a
# prebuilt one. Both are built in one cargo run when neither is given.
probe=${PEAPOD_VSOCK_PROBE:-}
hostile=${PEAPOD_HOSTILE:-}
if [[ -z $probe && -z $hostile ]]; then
    mapfile -t built < <("$script_dir/../scripts/build-guest-bins" peapod-vsock-probe peapod-hostile | tail -n 2)
    probe=${built[0]:-}
    hostile=${built[1]:-}
elif [[ -z $probe ]]; then
    probe=$("$script_dir/../scripts/build-guest-bins" peapod-vsock-probe | tail -n 1)
elif [[ -z $hostile ]]; then
    hostile=$("$script_dir/../scripts/build-guest-bins" peapod-hostile | tail -n 1)
fi
if [[ ! -x $probe ]]; then
    printf 'peapod-rootfs: error: vsock probe %s not found\n  fix: scripts/build-guest-bins peapod-vsock-probe\n' "$probe" >&2
    exit 1
fi
if [[ ! -x $hostile ]]; then
    printf 'peapod-rootfs: error: hostile guest %s not found\n  fix: scripts/build-guest-bins peapod-hostile\n' "$hostile" >&2
    exit 1
fi

exec "$script_dir/build.sh" --init "$script_dir/test-init.sh" --add "$busybox:/bin/busybox" \
    --add "$probe:/bin/peapod-vsock-probe" --add "$hostile:/bin/peapod-hostile" "$@"

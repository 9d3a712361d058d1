#!/usr/bin/env bash
# Build a small container root filesystem image for tests and demos of
# `peapod vm run-container`: Debian's static busybox with its applets in /bin,
# /etc/passwd and /etc/group with root and a user 1000, /tmp and /home/user.
#
#   rootfs/build-test-image.sh [--fs erofs|ext4] [--output FILE]
#
# Default output: $CACHE/rootfs/test-image-<key>.<fs> (CACHE as in build.sh),
# <key> from busybox's hash and this script's. The last stdout line is the
# absolute path of the image.
set -euo pipefail

fs=erofs
output=
while (($#)); do
    case $1 in
    --fs) (($# >= 2)) || { echo "peapod-rootfs: --fs needs erofs or ext4" >&2; exit 2; }; fs=$2; shift 2 ;;
    --output | -o) (($# >= 2)) || { echo "peapod-rootfs: --output needs a FILE" >&2; exit 2; }; output=$2; shift 2 ;;
    -h | --help) sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
    *) echo "peapod-rootfs: unknown argument: $1" >&2; exit 2 ;;
    esac
done
busybox=${PEAPOD_BUSYBOX:-/bin/busybox}
case $fs in
erofs) mkfs=mkfs.erofs; pkg=erofs-utils ;;
ext4) mkfs=mkfs.ext4; pkg=e2fsprogs ;;
*) echo "peapod-rootfs: --fs $fs: use erofs or ext4" >&2; exit 2 ;;
esac
command -v "$mkfs" >/dev/null || { printf 'peapod-rootfs: error: %s not found\n  fix: apt-get install -y %s\n' "$mkfs" "$pkg" >&2; exit 1; }
if [[ ! -x $busybox ]] || [[ $(LC_ALL=C file -L -- "$busybox" 2>/dev/null) != *"statically linked"* ]]; then
    printf 'peapod-rootfs: error: %s is not a static busybox\n  fix: apt-get install -y busybox-static\n' "$busybox" >&2
    exit 1
fi

if [[ -z $output ]]; then
    cache=${PEAPOD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/peapod}
    key=$(cat -- "$busybox" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)
    output=$cache/rootfs/test-image-$key.$fs
    if [[ -s $output ]]; then
        printf '%s\n' "$output"
        exit 0
    fi
fi
mkdir -p -- "$(dirname -- "$output")"
output=$(cd -- "$(dirname -- "$output")" && pwd -P)/$(basename -- "$output")

stage=$(mktemp -d "${TMPDIR:-/tmp}/peapod-test-image.XXXXXX")
trap 'rm -rf -- "$stage"' EXIT
root=$stage/root
mkdir -p "$root"/{bin,etc,proc,sys,dev,tmp,root,home/user,var}
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"
cp -- "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [[ $applet == busybox ]] || ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\nuser:x:1000:\n' >"$root/etc/group"
chown 1000:1000 "$root/home/user" 2>/dev/null || true
find "$root" -exec touch -h -d @0 {} +

tmp=$(mktemp "$(dirname -- "$output")/.test-image.XXXXXX")
case $fs in
erofs)
    "$mkfs" --quiet -T0 -U 6b7d7f4c-5e3a-4c1e-9d2b-0a1b2c3d4e5f "$tmp" "$root" >&2
    ;;
ext4)
    rm -f -- "$tmp"
    E2FSPROGS_FAKE_TIME=0 "$mkfs" -q -F -t ext4 -d "$root" -U 6b7d7f4c-5e3a-4c1e-9d2b-0a1b2c3d4e5f \
        -E hash_seed=6b7d7f4c-5e3a-4c1e-9d2b-0a1b2c3d4e5f,root_owner=0:0 -O ^has_journal \
        "$tmp" 16M >&2
    ;;
esac
chmod 0644 "$tmp"
mv -f -- "$tmp" "$output"
printf 'peapod-rootfs: test image %s (%s bytes)\n' "$output" "$(stat -c %s "$output")" >&2
printf '%s\n' "$output"

#!/usr/bin/env bash
# Build a peapod guest initramfs (cpio "newc", gzip-compressed).
#
#   rootfs/build.sh --init PATH [--add HOSTPATH:GUESTPATH]... [--output FILE]
#
#   --init PATH               static executable (or #! script) that becomes /init
#   --add HOSTPATH:GUESTPATH  copy a host file or directory (recursively,
#                             symlinks kept) to GUESTPATH (absolute) in the
#                             image; split at the LAST ':' so HOSTPATH may
#                             contain ':'. Repeatable; later entries win.
#   --output FILE             write the image there instead of the cache
#
# The image always contains /dev /proc /sys /tmp /run /root and the node
# /dev/console (char 5:1, mode 0600). The node is written directly into the
# archive, so no root privileges (mknod) are needed.
#
# Deterministic: entries sorted (LC_ALL=C), owner 0:0, mtime 0, inode numbers
# renumbered, device numbers dropped (cpio --reproducible), gzip -n.
# Same inputs (file contents, modes, symlink targets, guest paths) give
# identical bytes.
#
# Default output: $CACHE/rootfs/<key>/initramfs.cpio.gz with
# CACHE=${PEAPOD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/peapod} and <key>
# the first 16 hex digits of the sha256 of the uncompressed cpio archive
# (the canonical serialization of all inputs).
#
# Progress goes to stderr; the last stdout line is the absolute output path.
set -euo pipefail
umask 022

log() { printf 'peapod-rootfs: %s\n' "$*" >&2; }
die() {
    printf 'peapod-rootfs: error: %s\n' "$1" >&2
    shift
    local line
    for line in "$@"; do printf '  %s\n' "$line" >&2; done
    exit 1
}
usage() {
    sed -n '4,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit "${1:-2}"
}

init=
output=
adds=()
while (($#)); do
    case $1 in
    --init) (($# >= 2)) || die "--init needs a PATH"; init=$2; shift 2 ;;
    --init=*) init=${1#--init=}; shift ;;
    --add) (($# >= 2)) || die "--add needs HOSTPATH:GUESTPATH"; adds+=("$2"); shift 2 ;;
    --add=*) adds+=("${1#--add=}"); shift ;;
    --output | -o) (($# >= 2)) || die "--output needs a FILE"; output=$2; shift 2 ;;
    --output=*) output=${1#--output=}; shift ;;
    -h | --help) usage 0 ;;
    *) log "unknown argument: $1"; usage ;;
    esac
done
[[ -n $init ]] || { log "--init PATH is required"; usage; }

missing=()
for tool in cpio gzip sha256sum find sort touch; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    die "missing tools: ${missing[*]}" "fix: apt-get install -y cpio gzip coreutils findutils"
fi
cpio_help=$(cpio --help 2>&1 || true)
[[ $cpio_help == *--reproducible* ]] ||
    die "this cpio does not support --reproducible (GNU cpio >= 2.12 needed)" "fix: apt-get install -y cpio"

[[ -f $init ]] || die "--init $init: no such file"
[[ -x $init ]] || die "--init $init is not executable" "fix: chmod +x $init"

# Guest paths: absolute, normalized, no '.' or '..' components.
check_guest_path() {
    local p=$1 comp
    [[ $p == /* ]] || die "guest path '$p' must be absolute"
    local IFS=/
    for comp in $p; do
        [[ $comp != . && $comp != .. ]] || die "guest path '$p' must not contain '.' or '..'"
    done
}

stage=$(mktemp -d "${TMPDIR:-/tmp}/peapod-rootfs.XXXXXX")
trap 'rm -rf -- "$stage"' EXIT
root=$stage/root
mkdir -m 0755 "$root"
for d in dev proc sys run; do mkdir -m 0755 "$root/$d"; done
mkdir -m 0700 "$root/root"
mkdir -m 1777 "$root/tmp"

for spec in ${adds[@]+"${adds[@]}"}; do
    [[ $spec == *:* ]] || die "--add $spec: expected HOSTPATH:GUESTPATH"
    host=${spec%:*}
    guest=${spec##*:}
    [[ -n $host ]] || die "--add $spec: empty HOSTPATH"
    check_guest_path "$guest"
    guest=$(printf '%s' "$guest" | tr -s /)
    guest=${guest%/}
    [[ -n $guest && $guest != /init ]] || die "--add $spec: use --init to set /init, and do not replace /"
    [[ -e $host || -L $host ]] || die "--add $spec: $host does not exist"
    mkdir -p -- "$root$(dirname -- "$guest")"
    if [[ -d $host && ! -L $host ]]; then
        mkdir -p -- "$root$guest"
        cp -a -- "$host/." "$root$guest/"
    else
        rm -rf -- "${root:?}$guest"
        cp -a -- "$host" "$root$guest"
    fi
    log "added $host -> $guest"
done

cp -- "$init" "$root/init"
chmod 0755 "$root/init"

# Normalize what cpio records: mtime 0 everywhere (-h: symlinks themselves).
find "$root" -exec touch -h -d @0 {} +

# Archive 1: the staged tree, sorted. Archive 2: /dev/console written by hand
# (no mknod needed). The kernel unpacks concatenated newc archives in order.
newc_entry() { # newc_entry NAME MODE RDEVMAJOR RDEVMINOR INO (no data)
    local name=$1 mode=$2 rmaj=$3 rmin=$4 ino=$5 namesize hdr pad
    namesize=$((${#name} + 1))
    #          magic ino  mode uid gid nlink mtime size maj min rmaj rmin namesz chk
    printf -v hdr '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
        "$ino" "$mode" 0 0 1 0 0 0 0 "$rmaj" "$rmin" "$namesize" 0
    pad=$(((4 - (110 + namesize) % 4) % 4))
    printf '%s%s\0' "$hdr" "$name"
    head -c "$pad" /dev/zero
}
cpio_tmp=$stage/initramfs.cpio
{
    (cd "$root" && find . -mindepth 1 -printf '%P\0' | LC_ALL=C sort -z |
        cpio --quiet -o -0 -H newc --reproducible -R 0:0)
    # S_IFCHR | 0600 = 0o20600 = 0x2180; inode numbers above cpio's renumbering.
    newc_entry dev/console $((0x2180)) 5 1 999999
    newc_entry 'TRAILER!!!' 0 0 0 0
} >"$cpio_tmp"
# Pad to a multiple of 512 bytes like cpio does.
size=$(stat -c %s "$cpio_tmp")
head -c $(((512 - size % 512) % 512)) /dev/zero >>"$cpio_tmp"

key=$(sha256sum "$cpio_tmp" | cut -c1-16)

if [[ -z $output ]]; then
    if [[ -n ${PEAPOD_CACHE_DIR:-} ]]; then
        cache_root=$PEAPOD_CACHE_DIR
    elif [[ -n ${XDG_CACHE_HOME:-} ]]; then
        cache_root=$XDG_CACHE_HOME/peapod
    else
        [[ -n ${HOME:-} ]] || die "neither PEAPOD_CACHE_DIR, XDG_CACHE_HOME nor HOME is set" "fix: pass --output FILE or export PEAPOD_CACHE_DIR"
        cache_root=$HOME/.cache/peapod
    fi
    output=$cache_root/rootfs/$key/initramfs.cpio.gz
fi
out_dir=$(dirname -- "$output")
mkdir -p -- "$out_dir" || die "cannot create $out_dir"
output=$(cd -- "$out_dir" >/dev/null && pwd -P)/$(basename -- "$output")

tmp_out=$(mktemp "$out_dir/.initramfs.XXXXXX")
gzip -n -9 -c "$cpio_tmp" >"$tmp_out"
chmod 0644 "$tmp_out"
mv -f -- "$tmp_out" "$output"

log "initramfs: $(stat -c %s "$cpio_tmp") bytes cpio, $(stat -c %s "$output") bytes gzip (key $key)"
printf '%s\n' "$output"

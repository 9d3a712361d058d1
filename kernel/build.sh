#!/usr/bin/env bash
# Build the peapod guest kernel: an uncompressed, PVH-bootable x86_64 vmlinux.
#
#   kernel/build.sh            # build (or reuse) the kernel
#
# Source: Debian's linux-source-6.1 package (/usr/src/linux-source-6.1.tar.xz).
# Config: `make tinyconfig`, then kernel/peapod.config merged on top with
# scripts/kconfig/merge_config.sh -m, then `make olddefconfig`; every option
# the fragment sets is then checked against the final .config.
#
# Output (cached, outside the repository):
#   $CACHE/kernel/<key>/vmlinux   the kernel
#   $CACHE/kernel/<key>/config    its final .config
# where CACHE=${PEAPOD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/peapod} and
# <key> is defined in kernel/README.md (sha256 of the fragment bytes followed
# by the linux-source-6.1 package version). An existing vmlinux is reused.
#
# Progress goes to stderr; the last (and only) stdout line is the absolute
# path of vmlinux.
#
# Environment:
#   PEAPOD_CACHE_DIR     cache root (see above)
#   PEAPOD_KERNEL_JOBS   parallel make jobs (default: nproc)
set -euo pipefail

readonly pkg=linux-source-6.1
readonly tarball=/usr/src/linux-source-6.1.tar.xz
readonly tree_name=linux-source-6.1   # top directory inside the tarball

log() { printf 'peapod-kernel: %s\n' "$*" >&2; }
die() {
    printf 'peapod-kernel: error: %s\n' "$1" >&2
    shift
    local line
    for line in "$@"; do printf '  %s\n' "$line" >&2; done
    exit 1
}

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" >/dev/null && pwd -P)
fragment=$script_dir/peapod.config
[[ -f $fragment ]] || die "config fragment not found: $fragment"

# --- prerequisites ---------------------------------------------------------
[[ $(uname -m) == x86_64 ]] ||
    die "the guest kernel is built natively for x86_64; this host is $(uname -m)"

command -v dpkg-query >/dev/null 2>&1 ||
    die "dpkg-query not found: the kernel build uses Debian's $pkg package (a Debian/Ubuntu host is required)"

if ! pkg_version=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null) || [[ -z $pkg_version ]]; then
    die "package $pkg is not installed" "fix: apt-get install -y $pkg"
fi
[[ -f $tarball ]] ||
    die "$tarball is missing although $pkg $pkg_version is installed" "fix: apt-get install --reinstall -y $pkg"

missing=()
need_cmd() { # need_cmd COMMAND APT-PACKAGE
    command -v "$1" >/dev/null 2>&1 || missing+=("$2 (for $1)")
}
need_cmd gcc gcc
need_cmd ld binutils
need_cmd make make
need_cmd flex flex
need_cmd bison bison
need_cmd bc bc
need_cmd perl perl
need_cmd xz xz-utils
need_cmd tar tar
need_cmd sha256sum coreutils
need_cmd flock util-linux
# objtool (x86_64, ORC unwinder) links against libelf.
[[ -f /usr/include/libelf.h || -f /usr/include/elfutils/libelf.h ]] || missing+=("libelf-dev (for <libelf.h>)")
if ((${#missing[@]})); then
    pkgs=$(printf '%s\n' "${missing[@]}" | cut -d' ' -f1 | sort -u | tr '\n' ' ')
    die "missing kernel build tools:" "${missing[@]}" "fix: apt-get install -y ${pkgs% }"
fi

# --- cache key and paths ---------------------------------------------------
# key = first 16 hex digits of sha256( fragment file bytes ++ package version
# bytes ), no separator, no trailing newline. See kernel/README.md.
key=$({ cat -- "$fragment"; printf '%s' "$pkg_version"; } | sha256sum | cut -c1-16)

if [[ -n ${PEAPOD_CACHE_DIR:-} ]]; then
    cache_root=$PEAPOD_CACHE_DIR
elif [[ -n ${XDG_CACHE_HOME:-} ]]; then
    cache_root=$XDG_CACHE_HOME/peapod
else
    [[ -n ${HOME:-} ]] || die "neither PEAPOD_CACHE_DIR, XDG_CACHE_HOME nor HOME is set" "fix: export PEAPOD_CACHE_DIR=/some/cache/dir"
    cache_root=$HOME/.cache/peapod
fi
mkdir -p -- "$cache_root/kernel" || die "cannot create cache directory $cache_root/kernel"
cache_root=$(cd -- "$cache_root" >/dev/null && pwd -P)

kdir=$cache_root/kernel
out_dir=$kdir/$key
vmlinux=$out_dir/vmlinux

if [[ -f $vmlinux ]]; then
    log "up to date: $vmlinux (key $key)"
    printf '%s\n' "$vmlinux"
    exit 0
fi

# One build at a time per cache (the source tree and build tree are shared).
exec 9>"$kdir/.lock"
if ! flock -n 9; then
    log "another kernel build holds $kdir/.lock; waiting"
    flock 9
fi
if [[ -f $vmlinux ]]; then # built by whoever held the lock
    log "up to date: $vmlinux (key $key)"
    printf '%s\n' "$vmlinux"
    exit 0
fi

# --- source (extracted once per package version) --------------------------
src_parent=$kdir/src/$pkg_version
src=$src_parent/$tree_name
if [[ ! -f $src/.peapod-extracted ]]; then
    log "extracting $tarball ($pkg $pkg_version) into $src_parent"
    rm -rf -- "$src_parent"
    mkdir -p -- "$src_parent"
    tmp_src=$(mktemp -d "$src_parent/.extract.XXXXXX")
    tar -xJf "$tarball" -C "$tmp_src" || die "extracting $tarball failed"
    [[ -f $tmp_src/$tree_name/Makefile ]] ||
        die "$tarball does not contain $tree_name/Makefile; unexpected package layout"
    mv -- "$tmp_src/$tree_name" "$src"
    rmdir -- "$tmp_src"
    touch -- "$src/.peapod-extracted"
fi

# Out-of-tree build directory, shared across keys so that a fragment change
# only recompiles what the change affects.
build=$kdir/build/$pkg_version
mkdir -p -- "$build"

jobs=${PEAPOD_KERNEL_JOBS:-$(nproc)}
[[ $jobs =~ ^[1-9][0-9]*$ ]] || die "PEAPOD_KERNEL_JOBS must be a positive integer, got '$jobs'"

kmake() {
    make -C "$src" O="$build" ARCH=x86_64 \
        KBUILD_BUILD_USER=peapod KBUILD_BUILD_HOST=peapod "$@"
}

# --- configuration ---------------------------------------------------------
log "configuring (tinyconfig + $fragment, key $key)"
config_log=$build/peapod-config.log
rm -f -- "$build/.config"
{
    kmake tinyconfig &&
        (cd -- "$src" && scripts/kconfig/merge_config.sh -m -O "$build" "$build/.config" "$fragment") &&
        kmake olddefconfig
} >"$config_log" 2>&1 || {
    tail -n 30 -- "$config_log" >&2
    die "configuring the kernel failed; full log: $config_log"
}

# Every option the fragment sets must survive olddefconfig; if one did not,
# a dependency is missing from the fragment.
problems=()
lineno=0
while IFS= read -r line || [[ -n $line ]]; do
    lineno=$((lineno + 1))
    if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
        opt=${BASH_REMATCH[1]}
        if ! grep -qxF -- "$line" "$build/.config"; then
            actual=$(grep -E "^${opt}=" "$build/.config" || true)
            problems+=("line $lineno: wanted $line, got ${actual:-"# $opt is not set"}")
        fi
    elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
        opt=${BASH_REMATCH[1]}
        if actual=$(grep -E "^${opt}=" "$build/.config"); then
            problems+=("line $lineno: wanted $opt unset, got $actual (selected by another option)")
        fi
    elif [[ $line =~ ^[[:space:]]*(#.*)?$ ]]; then
        : # comment or blank
    else
        problems+=("line $lineno: not a config line: $line")
    fi
done <"$fragment"
if ((${#problems[@]})); then
    die "the final .config does not match $fragment (missing dependency or wrong value); fix the fragment:" \
        "${problems[@]}" "merge log: $config_log" "see the result in $build/.config (try: make -C $src O=$build menuconfig, search with '/')"
fi
log "all options of the fragment are set as requested"

# --- build -----------------------------------------------------------------
log "building vmlinux with $jobs jobs in $build (several minutes)"
start=$SECONDS
kmake -j"$jobs" vmlinux >&2 || die "kernel build failed (see the output above)"
log "vmlinux built in $((SECONDS - start)) s"

tmp_out=$(mktemp -d "$kdir/.out.XXXXXX")
cp -- "$build/vmlinux" "$tmp_out/vmlinux"
cp -- "$build/.config" "$tmp_out/config"
rm -rf -- "$out_dir"
mv -- "$tmp_out" "$out_dir"
chmod 755 -- "$out_dir"

log "done: $vmlinux"
printf '%s\n' "$vmlinux"

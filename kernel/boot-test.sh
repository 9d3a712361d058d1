#!/usr/bin/env bash
# Boot the peapod guest kernel with the test initramfs under QEMU (microvm
# machine, TCG by default) and check what the guest reports.
#
#   kernel/boot-test.sh [--kernel VMLINUX] [--initrd INITRAMFS] [--smp N]
#                       [--timeout SECONDS] [--accel tcg|kvm] [--append ARGS]
#
# Without --kernel/--initrd, runs kernel/build.sh and
# rootfs/build-test-initramfs.sh (both cached) first.
# The guest console is shown on stderr with timestamps (ms since QEMU start).
# Checks: PEAPOD_GUEST_INIT_OK marker, N CPUs, /dev/vda, /dev/hwrng,
# erofs/ext4/overlay/tmpfs/cgroup2 in /proc/filesystems, cgroup v2
# controllers memory/cpu/pids, mounting an ext4 disk (rw), an erofs disk
# and an overlay on tmpfs. Exit status 0 only if all pass.
#
# Note: this host's /dev/kvm may be PVM rather than hardware KVM; the default
# is TCG, which is slow but exercises the same kernel entry path (PVH).
set -euo pipefail
export LC_ALL=C

log() { printf 'peapod-boot-test: %s\n' "$*" >&2; }
die() { printf 'peapod-boot-test: error: %s\n' "$*" >&2; exit 1; }

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" >/dev/null && pwd -P)
repo=$(dirname -- "$script_dir")

kernel=
initrd=
smp=2
timeout_s=120
accel=tcg
append="console=ttyS0 reboot=k panic=-1"
while (($#)); do
    case $1 in
    --kernel) kernel=${2:?--kernel needs a path}; shift 2 ;;
    --initrd) initrd=${2:?--initrd needs a path}; shift 2 ;;
    --smp) smp=${2:?--smp needs a number}; shift 2 ;;
    --timeout) timeout_s=${2:?--timeout needs seconds}; shift 2 ;;
    --accel) accel=${2:?--accel needs tcg or kvm}; shift 2 ;;
    --append) append="$append ${2:?--append needs arguments}"; shift 2 ;;
    -h | --help) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
    esac
done
[[ $smp =~ ^[1-9][0-9]*$ ]] || die "--smp must be a positive integer"
[[ $timeout_s =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a positive integer"
case $accel in
tcg) cpu=max ;;
kvm) cpu=host ;;
*) die "--accel must be tcg or kvm" ;;
esac

command -v qemu-system-x86_64 >/dev/null 2>&1 ||
    die "qemu-system-x86_64 not found; fix: apt-get install -y qemu-system-x86"
((BASH_VERSINFO[0] >= 5)) || die "bash >= 5 is needed (EPOCHREALTIME)"

if [[ -z $kernel ]]; then
    log "building (or reusing) the kernel"
    kernel=$("$repo/kernel/build.sh" | tail -n 1)
fi
if [[ -z $initrd ]]; then
    log "building the test initramfs"
    initrd=$("$repo/rootfs/build-test-initramfs.sh" | tail -n 1)
fi
[[ -f $kernel ]] || die "kernel $kernel not found"
[[ -f $initrd ]] || die "initramfs $initrd not found"

work=$(mktemp -d "${TMPDIR:-/tmp}/peapod-boot-test.XXXXXX")
qemu_pid=
cleanup() {
    if [[ -n $qemu_pid ]] && kill -0 "$qemu_pid" 2>/dev/null; then kill "$qemu_pid" 2>/dev/null || true; fi
    rm -rf -- "$work"
}
trap cleanup EXIT
# Disk 1: ext4 (mounted read-write by the test init), disk 2: erofs.
truncate -s 8M "$work/disk.raw"
fs_checks=()
if command -v mkfs.ext4 >/dev/null 2>&1; then
    mkfs.ext4 -q -F "$work/disk.raw" >&2 || die "mkfs.ext4 failed"
    fs_checks+=(ext4)
else
    log "mkfs.ext4 not found (apt-get install -y e2fsprogs): ext4 mount not checked"
fi
mkdir "$work/erofs-src"
echo "hello from erofs" >"$work/erofs-src/hello"
erofs_disk=()
if command -v mkfs.erofs >/dev/null 2>&1; then
    mkfs.erofs "$work/disk2.erofs" "$work/erofs-src" >"$work/mkfs.erofs.log" 2>&1 ||
        die "mkfs.erofs failed: $(cat "$work/mkfs.erofs.log")"
    erofs_disk=(-drive "id=d1,file=$work/disk2.erofs,format=raw,if=none,readonly=on" -device "virtio-blk-device,drive=d1")
    fs_checks+=(erofs)
else
    log "mkfs.erofs not found (apt-get install -y erofs-utils): erofs mount not checked"
fi

qemu=(
    qemu-system-x86_64 -M "microvm,acpi=off" -accel "$accel" -cpu "$cpu" -smp "$smp" -m 512
    -nodefaults -no-user-config -display none -no-reboot -monitor none
    -kernel "$kernel" -initrd "$initrd" -append "$append"
    -serial stdio
    -device virtio-rng-device
    -drive "id=d0,file=$work/disk.raw,format=raw,if=none" -device "virtio-blk-device,drive=d0"
    "${erofs_disk[@]}"
    -netdev "user,id=n0" -device "virtio-net-device,netdev=n0"
)
log "kernel: $kernel"
log "initrd: $initrd"
log "running: ${qemu[*]}"

console=$work/console.log
to_ms() { local t=${1/./}; printf '%s' $((10#$t / 1000)); }
start_ms=$(to_ms "$EPOCHREALTIME")
marker_ms=
exec 3< <(exec timeout "$timeout_s" "${qemu[@]}" </dev/null 2>&1)
qemu_pid=$!
while IFS= read -r line <&3; do
    line=${line%$'\r'}
    now_ms=$(to_ms "$EPOCHREALTIME")
    printf '[%6d ms] %s\n' $((now_ms - start_ms)) "$line" >&2
    printf '%s\n' "$line" >>"$console"
    case $line in
    *PEAPOD_GUEST_INIT_OK*) [[ -n $marker_ms ]] || marker_ms=$((now_ms - start_ms)) ;;
    # microvm without ACPI cannot power off: stop QEMU once the guest is done.
    *"reboot: Power down"* | *"reboot: System halted"*) kill "$qemu_pid" 2>/dev/null || true ;;
    esac
done
exec 3<&-
total_ms=$(($(to_ms "$EPOCHREALTIME") - start_ms))
touch "$console"

failures=()
check() { # check DESCRIPTION EXTENDED-REGEX
    if grep -qE -- "$2" "$console"; then
        log "PASS: $1"
    else
        log "FAIL: $1"
        failures+=("$1")
    fi
}
check "init marker PEAPOD_GUEST_INIT_OK" '^PEAPOD_GUEST_INIT_OK$'
check "$smp CPUs online (nproc)" "^peapod-test: nproc $smp\$"
check "/dev/vda (virtio-blk)" '^peapod-test: device /dev/vda present$'
check "/dev/hwrng (virtio-rng)" '^peapod-test: device /dev/hwrng present$'
for fs in erofs ext4 overlay tmpfs cgroup2; do
    check "filesystem $fs" "^peapod-test: fs $fs present\$"
done
for c in memory cpu pids; do
    check "cgroup v2 controller $c" "^peapod-test: cgroup_controllers .*\\b$c\\b"
done
for fs in "${fs_checks[@]}"; do
    check "mount $fs from a virtio disk" "^peapod-test: mount $fs /dev/vd[a-z] ok"
done
check "overlayfs mount on tmpfs" '^peapod-test: mount overlay ok$'
check "init finished" '^PEAPOD_GUEST_INIT_DONE$'

if [[ -n $marker_ms ]]; then
    log "time from QEMU start to marker: $marker_ms ms ($accel, $smp vCPUs); whole run: $total_ms ms"
fi
if ((${#failures[@]})); then
    die "${#failures[@]} check(s) failed: ${failures[*]}"
fi
log "all checks passed"

#!/bin/busybox sh
# shellcheck shell=dash
# peapod test init: a tiny stand-in for the peapod guest agent.
#
# Runs as PID 1 from the initramfs built by rootfs/build-test-initramfs.sh
# (Debian's static busybox at /bin/busybox; its shell runs applets directly).
# Sends the VMM's boot signal, prints PEAPOD_GUEST_INIT_OK plus what the guest
# sees, then reboots, which ends the VM (`reboot=k`: the i8042 reset; QEMU
# with -no-reboot exits too).
# Lines start with "peapod-test:" so that a harness can grep them.

export PATH=/bin:/sbin
# Applets are run through /proc/self/exe, so mount /proc by full path first.
/bin/busybox mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup

# peapod's boot signal: the byte 123 written to guest-physical 0xc0000000 (see
# src/vmm/devices/boot_signal.rs). Needs /dev/mem (a kernel with CONFIG_DEVMEM).
if [ -c /dev/mem ] && devmem 0xc0000000 8 123 2>/dev/null; then
    boot_signal="sent"
else
    boot_signal="unavailable (no /dev/mem: kernel without CONFIG_DEVMEM)"
fi

# A test mode chosen on the kernel command line (`peapod.test=MODE`); without one, the
# default report below.
mode=$(sed -n 's/.*peapod\.test=\([^ ]*\).*/\1/p' /proc/cmdline)
case $mode in
e2e)
    # peapod's VMM end-to-end test (tests/e2e/kvm_tests.rs), all in one boot:
    # - CPUs: prints nproc;
    # - /dev/vda, a raw disk: prints the text at its start, writes a pattern at 4 KiB;
    # - vsock, where the VM has a virtio-vsock device: an echo server on port 5001 for two
    #   host connections (a ping, then bulk data), and a round trip to the host's listener
    #   on CID 2 port 5000.
    echo "PEAPOD_GUEST_INIT_OK"
    echo "peapod-test: boot_signal $boot_signal"
    echo "peapod-test: nproc $(nproc)"
    if [ -b /dev/vda ]; then
        echo "peapod-test: disk_read $(head -c 64 /dev/vda | tr -dc 'A-Za-z0-9_-')"
        printf 'PEAPOD-GUEST-WROTE-THIS' | dd of=/dev/vda bs=512 seek=8 conv=notrunc 2>/dev/null &&
            sync && echo "peapod-test: disk_write ok"
    fi
    # /dev/vsock exists whenever the kernel has vsock; only a virtio-vsock device (virtio
    # id 19) brings a host to talk to (a VM booted without --vsock would wait for the
    # listener's timeout).
    if grep -qx 0x0013 /sys/bus/virtio/devices/*/device 2>/dev/null; then
        timeout 120 peapod-vsock-probe listen 5001 2 &
        listener=$!
        peapod-vsock-probe send 2 5000 hello-from-guest
        wait $listener
    fi
    echo "PEAPOD_GUEST_INIT_DONE"
    reboot -f
    ;;
hostile)
    # peapod's hostile-guest test (tests/e2e/kvm_tests.rs, hostile_guest_cannot_hurt_the_vmm):
    # the guest's own virtio drivers let go of every device, then peapod-hostile drives them
    # by hand through /dev/mem with malformed state, one line per case.
    echo "PEAPOD_GUEST_INIT_OK"
    for dev in /sys/bus/platform/drivers/virtio-mmio/*; do
        [ -L "$dev" ] && echo "${dev##*/}" > /sys/bus/platform/drivers/virtio-mmio/unbind
    done
    peapod-hostile
    echo "PEAPOD_HOSTILE_EXIT $?"
    echo "PEAPOD_GUEST_INIT_DONE"
    reboot -f
    ;;
esac

echo "PEAPOD_GUEST_INIT_OK"
echo "peapod-test: boot_signal $boot_signal"
echo "peapod-test: uptime_s $(cut -d' ' -f1 /proc/uptime)"
echo "peapod-test: kernel $(uname -r) $(uname -m)"
echo "peapod-test: nproc $(nproc)"
echo "peapod-test: mem_total $(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2-)"
for dev in /dev/console /dev/vda /dev/hwrng /dev/vsock; do
    if [ -e "$dev" ]; then
        echo "peapod-test: device $dev present"
    else
        echo "peapod-test: device $dev MISSING"
    fi
done
echo "peapod-test: hwrng_current $(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)"
names() { for f in "$1"/*; do [ -e "$f" ] && printf '%s ' "${f##*/}"; done; }
echo "peapod-test: virtio_devices $(names /sys/bus/virtio/devices)"
echo "peapod-test: netdevs $(names /sys/class/net)"
echo "peapod-test: filesystems $(grep -v '^nodev' /proc/filesystems | tr -d '\t' | tr '\n' ' ')" \
    "nodev: $(grep '^nodev' /proc/filesystems | cut -f2 | tr '\n' ' ')"
for fs in erofs ext4 overlay tmpfs cgroup2 proc sysfs devtmpfs; do
    if grep -qw "$fs" /proc/filesystems; then
        echo "peapod-test: fs $fs present"
    else
        echo "peapod-test: fs $fs MISSING"
    fi
done
echo "peapod-test: cgroup_controllers $(cat /sys/fs/cgroup/cgroup.controllers 2>/dev/null)"
echo "peapod-test: namespaces $(names /proc/self/ns)"
echo "peapod-test: seccomp $(grep '^Seccomp' /proc/self/status | tr -d '\t' | tr '\n' ' ')"
ip link set lo up 2>/dev/null && echo "peapod-test: lo $(ip -o addr show lo | tr -s ' ' | cut -d' ' -f4 | tr '\n' ' ')"
# Block devices: try ext4 (read-write) and erofs on each virtio disk.
for dev in /dev/vd?; do
    [ -b "$dev" ] || continue
    mnt=/mnt/${dev##*/}
    mkdir -p "$mnt"
    if mount -t ext4 "$dev" "$mnt" 2>/dev/null; then
        echo peapod > "$mnt/written-by-guest" && sync &&
            echo "peapod-test: mount ext4 $dev ok (rw)"
    elif mount -t erofs -o ro "$dev" "$mnt" 2>/dev/null; then
        echo "peapod-test: mount erofs $dev ok: $(cat "$mnt/hello" 2>/dev/null)"
    fi
done
# overlayfs with a tmpfs upper layer, the layout of a container rootfs.
mount -t tmpfs tmpfs /run
mkdir -p /run/ovl/upper /run/ovl/work /run/ovl/merged
if mount -t overlay overlay -o lowerdir=/bin,upperdir=/run/ovl/upper,workdir=/run/ovl/work /run/ovl/merged &&
    touch /run/ovl/merged/new && [ -e /run/ovl/upper/new ]; then
    echo "peapod-test: mount overlay ok"
fi
echo "PEAPOD_GUEST_INIT_DONE"

# Without ACPI, poweroff only halts the CPUs; a reboot ends the VM.
reboot -f

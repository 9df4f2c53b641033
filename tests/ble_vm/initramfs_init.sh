#!/bin/sh
# /init of the ble-vm initramfs (busybox sh, PID 1 in the guest). It loads the modules, mounts
# the HOST root read-only over virtio-9p at /host plus the writable out/ share on top of it, then
# chroots into the host root to run guest_main.sh. No disk image: the guest uses the host's own
# bluez, dbus, python and the project's venv.
# Kernel command line parameters (set by run.sh):
#   blevm.out=DIR   host path of the writable output dir (shared as mount tag "outshare")
#   blevm.main=FILE host path of the script to run inside the chroot
#   blevm.repo=DIR  host path of the repo (also shared as mount tag "reposhare", read-only): mounted at its own
#                   path only when the tmpfs mounts below hide it, e.g. a CI clone under /tmp
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
OUT=''
MAIN=''
REPO=''
# shellcheck disable=SC2013  # the command line is one line of blank-separated words
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        blevm.out=*) OUT=${arg#blevm.out=} ;;
        blevm.main=*) MAIN=${arg#blevm.main=} ;;
        blevm.repo=*) REPO=${arg#blevm.repo=} ;;
    esac
done
# modules.list is in dependency order (built by setup.sh), so plain insmod is enough.
while read -r m; do insmod "$m" || echo "init: insmod $m failed"; done < /modules.list

halt() { echo "init: $*"; sync; poweroff -f; }
# cache=loose: the root is read-only and does not change during the run; caching makes python
# imports several times faster over 9p. out/ is not cached so the host sees every write at once.
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 hostroot /host \
    || halt "cannot mount the host root over 9p"
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mkdir -p /host/dev/pts /host/dev/shm   # devtmpfs does not have them
mount -t devpts devpts /host/dev/pts
mount -t tmpfs tmpfs /host/dev/shm
# Everything that must be writable inside the read-only host root gets a tmpfs: /run (dbus
# socket), /tmp and /var/tmp (pytest's tmp_path, HOME), /var/lib/bluetooth (bluetoothd state).
for d in /run /tmp /var/tmp /var/lib/bluetooth; do
    [ -d "/host$d" ] && mount -t tmpfs tmpfs "/host$d"
done
# A repo under one of those (CI clones into mktemp -d, i.e. /tmp) is hidden now: mount its own share there.
if [ -n "$REPO" ] && [ ! -d "/host$REPO/tests/ble_vm" ]; then
    mkdir -p "/host$REPO" \
        && mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 reposhare "/host$REPO" \
        || halt "cannot mount the repo share at $REPO"
fi
# out/ last, on top of whatever now shows its path.
mount -t 9p -o trans=virtio,version=9p2000.L,rw,msize=262144 outshare "/host$OUT" \
    || halt "cannot mount the out/ share at $OUT"
echo "init: mounts done at $(cut -d' ' -f1 /proc/uptime)s"
chroot /host /bin/bash "$MAIN" "$OUT"
echo "init: guest main exited $? at $(cut -d' ' -f1 /proc/uptime)s"
halt "powering off"

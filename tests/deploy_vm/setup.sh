#!/usr/bin/env bash
# One-command, idempotent set-up of the deploy tier (run as root on a Debian host); each step keeps a stamp and is
# skipped when its inputs have not changed, so a second run takes a few seconds:
#   1. host packages: debootstrap, qemu, qemu-img, mke2fs
#   2. a Debian root filesystem (debootstrap, $SUITE) with systemd, the kernel, BlueZ and btvirt
#   3. the packages docs/DEPLOY.md's `bash deploy` blocks install with apt, pre-installed: the guest has no network,
#      so its `apt install` finds them installed (a package Debian does not have gets a stand-in, see README)
#   4. gpio-sim: Debian's kernels do not build it (CONFIG_GPIO_SIM is not set), so it is compiled here from the
#      kernel's own source package (drivers/gpio/gpio-sim.c, with kernel/irq/irq_sim.c, also not built) against
#      the guest kernel's headers; lgpio built from its sdist (PyPI has no wheel for CPython 3.13) and installed
#      into the system python, as Raspberry Pi OS's python3-lgpio package is; the build tools are removed again
#   5. a wheelhouse with the project's dependencies for the guest's python (the guest's pip installs from it)
#   6. the guest's own settings (fstab for the 9p shares, the test driver's unit), a small initrd, and the disk
#      image (ext4, built from the directory with mke2fs -d; each run boots a copy-on-write overlay of it)
# Environment: DEPLOY_VM_WORK (default .deploy-vm/), DEPLOY_VM_SUITE (trixie), DEPLOY_VM_MIRROR.
set -euo pipefail
# shellcheck source=tests/deploy_vm/common.sh
. "$(dirname "$(readlink -f "$0")")/common.sh"

[ "$(id -u)" = 0 ] || die "setup.sh needs root (debootstrap, chroot)"
export DEBIAN_FRONTEND=noninteractive
mkdir -p "$WORK"
t_start=$SECONDS
STAMPS=$ROOTFS/.dkey-vm

# Run a command in the rootfs with the pseudo file systems a package's scripts expect; unmounted on return.
in_root() {
    mount -t proc proc "$ROOTFS/proc"
    mount --bind /dev "$ROOTFS/dev"
    mount -t sysfs sys "$ROOTFS/sys"
    local rc=0
    chroot "$ROOTFS" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root DEBIAN_FRONTEND=noninteractive \
        LC_ALL=C.UTF-8 "$@" || rc=$?
    umount "$ROOTFS/sys" "$ROOTFS/dev" "$ROOTFS/proc"
    return "$rc"
}
stamp_ok() { [ "$(cat "$STAMPS/$1.stamp" 2>/dev/null)" = "$2" ]; }
stamp_set() { mkdir -p "$STAMPS"; echo "$2" > "$STAMPS/$1.stamp"; }

# --- 1. host packages ---------------------------------------------------------------------------
HOST_PACKAGES=(debootstrap qemu-system-x86 qemu-utils e2fsprogs)
missing=()
for p in "${HOST_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
        || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; }
fi

# --- 2. the root filesystem ---------------------------------------------------------------------
if stamp_ok debootstrap "$SUITE $BASE_PACKAGES"; then
    log "rootfs ($SUITE) present"
else
    log "debootstrap $SUITE into $ROOTFS (a few minutes, once)"
    rm -rf "$ROOTFS.partial"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$ROOTFS.partial" "$MIRROR" \
        > "$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log: $WORK/debootstrap.log)"; }
    rm -rf "$ROOTFS" && mv "$ROOTFS.partial" "$ROOTFS"
    stamp_set debootstrap "$SUITE $BASE_PACKAGES"
fi
KV=$(guest_kv) || die "no kernel in $ROOTFS/boot"

# apt-get update in the rootfs only when an install fails (lists missing or stale).
root_apt_install() {
    in_root apt-get install -y -q --no-install-recommends "$@" >&2 \
        || { in_root apt-get update -q >&2 && in_root apt-get install -y -q --no-install-recommends "$@" >&2; }
}
# Packages Debian does not have, which the guest gets a stand-in for (README "Stand-ins").
STANDIN_PACKAGES="python3-lgpio"

# --- 3. the packages docs/DEPLOY.md installs ----------------------------------------------------
doc_apt_packages > /dev/null || die "cannot read the deploy blocks of docs/DEPLOY.md"
mapfile -t DOC_PACKAGES < <(doc_apt_packages)
if stamp_ok doc-packages "${DOC_PACKAGES[*]}"; then
    log "DEPLOY.md's apt packages present: ${DOC_PACKAGES[*]}"
else
    real=()
    for p in "${DOC_PACKAGES[@]}"; do
        case " $STANDIN_PACKAGES " in *" $p "*) continue ;; esac
        real+=("$p")
    done
    log "installing DEPLOY.md's apt packages into the rootfs: ${real[*]}"
    [ ${#real[@]} -eq 0 ] || root_apt_install "${real[@]}"
    in_root apt-mark manual "${real[@]}" >/dev/null
    stamp_set doc-packages "${DOC_PACKAGES[*]}"
fi

# --- 4. gpio-sim and lgpio ----------------------------------------------------------------------
LGPIO_VERSION=0.2.2.0
BUILD_STAMP="$KV lgpio-$LGPIO_VERSION $(sha256sum "$DVM_DIR/setup.sh" | cut -c1-8)"
if stamp_ok build "$BUILD_STAMP"; then
    log "gpio-sim module and lgpio present"
else
    log "building gpio-sim for $KV and lgpio $LGPIO_VERSION in the rootfs"
    src_pkg="linux-source-$(echo "$KV" | cut -d. -f1,2)"
    BUILD_DEPS=("linux-headers-$KV" gcc make libc6-dev swig python3-dev)
    # Only what is not installed yet is removed again afterwards: a build tool DEPLOY.md installs stays.
    new=()
    for p in "${BUILD_DEPS[@]}"; do
        in_root dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || new+=("$p")
    done
    [ ${#new[@]} -eq 0 ] || root_apt_install "${new[@]}"
    rm -rf "$ROOTFS/tmp/build" && mkdir -p "$ROOTFS/tmp/build/gpio-sim"
    (cd "$ROOTFS/tmp/build" && in_root sh -c "cd /tmp/build && apt-get download -q -o APT::Sandbox::User=root $src_pkg" >&2) \
        || { in_root apt-get update -q >&2 && in_root sh -c "cd /tmp/build && apt-get download -q -o APT::Sandbox::User=root $src_pkg" >&2; }
    # Only three files of the ~150 MB source tarball are needed.
    dpkg-deb --fsys-tarfile "$ROOTFS"/tmp/build/"$src_pkg"_*.deb | tar -xO "./usr/src/$src_pkg.tar.xz" \
        | tar -xJ -C "$ROOTFS/tmp/build" "$src_pkg/drivers/gpio/gpio-sim.c" "$src_pkg/drivers/gpio/gpiolib.h" \
            "$src_pkg/kernel/irq/irq_sim.c"
    b=$ROOTFS/tmp/build
    cp "$b/$src_pkg/drivers/gpio/gpio-sim.c" "$b/gpio-sim/gpio_sim_main.c"
    cp "$b/$src_pkg/drivers/gpio/gpiolib.h" "$b/gpio-sim/"
    # irq_sim.c calls irq_to_desc(), which the kernel does not export to modules: generic_handle_irq_safe()
    # (exported) runs the same handler (handle_simple_irq, set in irq_sim_domain_map) for the same irq.
    sed 's/handle_simple_irq(irq_to_desc(irqnum));/generic_handle_irq_safe(irqnum);/' \
        "$b/$src_pkg/kernel/irq/irq_sim.c" > "$b/gpio-sim/irq_sim.c"
    grep -q 'generic_handle_irq_safe(irqnum)' "$b/gpio-sim/irq_sim.c" || die "irq_sim.c changed: the patch no longer applies"
    printf 'obj-m += gpio-sim.o\ngpio-sim-y := gpio_sim_main.o irq_sim.o\n' > "$b/gpio-sim/Kbuild"
    in_root make -s -C "/lib/modules/$KV/build" M=/tmp/build/gpio-sim modules >&2 || die "building gpio-sim failed"
    install -D -m 0644 "$b/gpio-sim/gpio-sim.ko" "$ROOTFS/lib/modules/$KV/updates/gpio-sim.ko"
    in_root depmod "$KV"
    # lgpio: its sdist builds its C library into the module with PYPI=1 (docs/DEPLOY.md); the host's CA bundle
    # lets pip in the chroot through this machine's TLS proxy, if it has one.
    cp /etc/ssl/certs/ca-certificates.crt "$b/ca.crt"
    in_root sh -c "python3 -m venv /tmp/build/venv && PIP_CERT=/tmp/build/ca.crt PYPI=1 /tmp/build/venv/bin/pip wheel -q \
        --disable-pip-version-check -w /tmp/build/wheels lgpio==$LGPIO_VERSION" >&2 || die "building lgpio failed"
    in_root sh -c '/tmp/build/venv/bin/pip install -q --disable-pip-version-check --no-deps --no-index \
        --target "$(python3 -c "import sys; print(f\"/usr/local/lib/python3.{sys.version_info[1]}/dist-packages\")")" \
        /tmp/build/wheels/lgpio-*.whl' >&2
    mkdir -p "$WORK/wheels" && cp "$b"/wheels/lgpio-*.whl "$WORK/wheels/"
    if [ ${#new[@]} -gt 0 ]; then
        in_root apt-mark auto "${new[@]}" >/dev/null
        in_root apt-get autoremove -y -q --purge >&2
    fi
    rm -rf "$b"
    in_root apt-get clean
    stamp_set build "$BUILD_STAMP"
fi
# A stand-in package for what Debian lacks, so that DEPLOY.md's `apt install` finds it installed.
for p in "${DOC_PACKAGES[@]}"; do
    case " $STANDIN_PACKAGES " in *" $p "*) ;; *) continue ;; esac
    if ! in_root dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        log "installing a stand-in package $p (lgpio is in the system python: step 4)"
        d=$(mktemp -d)
        mkdir -p "$d/DEBIAN"
        printf 'Package: %s\nVersion: %s-0dkeyvm\nArchitecture: all\nMaintainer: deploy-vm <none>\nDescription: deploy-vm stand-in: lgpio %s is installed in /usr/local (Debian has no python3-lgpio)\n' \
            "$p" "$LGPIO_VERSION" "$LGPIO_VERSION" > "$d/DEBIAN/control"
        dpkg-deb -b "$d" "$ROOTFS/tmp/$p.deb" >/dev/null
        in_root dpkg -i "/tmp/$p.deb" >&2
        rm -rf "$d" "$ROOTFS/tmp/$p.deb"
    fi
done

# --- 5. wheelhouse ------------------------------------------------------------------------------
WHEELHOUSE=$WORK/wheelhouse
WH_STAMP=$(sha256sum "$REPO/pyproject.toml" | cut -c1-16)
if [ -f "$WHEELHOUSE/.stamp" ] && [ "$(cat "$WHEELHOUSE/.stamp")" = "$WH_STAMP" ]; then
    log "wheelhouse up to date"
else
    log "filling the wheelhouse for the guest's python"
    [ -x "$REPO/.venv/bin/python" ] || "$REPO/dev" test --co -q >/dev/null 2>&1 || true
    b=$ROOTFS/tmp/wh && rm -rf "$b" && mkdir -p "$b/dist" "$b/wheels"
    "$REPO/.venv/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps -w "$b/dist" "$REPO" >&2 \
        || die "building the project's wheel failed"
    cp /etc/ssl/certs/ca-certificates.crt "$b/ca.crt"
    # Every extra's dependencies: whichever install DEPLOY.md chooses, its packages are here.
    in_root sh -c 'python3 -m venv /tmp/wh/venv && w=$(ls /tmp/wh/dist/*.whl) && PIP_CERT=/tmp/wh/ca.crt \
        /tmp/wh/venv/bin/pip download -q --disable-pip-version-check -d /tmp/wh/wheels "$w[pi,server]" lgpio' >&2 \
        || die "pip download for the wheelhouse failed"
    rm -f "$b"/wheels/wearable_dkey-*.whl "$b"/wheels/lgpio-*.tar.gz
    cp "$WORK"/wheels/lgpio-*.whl "$b/wheels/"
    rm -rf "$WHEELHOUSE" && mv "$b/wheels" "$WHEELHOUSE" && rm -rf "$b"
    echo "$WH_STAMP" > "$WHEELHOUSE/.stamp"
fi

# --- 6. guest settings, initrd and disk image ---------------------------------------------------
GUEST_STAMP=$(sha256sum "$DVM_DIR/setup.sh" "$DVM_DIR/guest/dkey-vm-driver.service" | sha256sum | cut -c1-16)
if stamp_ok guest "$GUEST_STAMP"; then
    log "guest settings present"
else
    log "writing the guest's settings"
    echo dkey-vm > "$ROOTFS/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 dkey-vm\n' > "$ROOTFS/etc/hosts"
    # The two 9p shares of run.sh: the run's files (read-only) and the output directory.
    cat > "$ROOTFS/etc/fstab" <<'FSTAB'
/dev/vda / ext4 rw,errors=remount-ro 0 1
dkeyvm /mnt/dkey-vm 9p trans=virtio,version=9p2000.L,ro,msize=262144,nofail 0 0
dkeyout /mnt/out 9p trans=virtio,version=9p2000.L,rw,msize=262144,nofail 0 0
FSTAB
    mkdir -p "$ROOTFS/mnt/dkey-vm" "$ROOTFS/mnt/out" "$ROOTFS/var/log/journal"
    install -m 0644 "$DVM_DIR/guest/dkey-vm-driver.service" "$ROOTFS/etc/systemd/system/"
    ln -sf /etc/systemd/system/dkey-vm-driver.service "$ROOTFS/etc/systemd/system/multi-user.target.wants/"
    # Timers that would compete for the two emulated CPUs (no network anyway); no login prompt on the console.
    for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer dpkg-db-backup.timer \
        man-db.timer serial-getty@ttyS0.service getty@tty1.service; do
        ln -sf /dev/null "$ROOTFS/etc/systemd/system/$u"
    done
    # A small initrd: the root is on virtio-blk, ext4; MODULES=most would pack every storage driver (~37 MB).
    sed -i 's/^MODULES=.*/MODULES=list/' "$ROOTFS/etc/initramfs-tools/initramfs.conf"
    printf 'virtio_pci\nvirtio_blk\next4\n' > "$ROOTFS/etc/initramfs-tools/modules"
    in_root update-initramfs -u -k "$KV" >&2
    stamp_set guest "$GUEST_STAMP"
fi

IMAGE=$WORK/base.img
STAMP=$(image_stamp)
if [ -f "$IMAGE" ] && [ "$(cat "$WORK/base.img.stamp" 2>/dev/null)" = "$STAMP" ]; then
    log "disk image up to date"
else
    log "building the disk image from $ROOTFS"
    rm -f "$IMAGE.partial"
    mke2fs -q -t ext4 -L dkeyroot -d "$ROOTFS" "$IMAGE.partial" 4G || die "mke2fs -d failed"
    mkdir -p "$WORK/boot"
    cp "$ROOTFS/boot/vmlinuz-$KV" "$WORK/boot/vmlinuz"
    cp "$ROOTFS/boot/initrd.img-$KV" "$WORK/boot/initrd.img"
    mv "$IMAGE.partial" "$IMAGE"
    echo "$STAMP" > "$WORK/base.img.stamp"
    log "disk image: $(du -h "$IMAGE" | cut -f1) used of 4G, initrd $(du -h "$WORK/boot/initrd.img" | cut -f1)"
fi

log "setup done in $((SECONDS - t_start)) s (Debian $SUITE, kernel $KV, work dir $WORK)"

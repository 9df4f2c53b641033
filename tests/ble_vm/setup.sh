#!/usr/bin/env bash
# One-command, idempotent set-up of the real-stack BLE test tier (run as root on a Debian host):
#   - apt packages: qemu, BlueZ (bluetoothd, btmon, btmgmt), btvirt, busybox, dbus, kmod
#   - the current Debian kernel, downloaded and unpacked into the work dir (NOT installed: the
#     host kernel has no Bluetooth, so the link runs in a QEMU guest booting this kernel)
#   - the project's venv (the guest runs it through a read-only 9p view of the host root)
#   - a small initramfs: busybox + the kernel modules the guest needs + initramfs_init.sh
# A second run only checks and takes a few seconds. Environment: BLE_VM_WORK (default .ble-vm/).
set -euo pipefail
# shellcheck source=tests/ble_vm/common.sh
. "$(dirname "$(readlink -f "$0")")/common.sh"

PACKAGES=(qemu-system-x86 bluez bluez-test-tools busybox-static dbus kmod)
export DEBIAN_FRONTEND=noninteractive
mkdir -p "$WORK"
t_start=$SECONDS

# apt-get update is slow-ish and needs the network: run it at most once, and only when a step
# fails or finds nothing (no package lists yet, or lists so old that the mirror dropped a file).
APT_UPDATED=0
apt_update_once() {
    [ "$APT_UPDATED" = 1 ] && return 1
    log "apt-get update"
    apt-get update -q >&2
    APT_UPDATED=1
}
# Run a command; if it fails and apt-get update has not run yet, update and try once more.
with_apt_update() {
    "$@" || { apt_update_once && "$@"; }
}

# --- 1. apt packages ---------------------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    with_apt_update apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >&2
else
    log "apt packages present"
fi

# --- 2. kernel ---------------------------------------------------------------------------------
# The kernel ABI changes with Debian point releases (6.1.0-40 -> 6.1.0-41 ...), and the mirror
# keeps only the current one: resolve it from the linux-image-amd64 meta package every time.
resolve_kv() {
    apt-cache depends linux-image-amd64 2>/dev/null \
        | sed -n 's/^ *Depends: linux-image-\([0-9].*-amd64\)$/\1/p' | head -1
}
KV=$(resolve_kv)
if [ -z "$KV" ] && apt_update_once; then KV=$(resolve_kv); fi
if [ -z "$KV" ]; then
    # Offline and no package lists: keep using what an earlier run unpacked, if anything.
    KV=$(current_kv) || die "cannot resolve the kernel from 'apt-cache depends linux-image-amd64'"
    log "warning: cannot resolve linux-image-amd64; keeping kernel $KV"
fi
KDIR=$WORK/kernel/$KV
if [ -f "$KDIR/boot/vmlinuz-$KV" ] && [ -f "$KDIR/lib/modules/$KV/modules.dep" ]; then
    log "kernel $KV present"
else
    log "downloading linux-image-$KV"
    debs=$WORK/debs
    rm -rf "$debs" "$KDIR.partial"
    mkdir -p "$debs" "$WORK/kernel"
    # The lists may name a version the mirror no longer has: with_apt_update re-resolves then.
    # Sandbox user root: _apt cannot write into a root-owned work dir (apt only warns, but loudly).
    fetch_kernel() { (cd "$debs" && apt-get download -q -o APT::Sandbox::User=root "linux-image-$KV" >&2); }
    if ! fetch_kernel; then
        apt_update_once || die "apt-get download linux-image-$KV failed"
        KV=$(resolve_kv); KDIR=$WORK/kernel/$KV
        fetch_kernel || die "apt-get download linux-image-$KV failed"
    fi
    # Unpack (not install) into a temporary dir and rename it at the end, so an interrupted
    # run is never mistaken for a finished one.
    dpkg -x "$debs"/linux-image-"${KV}"_*.deb "$KDIR.partial"
    depmod -b "$KDIR.partial" "$KV"
    rm -rf "$KDIR" && mv "$KDIR.partial" "$KDIR"
    rm -rf "$debs"   # ~100 MB, not needed once unpacked
fi
# Drop kernels of older ABIs left by earlier runs (each is ~400 MB unpacked).
for d in "$WORK"/kernel/*/; do
    [ "$(basename "$d")" = "$KV" ] || { log "removing old kernel ${d%/}"; rm -rf "$d"; }
done
echo "$KV" > "$WORK/kernel/current"

# --- 3. the project's venv ---------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    log "creating the project venv with ./dev"
    # ./dev creates .venv and installs the project; --co only collects (no tests run). Its exit
    # code is not ours to judge (5 = no tests collected); the import check below is.
    "$REPO/dev" test --co -q >/dev/null || true
fi
"$VENV/bin/python" -c 'import bless, bleak, pytest, pytest_asyncio' \
    || die "$VENV lacks bless/bleak/pytest/pytest-asyncio: run ./dev test once"

# --- 4. initramfs ------------------------------------------------------------------------------
INITRD=$WORK/initramfs.cpio.gz
STAMP=$(initramfs_stamp "$KV")
if [ -f "$INITRD" ] && [ "$(cat "$WORK/initramfs.stamp" 2>/dev/null)" = "$STAMP" ]; then
    log "initramfs up to date"
else
    log "building the initramfs for $KV"
    R=$WORK/initramfs.root
    rm -rf "$R"
    mkdir -p "$R"/{bin,sbin,proc,sys,dev,host,lib/modules/"$KV"}
    cp /bin/busybox "$R/bin/busybox"
    for a in sh mount umount mkdir insmod modprobe chroot poweroff cat cut echo sleep ls dmesg sync; do
        ln -s busybox "$R/bin/$a"
    done
    ln -s ../bin/busybox "$R/sbin/modprobe"
    MODROOT=$KDIR/lib/modules/$KV
    # modprobe --show-depends prints "insmod <file>" lines, dependencies first ("builtin ..."
    # for code compiled into the kernel). Keep the first occurrence of each file, in order.
    for m in $GUEST_MODULES; do
        modprobe -d "$KDIR" -S "$KV" --show-depends "$m" | awk '$1 == "insmod" { print $2 }'
    done | awk '!seen[$0]++' > "$R/modules.src"
    : > "$R/modules.list"
    while read -r f; do
        rel=${f#"$MODROOT"/}
        dst=$R/lib/modules/$KV/$rel
        mkdir -p "$(dirname "$dst")"
        # Newer Debian kernels ship compressed modules; busybox insmod wants plain .ko files.
        case "$f" in
            *.ko.xz) xz -dc "$f" > "${dst%.xz}"; dst=${dst%.xz} ;;
            *.ko.zst) zstd -qdc "$f" > "${dst%.zst}"; dst=${dst%.zst} ;;
            *.ko.gz) gzip -dc "$f" > "${dst%.gz}"; dst=${dst%.gz} ;;
            *) cp "$f" "$dst" ;;
        esac
        echo "${dst#"$R"}" >> "$R/modules.list"
    done < "$R/modules.src"
    rm "$R/modules.src"
    [ -s "$R/modules.list" ] || die "no modules resolved for $GUEST_MODULES"
    # modules.dep lets the kernel's on-demand module loads (request_module -> /sbin/modprobe)
    # work too, should some code path ask for a module we did not preload.
    for f in modules.order modules.builtin modules.builtin.modinfo; do
        if [ -f "$MODROOT/$f" ]; then cp "$MODROOT/$f" "$R/lib/modules/$KV/"; fi
    done
    depmod -b "$R" "$KV"
    install -m 0755 "$BLE_VM_DIR/initramfs_init.sh" "$R/init"
    (cd "$R" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) > "$INITRD.partial"
    mv "$INITRD.partial" "$INITRD"
    echo "$STAMP" > "$WORK/initramfs.stamp"
    log "initramfs: $(wc -l < "$R/modules.list") modules, $(du -h "$INITRD" | cut -f1)"
    rm -rf "$R"
fi

log "setup done in $((SECONDS - t_start)) s (kernel $KV, work dir $WORK)"

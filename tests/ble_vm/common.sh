# shellcheck shell=bash disable=SC2034  # sourced: its variables are used by the sourcing scripts
# Sourced by setup.sh and run.sh (not run on its own): shared paths, settings and helpers.

# The directory of these scripts and the repo root (two levels up), resolved through symlinks so
# the scripts work from any cwd.
BLE_VM_DIR=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
REPO=$(cd "$BLE_VM_DIR/../.." && pwd)
# Work dir for the kernel, initramfs and guest output; .ble-vm/ is git-ignored.
WORK=${BLE_VM_WORK:-$REPO/.ble-vm}
# The project's own venv: the guest runs it through the read-only 9p view of the host root.
VENV=$REPO/.venv

# Kernel modules the guest needs; their dependencies are resolved with modprobe --show-depends.
# virtio_pci + 9pnet_virtio + 9p: the host root and out/ shares. virtio_rng: entropy for the
# crypto self-tests and bluetoothd. bluetooth + hci_vhci: btvirt's virtual controllers.
# ecdh_generic/cmac/ecb: LE crypto the bluetooth module asks for. af_alg + algif_hash +
# algif_skcipher: without them btvirt fails with "Failed to open Virtual HCI device".
GUEST_MODULES="virtio_pci virtio_rng 9pnet_virtio 9p bluetooth hci_vhci ecdh_generic cmac ecb af_alg algif_hash algif_skcipher"

log() { printf '[ble-vm %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Paths go unquoted onto the kernel command line and into qemu's -fsdev options.
case "$REPO$WORK" in *[[:space:],]*) die "repo/work paths must not contain blanks or commas: $REPO $WORK" ;; esac

# The kernel ABI (e.g. 6.1.0-41-amd64) that setup.sh unpacked and built the initramfs for.
current_kv() {
    [ -s "$WORK/kernel/current" ] && cat "$WORK/kernel/current"
}

# Identifies what the initramfs was built from: kernel, module list, and the init script. run.sh
# compares it with the stamp setup.sh wrote, so editing initramfs_init.sh cannot boot a stale image.
initramfs_stamp() {
    { echo "$1 $GUEST_MODULES"; cat "$BLE_VM_DIR/initramfs_init.sh"; } | sha256sum | cut -c1-16
}

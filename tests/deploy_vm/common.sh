# shellcheck shell=bash disable=SC2034  # sourced: its variables are used by the sourcing scripts
# Sourced by setup.sh and run.sh (not run on its own): shared paths, settings and helpers.

# The directory of these scripts and the repo root (two levels up), resolved through symlinks.
DVM_DIR=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
REPO=$(cd "$DVM_DIR/../.." && pwd)
# Work dir: the Debian root filesystem, its disk image, the wheelhouse, each run's files; git-ignored.
WORK=${DEPLOY_VM_WORK:-$REPO/.deploy-vm}
# The guest's Debian release: 13, the base of current Raspberry Pi OS (Python 3.13, BlueZ 5.82, systemd 257).
SUITE=${DEPLOY_VM_SUITE:-trixie}
MIRROR=${DEPLOY_VM_MIRROR:-http://deb.debian.org/debian}
ROOTFS=$WORK/rootfs
# Packages of the guest besides those docs/DEPLOY.md installs: systemd as PID 1, the kernel (its own: Debian's
# 6.1 kernel of the BLE tier has no gpio-sim, and neither has 6.12, which is why setup.sh builds the module),
# btvirt for the virtual controllers, and the kernel headers + compiler for that module.
BASE_PACKAGES="systemd-sysv,udev,dbus,kmod,procps,sudo,linux-image-amd64,bluez,bluez-test-tools,python3,python3-venv,ca-certificates"

log() { printf '[deploy-vm %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

case "$REPO$WORK" in *[[:space:],]*) die "repo/work paths must not contain blanks or commas: $REPO $WORK" ;; esac

# The guest kernel's release (e.g. 6.12.117+deb13-amd64): the one linux-image-amd64 installed in the rootfs.
guest_kv() {
    local k
    k=$(cd "$ROOTFS/boot" 2>/dev/null && ls vmlinuz-* 2>/dev/null | sort -V | tail -1) || return 1
    [ -n "$k" ] && echo "${k#vmlinuz-}"
}

# The packages the deploy blocks of docs/DEPLOY.md install with apt, one a line.
doc_apt_packages() {
    python3 "$DVM_DIR/extract_deploy.py" --apt-packages "$REPO/docs/DEPLOY.md"
}

# Identifies what the disk image was built from: the rootfs's stamps and the files baked into it.
image_stamp() {
    { cat "$ROOTFS"/.dkey-vm/*.stamp 2>/dev/null; cat "$DVM_DIR/setup.sh" "$DVM_DIR/guest/dkey-vm-driver.service"; } \
        | sha256sum | cut -c1-16
}

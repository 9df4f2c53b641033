#!/usr/bin/env bash
# Boot the deploy tier's guest (Debian, systemd as PID 1), which installs the project with docs/DEPLOY.md's own
# `bash deploy` blocks and runs the scenarios of tests/deploy_vm/README.md; exit 0 when none failed.
#   bash tests/deploy_vm/run.sh
# Environment:
#   DEPLOY_VM_WORK     work dir (default .deploy-vm/): rootfs, disk image, wheelhouse, run/ (this run's files)
#   DEPLOY_VM_TIMEOUT  hard limit for the VM in seconds, both boots (default 900)
#   DEPLOY_VM_ONLY     comma-separated scenarios to run after deploy + s1 (s2_kill_mid_pulse, s6_bluetoothd_restart,
#                      s3_broken_config, s4_watchdog, s7_doctor_in_unit, s8_privacy_air, s5_reboot); default: all
#   DEPLOY_VM_CPUS, DEPLOY_VM_MEM (MiB), DEPLOY_VM_ACCEL (default TCG: this host's /dev/kvm cannot boot a stock
#                      kernel), DEPLOY_VM_LOG_LINES (log lines printed per file on failure)
# Runs setup.sh first when the disk image is missing or stale.
set -euo pipefail
# shellcheck source=tests/deploy_vm/common.sh
. "$(dirname "$(readlink -f "$0")")/common.sh"

TIMEOUT=${DEPLOY_VM_TIMEOUT:-900}
LOG_LINES=${DEPLOY_VM_LOG_LINES:-80}
RUN=$WORK/run
OUT=$RUN/out

if [ ! -f "$WORK/base.img" ] || [ "$(cat "$WORK/base.img.stamp" 2>/dev/null)" != "$(image_stamp)" ] \
    || [ "$(cat "$ROOTFS/.dkey-vm/doc-packages.stamp" 2>/dev/null)" != "$(doc_apt_packages | tr '\n' ' ' | sed 's/ $//')" ] \
    || [ "$(cat "$WORK/wheelhouse/.stamp" 2>/dev/null)" != "$(sha256sum "$REPO/pyproject.toml" | cut -c1-16)" ]; then
    log "the VM is not set up (or is stale): running setup.sh"
    bash "$DVM_DIR/setup.sh"
fi

mkdir -p "$WORK"
exec 9> "$WORK/run.lock"
flock -n 9 || die "another run.sh is using $WORK"
rm -rf "$RUN"
mkdir -p "$RUN/share/src" "$OUT"

# The checkout as the guest gets it at /opt/dkey-src: the tracked and new (not ignored) files, as they are now,
# and dist/ with the wheel built from them (docs/DEPLOY.md installs the wheel).
t0=$SECONDS
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    [ -e "$f" ] && printf '%s\0' "$f"; done | tar --null -T - -cf -) | tar -xf - -C "$RUN/share/src"
"$REPO/.venv/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps -w "$RUN/share/src/dist" \
    "$RUN/share/src" >&2 || die "building the wheel failed"
rm -rf "$RUN/share/src/build" "$RUN/share/src"/*.egg-info
python3 "$DVM_DIR/extract_deploy.py" "$REPO/docs/DEPLOY.md" > "$RUN/share/deploy.sh" || die "no deploy blocks"
cp -a "$WORK/wheelhouse" "$RUN/share/wheelhouse"
# The guest's driver runs as a unit of the guest's systemd, which never sees this shell's environment.
printf '%s\n' "${DEPLOY_VM_ONLY:-}" > "$RUN/share/only"
log "staged the checkout, $(basename "$RUN"/share/src/dist/*.whl) and $(grep -c '^echo .===== deploy block' \
    "$RUN/share/deploy.sh") deploy blocks in $((SECONDS - t0)) s"
# Each run boots a copy-on-write overlay: the image stays pristine, the reboot inside a run keeps its writes.
qemu-img create -q -f qcow2 -b "$WORK/base.img" -F raw "$RUN/disk.qcow2"

# shellcheck disable=SC2206  # DEPLOY_VM_ACCEL is deliberately split into words
ACCEL=(${DEPLOY_VM_ACCEL:--accel tcg,thread=multi -cpu max})
log "booting Debian $SUITE (systemd) under a ${TIMEOUT}s limit; guest output in $OUT"
t_boot=$(date +%s%N)
set +e
# No -no-reboot: the guest reboots once (scenario s5) and powers off at the end. -net none: the guest installs
# from what setup.sh prepared. --kill-after: qemu ignoring SIGTERM.
timeout --kill-after=10 "$TIMEOUT" qemu-system-x86_64 \
    "${ACCEL[@]}" -smp "${DEPLOY_VM_CPUS:-2}" -m "${DEPLOY_VM_MEM:-1536}" \
    -machine q35 -display none -monitor none -serial stdio -net none \
    -kernel "$WORK/boot/vmlinuz" -initrd "$WORK/boot/initrd.img" \
    -append "console=ttyS0 root=/dev/vda rw quiet loglevel=4 panic=-1 systemd.show_status=error" \
    -drive "file=$RUN/disk.qcow2,if=virtio,format=qcow2,cache=unsafe" \
    -fsdev "local,id=dkeyvm,path=$RUN/share,security_model=none,readonly=on" \
    -device virtio-9p-pci,fsdev=dkeyvm,mount_tag=dkeyvm \
    -fsdev "local,id=dkeyout,path=$OUT,security_model=none" \
    -device virtio-9p-pci,fsdev=dkeyout,mount_tag=dkeyout \
    -device virtio-rng-pci \
    < /dev/null 2>&1 | tee "$OUT/console.log"
qemu_rc=${PIPESTATUS[0]}
set -e
wall_ms=$((($(date +%s%N) - t_boot) / 1000000))
log "VM wall time $((wall_ms / 1000)).$((wall_ms % 1000 / 100))s (qemu exit $qemu_rc)"

rc=1
if [ -s "$OUT/driver.rc" ]; then
    rc=$(cat "$OUT/driver.rc")
elif [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then
    log "the VM hit the ${TIMEOUT}s limit before the driver finished"
    rc=124
else
    log "the guest ended without a result (qemu exit $qemu_rc): see $OUT/console.log"
fi
if [ -s "$OUT/results.json" ]; then
    echo "===== results (figures in seconds unless named _ms; uptime = since the guest kernel started)"
    python3 - "$OUT/results.json" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))
for name, r in results.items():
    rest = ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("status",))
    print(f"{r['status'].upper():5s} {name}: {rest}")
PY
fi
if [ "$rc" != 0 ]; then
    for f in "$OUT"/driver.log "$OUT"/deploy.log; do
        [ -f "$f" ] || continue
        echo "===== $(basename "$f") (last $LOG_LINES lines; full file: $f)"
        tail -n "$LOG_LINES" "$f"
    done
    if [ -f "$OUT/journal.log" ]; then
        echo "===== journal: key-server, bluetooth (last $LOG_LINES lines; full journal: $OUT/journal.log)"
        grep -E 'key-server|bluetooth|dkey-vm' "$OUT/journal.log" | tail -n "$LOG_LINES"
    fi
fi
exit "$rc"

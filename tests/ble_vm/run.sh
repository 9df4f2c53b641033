#!/usr/bin/env bash
# Boot ONE QEMU guest that runs the real-stack BLE tests (pytest -m ble tests/ble_vm/guest) over
# BlueZ with three virtual controllers, and exit with pytest's exit code.
#   bash tests/ble_vm/run.sh [extra pytest args, e.g. -k smoke -x]
# Environment:
#   BLE_VM_WORK     work dir (default .ble-vm/): kernel, initramfs, out/ with the guest's logs
#   BLE_VM_TIMEOUT  hard limit for the whole VM in seconds (default 1500)
#   BLE_VM_BTMON=1  also capture HCI traffic to out/btmon.snoop
#   BLE_VM_PRODUCT_RACE_FIX=1  run the product's CLIs with the test-only bleak patch too (default: without)
#   BLE_VM_CPUS, BLE_VM_MEM (MiB), BLE_VM_ACCEL (default TCG: this host's /dev/kvm cannot boot
#                   a stock kernel), BLE_VM_LOG_LINES (log lines printed per file on failure)
# Runs setup.sh first when the kernel or initramfs are missing or stale.
set -euo pipefail
# shellcheck source=tests/ble_vm/common.sh
. "$(dirname "$(readlink -f "$0")")/common.sh"

TIMEOUT=${BLE_VM_TIMEOUT:-1500}
LOG_LINES=${BLE_VM_LOG_LINES:-200}
OUT=$WORK/out

KV=$(current_kv || true)
if [ -z "$KV" ] || [ ! -f "$WORK/initramfs.cpio.gz" ] || ! command -v qemu-system-x86_64 >/dev/null \
    || [ "$(cat "$WORK/initramfs.stamp" 2>/dev/null)" != "$(initramfs_stamp "$KV")" ]; then
    log "the VM is not set up (or the initramfs is stale): running setup.sh"
    bash "$BLE_VM_DIR/setup.sh"
    KV=$(current_kv)
fi
KERNEL=$WORK/kernel/$KV/boot/vmlinuz-$KV
[ -f "$KERNEL" ] || die "no kernel at $KERNEL: run tests/ble_vm/setup.sh"

# One VM per work dir at a time: both would share out/.
mkdir -p "$WORK"
exec 9> "$WORK/run.lock"
flock -n 9 || die "another run.sh is using $WORK"

rm -rf "$OUT"
mkdir -p "$OUT"
# Settings for guest_main.sh; %q quoting keeps the extra pytest args intact.
PYTEST_TIMEOUT=$((TIMEOUT > 120 ? TIMEOUT - 45 : TIMEOUT * 3 / 4))
{
    printf 'REPO=%q\nVENV=%q\nBLE_VM_DIR=%q\n' "$REPO" "$VENV" "$BLE_VM_DIR"
    printf 'BTMON=%q\nPYTEST_TIMEOUT=%q\n' "${BLE_VM_BTMON:-0}" "$PYTEST_TIMEOUT"
    # Test settings read by the guest tests themselves (see README.md).
    printf 'export BLE_VM_PRODUCT_RACE_FIX=%q\n' "${BLE_VM_PRODUCT_RACE_FIX:-0}"
    # (printf with no arguments would still print one empty '' word: guard it)
    printf 'PYTEST_ARGS=(-v --durations=5'
    [ $# -eq 0 ] || printf ' %q' "$@"
    printf ')\n'
} > "$OUT/guest.env"

# shellcheck disable=SC2206  # BLE_VM_ACCEL is deliberately split into words
ACCEL=(${BLE_VM_ACCEL:--accel tcg,thread=multi -cpu max})
log "booting kernel $KV (timeout ${TIMEOUT}s); guest output in $OUT"
t0=$(date +%s%N)
# The host root goes to the guest read-only (it runs the host's bluez, python and our venv);
# out/ is the only writable share; the repo is shared once more on its own, for a repo under /tmp (a CI
# clone) that the guest's tmpfs on /tmp would hide. -serial stdio with stdin from /dev/null: the console streams
# to our stdout and qemu never touches the terminal. panic=-1 + -no-reboot: a guest panic ends
# qemu at once instead of waiting for the timeout. --kill-after: qemu ignoring SIGTERM.
set +e
timeout --kill-after=10 "$TIMEOUT" qemu-system-x86_64 \
    "${ACCEL[@]}" -smp "${BLE_VM_CPUS:-2}" -m "${BLE_VM_MEM:-1024}" \
    -machine q35 -display none -monitor none -serial stdio -no-reboot -net none \
    -kernel "$KERNEL" -initrd "$WORK/initramfs.cpio.gz" \
    -append "console=ttyS0 quiet loglevel=4 panic=-1 blevm.out=$OUT blevm.main=$BLE_VM_DIR/guest_main.sh blevm.repo=$REPO" \
    -fsdev "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap" \
    -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
    -fsdev "local,id=outshare,path=$OUT,security_model=none" \
    -device virtio-9p-pci,fsdev=outshare,mount_tag=outshare \
    -fsdev "local,id=reposhare,path=$REPO,security_model=none,readonly=on,multidevs=remap" \
    -device virtio-9p-pci,fsdev=reposhare,mount_tag=reposhare \
    -device virtio-rng-pci \
    < /dev/null 2>&1 | tee "$OUT/console.log"
qemu_rc=${PIPESTATUS[0]}
set -e
wall_ms=$((($(date +%s%N) - t0) / 1000000))
wall=$((wall_ms / 1000)).$((wall_ms % 1000 / 100))

if [ -s "$OUT/pytest.rc" ]; then
    rc=$(cat "$OUT/pytest.rc")
elif [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then
    log "the VM hit the ${TIMEOUT}s timeout before pytest finished"
    rc=124
else
    log "the guest ended without a pytest result (qemu exit $qemu_rc): $(cat "$OUT/guest.error" 2>/dev/null || echo 'see console.log')"
    rc=125  # not a pytest exit code
fi

# Stage times are guest uptime; under TCG the guest clock follows the host's.
if [ -f "$OUT/timings" ]; then
    log "guest timings (uptime, s): $(tr '\n' ' ' < "$OUT/timings")"
fi
log "VM wall time ${wall}s, pytest exit code $rc"
# Figures measured by the guest tests (test_key_scenarios.py::test_unlock_figures, test_share_scenarios.py),
# pass or fail.
# bluetoothd deaths (the guest's supervisor restarts it): printed pass or fail, since a test that got through
# one is evidence too. test_bluetoothd_crash_under_a_running_server (SIGSEGV) and
# test_a_client_started_while_bluetoothd_is_down (SIGKILL) cause one each on purpose.
if [ -s "$OUT/bluetoothd.exits" ]; then
    echo "===== bluetoothd.exits ($(wc -l < "$OUT/bluetoothd.exits") restart(s); the two bluetoothd tests cause one each)"
    cat "$OUT/bluetoothd.exits"
fi
for f in "$OUT"/figures.txt "$OUT"/shares.txt "$OUT"/key_client_runs.txt; do
    if [ -s "$f" ]; then echo "===== $(basename "$f")"; cat "$f"; fi
done

if [ "$rc" != 0 ]; then
    # pytest.log streamed by already, but a CI log reader wants the failure context in one
    # place: print the tail of every log the guest and the tests left in out/.
    for f in "$OUT"/*.log; do
        if [ ! -f "$f" ] || [ "$(basename "$f")" = console.log ]; then continue; fi
        echo "===== $(basename "$f") (last $LOG_LINES lines; full file: $f)"
        tail -n "$LOG_LINES" "$f"
    done
fi
exit "$rc"

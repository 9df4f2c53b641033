#!/bin/bash
# Runs INSIDE the guest, chrooted into the host's read-only root (started by initramfs_init.sh).
# Brings up the Bluetooth stack (system dbus, 3 btvirt controllers, bluetoothd, optional btmon),
# runs the `ble` pytest group of tests/ble_vm/guest and writes its exit code to $OUT/pytest.rc.
# Argument: OUT, the writable out/ share. Settings come from $OUT/guest.env, written by run.sh.
#
# No `set -e`: whatever fails, we must still reach the end and write pytest.rc (or a reason).
set -uo pipefail
OUT=$1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# HOME is read-only in the guest (it is the host's /root); /tmp is a tmpfs.
export HOME=/tmp/home
mkdir -p "$HOME"
# shellcheck source=/dev/null
. "$OUT/guest.env"   # REPO, VENV, BLE_VM_DIR, BTMON, PYTEST_TIMEOUT, PYTEST_ARGS (array)

up() { cut -d' ' -f1 /proc/uptime; }
# Stage times (guest uptime in seconds) for run.sh's summary; also echoed to the console.
stage() { echo "guest: $1 at $(up)s"; echo "$1 $(up)" >> "$OUT/timings"; }
fail() { echo "guest: FAILED: $*"; echo "$*" > "$OUT/guest.error"; exit 1; }
stage kernel+init

# System bus: bluetoothd, bless and bleak all talk over it. /run is a tmpfs.
mkdir -p /run/dbus
dbus-daemon --system --fork --nopidfile || fail "dbus-daemon did not start"

# Three virtual LE controllers that see each other over btvirt's virtual air: hci0 for the
# peripheral, hci1 and hci2 for up to two centrals.
btvirt -l3 > "$OUT/btvirt.log" 2>&1 &
for _ in $(seq 100); do [ -e /sys/class/bluetooth/hci2 ] && break; sleep 0.1; done
[ -e /sys/class/bluetooth/hci2 ] || fail "btvirt did not create hci0..hci2 (see btvirt.log)"
ADAPTERS=$(cd /sys/class/bluetooth && echo hci*)
echo "guest: adapters $ADAPTERS"
stage controllers

# Optional HCI capture (BLE_VM_BTMON=1); read it on the host with wireshark or btmon -r.
if [ "$BTMON" = 1 ]; then
    btmon -w "$OUT/btmon.snoop" > /dev/null 2>&1 &
fi

# bluetoothd under a supervisor that restarts it when it dies, as systemd does with Restart=on-failure
# (docs/DEPLOY.md has the drop-in for a Pi; Debian ships it commented out). BlueZ 5.66 has crashed
# mid-run here (a CI run lost it during a reconnect), and a car must open again after that without
# anybody restarting key-server: test_bluetoothd_crash_under_a_running_server checks exactly that.
# Every exit is recorded in $OUT/bluetoothd.exits (run.sh prints it); all runs log to one file.
# -n: stay in the foreground (we own its lifetime); -d: debug log, the best record of what the
# stack did when a test fails; -f: our config, not the host's /etc/bluetooth/main.conf.
BLUETOOTHD_PID=/run/bluetoothd.pid  # the running daemon's pid, for the crash test
BLUETOOTHD_STOP=/run/bluetoothd.stop  # present: the next exit is ours, do not restart
BLUETOOTHD_HOLD=/run/bluetoothd.hold  # present: a test keeps bluetoothd down; restart once it is removed
supervise_bluetoothd() {
    local n=0 pid rc how
    while [ ! -e "$BLUETOOTHD_STOP" ]; do
        n=$((n + 1))
        echo "===== bluetoothd run $n, started at $(up)s" >> "$OUT/bluetoothd.log"
        bluetoothd -n -d -f "$BLE_VM_DIR/bluetoothd.conf" >> "$OUT/bluetoothd.log" 2>&1 &
        pid=$!
        echo "$pid" > "$BLUETOOTHD_PID"
        wait "$pid"
        rc=$?
        [ -e "$BLUETOOTHD_STOP" ] && break
        how="exit status $rc"
        if [ "$rc" -gt 128 ]; then how="signal $((rc - 128)) ($(kill -l $((rc - 128)) 2>/dev/null || echo '?'))"; fi
        echo "bluetoothd run $n (pid $pid) ended by $how at $(up)s; restarting it in 1 s" | tee -a "$OUT/bluetoothd.exits"
        sleep 1
        while [ -e "$BLUETOOTHD_HOLD" ] && [ ! -e "$BLUETOOTHD_STOP" ]; do sleep 0.2; done
    done
}
supervise_bluetoothd &
dbus_get() {  # dbus_get OBJECT INTERFACE PROPERTY -> prints the reply, fails if there is none
    dbus-send --system --print-reply --dest=org.bluez "$1" org.freedesktop.DBus.Properties.Get \
        "string:$2" "string:$3" 2>/dev/null
}
# Wait until bluetoothd has powered every controller: scanning or advertising on an adapter
# that is still off fails with org.bluez.Error.NotReady.
powered() {
    local a
    for a in $ADAPTERS; do
        dbus_get "/org/bluez/$a" org.bluez.Adapter1 Powered | grep -q 'boolean true' || return 1
    done
}
for _ in $(seq 150); do powered && break; sleep 0.2; done
powered || fail "bluetoothd did not power on $ADAPTERS (see bluetoothd.log)"
stage bluetoothd-ready

cd "$REPO" || fail "no repo at $REPO"
# What the guest tests can rely on (see tests/ble_vm/README.md).
export BLE_VM=1 BLE_VM_OUT=$OUT BLE_VM_ADAPTERS=$ADAPTERS BLE_VM_BLUETOOTHD_PID=$BLUETOOTHD_PID \
    BLE_VM_BLUETOOTHD_HOLD=$BLUETOOTHD_HOLD
# The host root is read-only: no .pyc files, no .pytest_cache (-p no:cacheprovider), and
# hypothesis must keep its example database in /tmp: when it cannot write .hypothesis/ it warns,
# which filterwarnings=error turns into a crash at start-up.
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HYPOTHESIS_STORAGE_DIRECTORY=/tmp/hypothesis
stage pytest-start
# Our own timeout, below the VM's hard one, so a hung test still leaves pytest.log and an exit
# code behind (124) instead of a killed VM.
# -p no:hypothesispytest: no guest test uses hypothesis, and importing its plugin costs ~10 s
# under TCG (0.7 s natively).
timeout -k 10 "$PYTEST_TIMEOUT" "$VENV/bin/python" -m pytest -m ble -p no:cacheprovider \
    -p no:hypothesispytest tests/ble_vm/guest "${PYTEST_ARGS[@]}" 2>&1 | tee "$OUT/pytest.log"
rc=${PIPESTATUS[0]}
stage pytest-end
echo "$rc" > "$OUT/pytest.rc"

# Stop the daemons gently so btmon flushes its capture and bluetoothd logs its shutdown.
touch "$BLUETOOTHD_STOP"
kill "$(cat "$BLUETOOTHD_PID" 2>/dev/null)" 2>/dev/null
pkill_jobs() { local p; for p in $(jobs -p); do kill "$p" 2>/dev/null; done; }
pkill_jobs
sleep 0.5
exit "$rc"

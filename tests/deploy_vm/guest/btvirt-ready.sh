#!/bin/bash
# deploy-vm guest (ExecStartPost of dkey-vm-btvirt.service): exit 0 once the kernel finished the HCI init of both
# btvirt controllers, i.e. both report their BD address (read during init; a controller whose init failed, e.g.
# "Opcode 0x0c03 failed: -110" when btvirt answered its HCI Reset too late under TCG, keeps 00:00:00:00:00:00 and
# is never usable); exit 1 after 25 s, so that systemd restarts btvirt and with it both controllers.
# hciconfig asks the kernel directly (HCIGETDEVINFO); btmgmt hung here, ignoring timeout's SIGTERM.
set -uo pipefail
while [ "$SECONDS" -lt 25 ]; do
    ok=0
    for h in hci0 hci1; do
        timeout -k 1 3 hciconfig "$h" 2>/dev/null | grep -q 'BD Address: [0-9A-F:]*' \
            && ! timeout -k 1 3 hciconfig "$h" 2>/dev/null | grep -q 'BD Address: 00:00:00:00:00:00' \
            && ok=$((ok + 1))
    done
    [ "$ok" = 2 ] && { echo "btvirt-ready: hci0 and hci1 initialised after ${SECONDS}s"; exit 0; }
    sleep 0.5
done
echo "btvirt-ready: a controller did not initialise: $(timeout -k 1 3 hciconfig 2>&1 | grep -E 'hci|BD' | tr '\n\t' '  ')"
exit 1

#!/bin/bash
# deploy-vm guest (ExecStartPost of dkey-vm-btvirt.service): exit 0 once the kernel finished the HCI init of both
# btvirt controllers, i.e. both are on the management interface's list (a controller whose init failed never gets
# there and stays unusable); exit 1 after 25 s, so that systemd restarts btvirt and with it both controllers.
set -uo pipefail
while [ "$SECONDS" -lt 25 ]; do
    n=$(timeout 5 btmgmt info 2>/dev/null | grep -cE '^hci[01]:')
    [ "$n" = 2 ] && { echo "btvirt-ready: hci0 and hci1 initialised after ${SECONDS}s"; exit 0; }
    sleep 0.5
done
echo "btvirt-ready: a controller did not initialise; btmgmt info: $(btmgmt info 2>&1 | grep -E '^hci' | tr '\n' ' ')"
exit 1

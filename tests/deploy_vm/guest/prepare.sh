#!/bin/bash
# deploy-vm guest, every boot (dkey-vm-prepare.service, before bluetooth and key-server): what a Raspberry Pi 4
# has and this x86 guest does not, made with real kernel interfaces.
#   - a gpio-sim chip (configfs) in the place of the Pi 4's GPIO controller: /dev/gpiochip0, 58 lines, label
#     pinctrl-bcm2711, each line's pull as the BCM2711 pads default to at power-on (GPIO 0-8 up, 9-27 down):
#     when nothing drives a line (no process, or the process was killed), gpio-sim reports that pull
#   - the Pi 4's board revision in /proc/cpuinfo (a bind mount): gpiozero's lgpio pin factory reads it to know
#     the board; x86 has none, and gpiozero refuses to run without one (PinUnknownPi)
#   - BlueZ settings of the BLE tier: no GATT cache (every connect discovers afresh)
set -euo pipefail
modprobe gpio-sim
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
C=/sys/kernel/config/gpio-sim/pi
if [ ! -d "$C" ]; then
    mkdir "$C" "$C/gpio-bank0"
    echo 58 > "$C/gpio-bank0/num_lines"
    echo pinctrl-bcm2711 > "$C/gpio-bank0/label"
    echo 1 > "$C/live"
fi
chip=$(cat "$C/gpio-bank0/chip_name")
dev=$(cat "$C/dev_name")
[ "$chip" = gpiochip0 ] || { echo "prepare: the gpio-sim chip is $chip, not gpiochip0 (another GPIO controller?)"; exit 1; }
for n in $(seq 0 27); do
    if [ "$n" -le 8 ]; then pull=pull-up; else pull=pull-down; fi
    echo "$pull" > "/sys/devices/platform/$dev/$chip/sim_gpio$n/pull"
done
udevadm settle -t 10 || true
mkdir -p /run/dkey-vm
if ! grep -q '^Revision' /proc/cpuinfo; then
    { cat /proc/cpuinfo; printf 'Hardware\t: BCM2835\nRevision\t: c03111\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1\n'; } \
        > /run/dkey-vm/cpuinfo
    mount --bind /run/dkey-vm/cpuinfo /proc/cpuinfo
fi
sed -i 's/^#\?Cache = .*/Cache = no/' /etc/bluetooth/main.conf
echo "prepare: $chip ($dev, $(cat "$C/gpio-bank0/num_lines") lines) is /dev/$chip: $(ls -l "/dev/$chip")"

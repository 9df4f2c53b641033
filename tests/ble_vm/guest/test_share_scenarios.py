"""The wearable story of issue 12 over the real BlueZ stack: the owner's phone sets up the owner's watch by share
with the Pi untouched, the watch unlocks, the owner revokes the watch offline, the phone's next unlock carries the
revocation, the watch is refused (docs/CLIENT.md "Keys from the owner's phone", docs/PROTOCOL.md §12).

A vehicle of its own (`key-server run --radio ble` on hci0, simulated lock), the owner's phone on hci1 (paired with
a code from `key-server pair`, like test_key_scenarios.py) and the watch on hci2: two keychains on two controllers,
all three real `key-client --radio ble` / `key-server` processes. After the owner's pairing no `key-server` command
changes anything: the share, its enrolment and the revocation all come from the devices; `key-server keys` and
`key-server audit` only read what happened. The tests run in file order and share the module's state (each still
runs alone with `-k`: its fixtures do the steps before it). The second, plain unlock of an enrolled share and
`key-client watch` are proven on the simulated radio (tests/cli/test_owner_phone_e2e.py), not here: each costs
the tier ~20-40 s under TCG, and the CI budget is tight.

Figures (run.sh prints them): out/shares.txt and out/shares.json, wall time and ATT traffic of the watch's first
unlock (SHARE_PRESENT + COMMAND) and the phone's unlock that carries the list.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import forget_devices, make_run_cli
from dkey_rig import BluetoothdLog, ClientRun, Device, Vehicle, att_summary

from dkey_link.exit_codes import ExitCode

# Per test, fixtures included: a key-client run over the air takes 8-20 s under TCG, a retried one up to ~60 s.
pytestmark = [pytest.mark.ble, pytest.mark.timeout(240)]

VEHICLE_NAME = "DkeyShareCar"
PRODUCT_RACE_FIX = os.environ.get("BLE_VM_PRODUCT_RACE_FIX") == "1"
WATCH_NAME = "vm-watch"  # the name the watch asks for and the key's name in the vehicle's list

OK, DENIED = ExitCode.OK, ExitCode.DENIED


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def out_dir() -> Path:
    return Path(os.environ["BLE_VM_OUT"])


@pytest.fixture(scope="module")
def mrun_cli(out_dir: Path) -> Callable[..., Any]:
    return make_run_cli(out_dir)


@pytest.fixture(scope="module")
def btlog(out_dir: Path) -> BluetoothdLog:
    return BluetoothdLog(out_dir / "bluetoothd.log")


@pytest.fixture(scope="module")
def figures(out_dir: Path) -> Iterator[dict[str, dict[str, Any]]]:
    """The module's measured unlocks, by label; written to out/shares.json and shares.txt at the end, pass or fail."""
    found: dict[str, dict[str, Any]] = {}
    yield found
    _write_figures(found, out_dir)


@pytest.fixture(scope="module")
def vehicle(module_spawn, mrun_cli, tmp_path_factory) -> Iterator[Vehicle]:
    """key-server init + run --radio ble on hci0 with the simulated lock, for this module."""
    forget_devices()
    v = Vehicle(tmp_path_factory.mktemp("share-vehicle") / "state", VEHICLE_NAME, module_spawn, mrun_cli)
    v.init()
    v.start()
    yield v
    assert "Traceback" not in v.output(), "key-server logged a traceback"


def _device(name: str, adapter: str, tmp_path_factory, mrun_cli, out_dir: Path) -> Device:
    return Device(tmp_path_factory.mktemp(name) / "keychain", adapter, mrun_cli, out_dir, PRODUCT_RACE_FIX)


@pytest.fixture(scope="module")
def phone(vehicle: Vehicle, tmp_path_factory, mrun_cli, out_dir: Path) -> Device:
    """The owner's phone on hci1, paired as an owner with a code from `key-server pair` (the only Pi step)."""
    dev = _device("phone", "hci1", tmp_path_factory, mrun_cli, out_dir)
    code = vehicle.pair_code("owner", "owner-phone")
    run = dev.run("pair", code, "--name", "car", label="share-pair-phone")
    assert run.rc == OK, run.result.stderr
    dev.key_id = run.obj["key_id"]
    # A share always has a window, so the vehicle checks it only with a trusted clock (PROTOCOL.md §12.4, §5.7).
    # The guest's RTC may confirm it at start; if not, the phone states its time, as an owner's device does when
    # the vehicle asks (docs/CLIENT.md: "an owner's device fixes this by connecting").
    if "the clock is now trusted" not in vehicle.output():
        stated = dev.run("set-time", label="share-phone-set-time")
        assert stated.rc == OK and stated.obj["trusted"] is True, stated.result.stderr
    return dev


@pytest.fixture(scope="module")
def watch(tmp_path_factory, mrun_cli, out_dir: Path) -> Device:
    """The owner's watch on hci2: a keychain of its own, nothing in it yet."""
    return _device("watch", "hci2", tmp_path_factory, mrun_cli, out_dir)


@pytest.fixture(scope="module")
def shared(vehicle: Vehicle, phone: Device, watch: Device) -> dict[str, Any]:
    """request-share on the watch, share on the phone, import-share on the watch: all offline, the Pi untouched.

    Returns the three JSON answers and the wall-clock time before the first, to check nothing reached the vehicle.
    """
    since = time.time()
    log_mark = len(vehicle.output())
    req = watch.run("request-share", "--name", WATCH_NAME, "--no-qr", label="share-request")
    assert req.rc == OK, req.result.stderr
    watch.key_id = req.obj["key_id"]
    share = phone.run("share", req.obj["request"], "--vehicle", "car", "--role", "driver", "--until", "1d",
                      "--no-qr", label="share-sign")
    assert share.rc == OK, share.result.stderr
    imported = watch.run("import-share", share.obj["share"], "--name", "car", label="share-import")
    assert imported.rc == OK, imported.result.stderr
    return {"since": since, "log_mark": log_mark, "request": req.obj, "share": share.obj, "import": imported.obj}


def _unlock(vehicle: Vehicle, dev: Device, btlog: BluetoothdLog, label: str) -> tuple[ClientRun, dict[str, Any]]:
    """`unlock` on `dev`: its run, and its figures (phases up to the actuator if it moved, ATT traffic, wall time)."""
    mark = btlog.mark()
    t = time.time()
    run = dev.run("unlock", label=label)
    moved = [ln for ln in vehicle.actuator_events(t) if ln.message == "actuator: unlock energised"]
    link_gone = time.monotonic() + 10
    while time.monotonic() < link_gone and "disconnected, reason" not in btlog.text(mark):
        time.sleep(0.2)  # the slice must hold the whole link, up to its disconnect
    fig: dict[str, Any] = {"att": att_summary(btlog.text(mark)), "moved": bool(moved), **run.record()}
    if moved and run.rc == OK:
        fig["phases"] = run.phases(moved[0].ts)
        delivered = run.err_times(r"delivered the revocation list")
        if delivered:  # the list goes after the RESULT: how much later its acknowledgement arrived
            fig["list_acknowledged_after_actuator_s"] = delivered[0] - moved[0].ts
    return run, fig


@pytest.fixture(scope="module")
def enrolled(vehicle: Vehicle, watch: Device, shared: dict[str, Any], btlog: BluetoothdLog,
             figures: dict[str, dict[str, Any]]) -> ClientRun:
    """The watch's first unlock over the air: it presents the share, the vehicle enrolls it, the lock moves."""
    run, figures["first unlock with a share (watch)"] = _unlock(vehicle, watch, btlog, "share-watch-first-unlock")
    assert run.rc == OK, run.result.stderr
    return run


# ---------------------------------------------------------------------------------------------- scenarios


def test_the_phone_shares_a_key_with_the_watch_offline(vehicle: Vehicle, phone: Device, watch: Device,
                                                       shared: dict[str, Any]) -> None:
    req, share, imported = shared["request"], shared["share"], shared["import"]
    assert req["request"].startswith("dkey://share-request?key=") and req["key_id"] == watch.key_id
    assert share["ok"] is True and share["key_id"] == watch.key_id and share["role"] == "driver"
    assert share["name"] == WATCH_NAME and share["share"].startswith("dkey://share?v=1&c=")
    assert share["revocation_list_version"] is None  # the phone has revoked nothing yet
    assert imported["ok"] is True and imported["via"] == "share" and imported["enrolled"] is False
    assert imported["serial"] == share["serial"] and imported["issuer_id"] == phone.key_id
    # Nothing went over the air and nothing changed at the Pi: no audit row (an enrolment would be a `pair` row), no
    # link. (Each `key-server` read costs ~2 s under TCG: the checks below read as little as they can.)
    assert vehicle.audit(shared["since"]) == []
    assert "connected" not in vehicle.output()[shared["log_mark"]:]


def test_the_watch_first_unlock_enrolls_it(vehicle: Vehicle, phone: Device, watch: Device,
                                           enrolled: ClientRun, figures: dict[str, dict[str, Any]]) -> None:
    assert enrolled.obj["command"] == "unlock" and enrolled.obj["lock"] == "unlocked"
    assert figures["first unlock with a share (watch)"]["moved"], "the watch's first unlock did not move the lock"
    # SHARE_PRESENT (one write: the link's max write is far above its ~160 bytes) and the COMMAND, same challenge.
    assert figures["first unlock with a share (watch)"]["att"]["rx_writes"] == 2, figures
    assert f"enrolled this device's key with the share from owner key {phone.key_id}" in enrolled.result.stderr
    key = next(k for k in vehicle.keys() if k["key_id"] == watch.key_id)
    assert (key["name"], key["role"], key["state"]) == (WATCH_NAME, "driver", "active"), key
    assert (key["via"], key["enrolled_by"]) == ("share", phone.key_id), key


def test_offline_revocation_rides_on_the_phone_unlock_and_the_watch_is_refused(
        vehicle: Vehicle, phone: Device, watch: Device, enrolled: ClientRun, btlog: BluetoothdLog,
        figures: dict[str, dict[str, Any]]) -> None:
    # The phone revokes the watch with the vehicle out of the picture: it only signs list version 1.
    since = time.time()
    revoke = phone.run("revoke", WATCH_NAME, "--offline", label="share-revoke-offline")
    assert revoke.rc == OK, revoke.result.stderr
    assert (revoke.obj["key_id"], revoke.obj["list_version"]) == (watch.key_id, 1), revoke.obj
    assert (revoke.obj["reached"], revoke.obj["revoked"], revoke.obj["delivered"]) == (False, False, False)

    # The phone's next unlock moves the lock, then delivers the list after the RESULT on the same link.
    run, figures["unlock carrying the list (phone)"] = _unlock(vehicle, phone, btlog, "share-phone-unlock-list")
    assert run.rc == OK, run.result.stderr
    assert figures["unlock carrying the list (phone)"]["moved"]
    assert f"delivered the revocation list of owner key {phone.key_id} (version 1)" in run.result.stderr
    assert figures["unlock carrying the list (phone)"]["att"]["rx_writes"] == 2, figures  # COMMAND, REVOCATIONS
    rows = [e for e in vehicle.audit(since) if e["event"] == "revocations"]
    assert len(rows) == 1 and rows[0]["ts"] >= int(run.result.started), rows  # applied during the unlock's link
    assert rows[0]["key_id"] == phone.key_id and rows[0]["detail"]["version"] == 1, rows
    assert rows[0]["detail"]["revoked"] == watch.key_id, rows
    key = next(k for k in vehicle.keys() if k["key_id"] == watch.key_id)
    assert key["state"] == "revoked" and key["revoked_at"] is not None, key

    # The watch is refused, and nothing moves.
    t = time.time()
    refused = watch.run("unlock", label="share-watch-refused-unlock")
    assert refused.rc == DENIED, (refused.rc, refused.result.stdout, refused.result.stderr)
    assert refused.obj["ok"] is False and refused.obj["may_have_succeeded"] is False, refused.obj
    time.sleep(0.5)
    # (only an unlock would be the watch's doing)
    assert [ln for ln in vehicle.actuator_events(t) if "unlock" in ln.message] == [], "a revoked watch moved the lock"


# ---------------------------------------------------------------------------------------------- figures


def _write_figures(found: dict[str, dict[str, Any]], out: Path) -> None:
    (out / "shares.json").write_text(json.dumps(found, indent=1))
    if not found:
        return
    lines = ["issue 12 over the VM link (key-client start -> actuator energised; wall = the whole key-client run):"]
    for label, fig in found.items():
        ph = fig.get("phases")
        att = fig["att"]
        timing = (f"to actuator {ph['total']:5.2f} s (scan {ph['scan']:4.2f}, connect+discovery "
                  f"{ph['connect_discovery']:4.2f}, exchange {ph['exchange']:4.2f})" if ph else "did not move")
        lines.append(f"  {label:36s} {timing}; wall {fig['seconds']} s; writes to RX {att['rx_writes']}, "
                     f"notifications {att['notifications_sent']}, ATT PDUs {att['att_pdus_both_ways']}; "
                     f"cycles {fig['cycles']}")
        if "list_acknowledged_after_actuator_s" in fig:
            lines.append(f"  {'':36s} list acknowledged {fig['list_acknowledged_after_actuator_s']:4.2f} s after the "
                         "actuator moved")
    (out / "shares.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

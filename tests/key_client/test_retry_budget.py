"""The one retry budget (docs/CLIENT.md, "Time limits and retries"): counted connects, a fake clock, no sleeping.

Finding the vehicle takes at most the scan time; then at most CONNECT_ATTEMPTS failed connection attempts within
CONNECT_WINDOW seconds; the radio backend below makes one try per connect; an acting command once written is
never sent again.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from bleak_retry_connector import BleakConnectionError

from dkey_link.contract import SERVICE_UUID, Advertisement, Connection, LinkLost, NotFound, RadioError
from dkey_link.exit_codes import ExitCode
from key_client.driver import ATTEMPT_TIMEOUT, CONNECT_ATTEMPTS, CONNECT_WINDOW, Target, connect_vehicle
from key_client.errors import ConnectFailed, VehicleNotFound
from key_client.radio.ble import BleakCentral, advertisement_from
from key_client.radios import make_central
from protocol import KeyPair

from ..link.fakes_ble import FakeClient, FakeConnector, FakeScanner, adv_data, ble_device

CAR = Advertisement("car-address", "car", (SERVICE_UUID,), -50)


class FakeClock:
    """Monotonic time that moves only when the code under test sleeps or the fake radio spends it."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.start = self.t

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.t += seconds

    @property
    def elapsed(self) -> float:
        return self.t - self.start


class CountingCentral:
    """A Central on the fake clock: scans cost `scan_cost` s (or the whole timeout when nothing is there),
    every connect costs `connect_cost` s (cut at its timeout) and then fails with `connect_error`."""

    def __init__(self, clock: FakeClock, found: list[Advertisement], *, scan_cost: float = 0.5,
                 connect_cost: float = 1.0, connect_error: Exception | None = None,
                 scan_error: Exception | None = None) -> None:
        self.clock, self.found = clock, found
        self.scan_cost, self.connect_cost = scan_cost, connect_cost
        self.connect_error = connect_error or LinkLost("le-connection-abort-by-local")
        self.scan_error = scan_error
        self.scans: list[float] = []
        self.connects: list[float] = []  # the timeout each connect was given

    async def scan(self, timeout: float, service_uuid: str = SERVICE_UUID, *,
                   until: object = None) -> list[Advertisement]:
        self.scans.append(timeout)
        self.clock.t += min(timeout, self.scan_cost) if self.found or self.scan_error else timeout
        if self.scan_error is not None:
            raise self.scan_error
        return list(self.found)

    async def connect(self, adv: Advertisement, timeout: float = 10.0) -> Connection:
        self.connects.append(timeout)
        if self.connect_cost > timeout:
            self.clock.t += timeout
            raise TimeoutError
        self.clock.t += self.connect_cost
        raise self.connect_error

    async def aclose(self) -> None: ...


async def connect(central: object, clock: FakeClock, **kwargs: object) -> object:
    return await connect_vehicle(central, KeyPair.generate(), Target(None), clock=clock,  # type: ignore[arg-type]
                                 **kwargs)  # type: ignore[arg-type]


async def test_no_vehicle_found_in_10_s_means_10_s() -> None:
    clock = FakeClock()
    central = CountingCentral(clock, [])
    with pytest.raises(VehicleNotFound, match=r"no vehicle found in 10 s") as err:
        await connect(central, clock, scan_time=10.0)
    assert clock.elapsed == 10.0 and central.scans == [10.0] and central.connects == []
    assert err.value.exit_code == ExitCode.NOT_FOUND


async def test_a_scan_that_ends_early_empty_is_repeated_only_within_the_scan_time() -> None:
    clock = FakeClock()
    central = CountingCentral(clock, [])

    async def short_scan(timeout: float, service_uuid: str = SERVICE_UUID) -> list[Advertisement]:
        central.scans.append(timeout)
        clock.t += min(timeout, 3.0)  # e.g. a BLE scan that returned after waiting for bluetoothd
        return []

    central.scan = short_scan  # type: ignore[method-assign]
    with pytest.raises(VehicleNotFound):
        await connect(central, clock, scan_time=10.0)
    assert clock.elapsed == 10.0
    assert central.scans == [10.0, 7.0, 4.0, 1.0]  # each one only gets what is left


async def test_a_token_scan_that_hears_nothing_continues_in_slices_and_says_scanning_once() -> None:
    """A scan for our token returns after RESOLVE_WAIT s even when it heard nothing (its caller's fallback needs
    that); the next slice continues the same search, which is not a retry and is not announced again."""
    from key_client.driver import RESOLVE_WAIT, find_vehicles

    clock = FakeClock()
    central = CountingCentral(clock, [])
    said: list[str] = []
    with pytest.raises(VehicleNotFound, match=r"no vehicle found in 5 s"):
        await find_vehicles(central, 5.0, clock=clock, on_progress=said.append,  # type: ignore[arg-type]
                            until=lambda _adv: True)
    assert central.scans == [RESOLVE_WAIT, RESOLVE_WAIT, 5.0 - 2 * RESOLVE_WAIT] and clock.elapsed == 5.0
    assert said == ["scanning for vehicles (5 s)"]


async def test_a_radio_that_cannot_scan_is_given_up_on_within_the_scan_time() -> None:
    clock = FakeClock()
    central = CountingCentral(clock, [], scan_cost=0.2, scan_error=RadioError("Bluetooth is not available"))
    with pytest.raises(RadioError, match=r"^no scan could run in 10 s \(\d+ tries\): Bluetooth is not available"):
        await connect(central, clock, scan_time=10.0)
    assert clock.elapsed <= 10.0 and len(central.scans) >= 2


async def test_connect_failures_stop_after_the_attempt_budget() -> None:
    clock = FakeClock()
    central = CountingCentral(clock, [CAR])
    with pytest.raises(ConnectFailed, match=rf"\({CONNECT_ATTEMPTS} attempts within {CONNECT_WINDOW:g} s\)") as err:
        await connect(central, clock, scan_time=10.0)
    assert len(central.connects) == CONNECT_ATTEMPTS == 3
    assert len(central.scans) == 1 + (CONNECT_ATTEMPTS - 1)  # find, then a fresh scan before each retry
    assert err.value.exit_code == ExitCode.TIMED_OUT and not err.value.may_have_succeeded


async def test_slow_connects_stop_at_the_connect_window() -> None:
    clock = FakeClock()
    central = CountingCentral(clock, [CAR], scan_cost=0.1, connect_cost=8.0)
    with pytest.raises(ConnectFailed):
        await connect(central, clock, scan_time=10.0)
    scan_done = 0.1
    assert clock.elapsed <= scan_done + CONNECT_WINDOW + 1e-9
    assert all(t <= ATTEMPT_TIMEOUT for t in central.connects)
    assert len(central.connects) <= CONNECT_ATTEMPTS


async def test_another_vehicle_is_skipped_without_spending_an_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    import key_client.driver as driver

    clock = FakeClock()
    other = Advertisement("other-address", "car", (SERVICE_UUID,), -40)
    central = CountingCentral(clock, [other, CAR])
    tried: list[str] = []

    async def open_link(central: object, adv: Advertisement, *args: object, **kwargs: object) -> object:
        tried.append(adv.address)
        if adv is other:
            raise driver._WrongVehicle(b"\x01" * 8)
        raise LinkLost("dropped")

    monkeypatch.setattr(driver, "open_link", open_link)
    with pytest.raises(ConnectFailed):
        await connect(central, clock, scan_time=10.0)
    assert tried == ["other-address"] + ["car-address"] * CONNECT_ATTEMPTS


# ---------------------------------------------------------------------- the BLE backend under the budget


@pytest.fixture
def _clean_ble_fakes() -> Iterator[None]:
    FakeScanner.reset([(0.0, ble_device(), adv_data())])
    yield
    FakeScanner.reset()


def test_key_client_makes_its_ble_central_with_one_try_per_connect() -> None:
    central = make_central("ble")
    assert isinstance(central, BleakCentral) and central.connect_attempts == 1


@pytest.mark.usefixtures("_clean_ble_fakes")
async def test_one_unlock_makes_at_most_three_ble_connects_in_all() -> None:
    # Was driver 3 x BleakCentral.connect 3 x bleak-retry-connector 3 = up to 27 connects for one command.
    connector = FakeConnector(error=BleakConnectionError("car - AA: Failed to connect: le-connection-abort"))
    central = BleakCentral(scanner_factory=FakeScanner, connector=connector, client_class=FakeClient,
                           connect_attempts=1, scan_settle=0.0)
    with pytest.raises(ConnectFailed):
        await connect_vehicle(central, KeyPair.generate(), Target(None), scan_time=2.0, clock=FakeClock())
    assert len(connector.calls) == CONNECT_ATTEMPTS
    assert [call["max_attempts"] for call in connector.calls] == [1] * CONNECT_ATTEMPTS


@pytest.mark.usefixtures("_clean_ble_fakes")
async def test_a_client_left_stuck_connected_costs_one_attempt_and_the_next_uses_a_fresh_client() -> None:
    """tests/ble_vm: after BlueZ never signalled Connected=True, retries on the same bleak client failed at once
    with "Client is already connected"; a new connector call (a new client) is what works. That new call is the
    driver's next attempt (moved here from tests/link when BleakCentral stopped retrying on its own)."""

    class StuckOnce(FakeConnector):
        async def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            self.error = None if self.calls else BleakConnectionError(
                "car - AA: Failed to connect after 1 attempt(s): Client is already connected")
            return await super().__call__(*args, **kwargs)

    connector = StuckOnce()
    c = BleakCentral(scanner_factory=FakeScanner, connector=connector, client_class=FakeClient, connect_attempts=1)
    adv = advertisement_from(ble_device(), adv_data())
    with pytest.raises(RadioError) as err:  # transient to the driver: one attempt spent, and it tries again
        await c.connect(adv, timeout=2.0)
    assert not isinstance(err.value, NotFound)
    conn = await c.connect(adv, timeout=2.0)
    assert len(connector.calls) == 2 and len(connector.clients) == 1
    await conn.disconnect()


async def test_connect_attempts_scale_the_budget_and_stay_bounded() -> None:
    """--connect-attempts N: at most N connects, all within 5 s per attempt, whatever the radio does."""
    from key_client.driver import WINDOW_PER_ATTEMPT

    for attempts in (1, 5):
        clock = FakeClock()
        central = CountingCentral(clock, [CAR], connect_cost=0.5)
        with pytest.raises(ConnectFailed, match=rf"\({attempts} attempts within {attempts * 5} s\)"):
            await connect(central, clock, scan_time=10.0, attempts=attempts,
                          connect_window=attempts * WINDOW_PER_ATTEMPT)
        assert len(central.connects) == attempts
        assert clock.elapsed <= central.scans[0] + attempts * WINDOW_PER_ATTEMPT


def test_connect_attempts_out_of_range_is_a_usage_error(tmp_path: object) -> None:
    from key_client.cli import main

    for bad in ("0", "11", "two"):
        assert main(["--keychain", str(tmp_path), "--connect-attempts", bad, "vehicles"]) == ExitCode.USAGE

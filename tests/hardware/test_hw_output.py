"""Output, the bounded-time relay line every driver uses, over FakeRelay."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hardware import ActuatorFault, FakeRelay, LockClosedError, OutputChanged
from hardware._output import Output


class BrokenRelay(FakeRelay):
    """A FakeRelay whose writes of one level fail while ``fail`` is set to that level."""

    fail: bool | None = None

    def set(self, energised: bool) -> None:
        if self.fail is energised:
            raise OSError("simulated GPIO failure")
        super().set(energised)


MakeOutput = Callable[..., Output]


@pytest.fixture
def make_output() -> Iterator[MakeOutput]:
    """Build Outputs; each is closed (watchdog stopped) after the test."""
    made: list[Output] = []

    def make(relay: FakeRelay, **kwargs: Any) -> Output:
        made.append(Output(relay, **kwargs))
        return made[-1]

    yield make
    for out in made:
        out.close()


def wait_for(predicate: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


def test_fake_relay_starts_de_energised_and_records_changes_only() -> None:
    relay = FakeRelay("unlock")
    relay.set(False)
    relay.set(True)
    relay.set(True)
    relay.set(False)
    assert [energised for _, energised in relay.states] == [False, True, False]
    times = [t for t, _ in relay.states]
    assert times == sorted(times)


def test_deadline_is_clamped_to_max_on(make_output: MakeOutput) -> None:
    relay = FakeRelay("unlock")
    out = make_output(relay, max_on_s=0.2)
    out.energise(3600)
    switched_on_at = relay.states[-1][0]
    assert out.deadline is not None and out.deadline <= switched_on_at + 0.2
    out.shutdown()


def test_extension_never_passes_the_cap(make_output: MakeOutput) -> None:
    relay = FakeRelay("unlock")
    out = make_output(relay, max_on_s=1.0)
    out.energise(0.5)
    first = out.deadline
    time.sleep(0.01)
    out.energise(0.5)
    assert out.deadline is not None and first is not None and out.deadline > first  # extended...
    out.energise(100)
    assert out.deadline <= relay.states[-1][0] + 1.0  # ...but never past on_since + max_on
    assert [e for _, e in relay.states] == [False, True]  # still one energising
    out.shutdown()


def test_timer_ends_the_energising_and_reports_the_cap(make_output: MakeOutput) -> None:
    events: list[OutputChanged] = []
    out = make_output(FakeRelay("unlock"), max_on_s=0.05, listener=events.append)
    out.energise(10)
    wait_for(lambda: len(events) == 2)  # the listener is told after the switch-off
    assert [e.energised for e in events] == [True, False]
    assert out.capped_expiries == 1


def test_a_new_energising_gets_a_fresh_deadline(make_output: MakeOutput) -> None:
    out = make_output(FakeRelay("unlock"), max_on_s=10)
    out.energise(0.05)
    out.de_energise()
    out.energise(5)
    time.sleep(0.2)  # well past the first energising's deadline
    assert out.energised


def test_a_pulse_lasts_its_full_length_from_the_write(make_output: MakeOutput) -> None:
    # The deadline counts from after the line is on, so a slow write cannot shorten the pulse.
    class SlowRelay(FakeRelay):
        def set(self, energised: bool) -> None:
            time.sleep(0.05)
            super().set(energised)

    relay = SlowRelay("unlock")
    out = make_output(relay, max_on_s=1)
    out.energise(0.1)
    wait_for(lambda: not relay.energised)
    (t_on, _), (t_off, _) = relay.states[1:]
    assert t_off - t_on >= 0.1


def test_shutdown_latches_off(make_output: MakeOutput) -> None:
    relay = FakeRelay("unlock")
    out = make_output(relay, max_on_s=10)
    out.energise(5)
    out.shutdown()
    assert not relay.energised and out.disabled
    with pytest.raises(LockClosedError):
        out.energise(1)
    assert [e for _, e in relay.states] == [False, True, False]


def test_fail_safe_interrupting_energise_leaves_the_line_off(make_output: MakeOutput) -> None:
    # A signal handler runs in the main thread between two bytecodes: here, inside the relay write.
    class InterruptedRelay(FakeRelay):
        output: Output | None = None

        def set(self, energised: bool) -> None:
            super().set(energised)
            if energised and self.output is not None:
                self.output.shutdown()  # what install_signal_failsafe's handler does

    relay = InterruptedRelay("unlock")
    out = make_output(relay, max_on_s=10)
    relay.output = out
    with pytest.raises(LockClosedError):
        out.energise(5)
    assert not relay.energised and not out.energised


def test_failed_write_on_leaves_nothing_armed(make_output: MakeOutput) -> None:
    relay = BrokenRelay("unlock")
    relay.fail = True
    out = make_output(relay, max_on_s=10)
    with pytest.raises(ActuatorFault) as caught:
        out.energise(5)
    assert caught.value.may_have_acted and caught.value.output == "unlock"
    assert not out.energised and out.deadline is None


def test_failed_write_off_keeps_the_deadline_as_a_second_chance(make_output: MakeOutput) -> None:
    relay = BrokenRelay("unlock")
    out = make_output(relay, max_on_s=1.0)
    out.energise(1.0)
    relay.fail = False
    with pytest.raises(ActuatorFault):
        out.de_energise()
    assert out.energised and out.deadline is not None  # still believed on, still armed
    relay.fail = None  # the GPIO recovers
    wait_for(lambda: not relay.energised)
    assert not out.energised


def test_watchdog_retries_a_failed_switch_off(make_output: MakeOutput) -> None:
    relay = BrokenRelay("unlock")
    out = make_output(relay, max_on_s=1.0)
    out.energise(0.02)
    relay.fail = False  # the GPIO fails just as the deadline comes
    time.sleep(0.1)
    assert relay.energised and out.energised  # still on, and honestly reported so
    relay.fail = None
    wait_for(lambda: not relay.energised)  # the next retry (within about a second) succeeds
    assert not out.energised


def test_failed_on_then_failed_off_is_reported_maybe_on_and_retried(make_output: MakeOutput) -> None:
    class HalfBrokenRelay(FakeRelay):
        broken = True

        def set(self, energised: bool) -> None:
            super().set(energised)  # the level changes...
            if self.broken:
                raise OSError("...but the write reports an error")

    relay = HalfBrokenRelay("unlock")
    out = make_output(relay, max_on_s=10)
    with pytest.raises(ActuatorFault):
        out.energise(5)
    assert out.energised and out.deadline is not None  # maybe on: the watchdog keeps trying
    relay.broken = False
    wait_for(lambda: not out.energised)
    assert not relay.energised


def test_a_failing_listener_never_stops_a_switch_off(make_output: MakeOutput) -> None:
    def listener(event: OutputChanged) -> None:
        raise RuntimeError("listener bug")

    relay = FakeRelay("unlock")
    out = make_output(relay, max_on_s=10, listener=listener)
    out.energise(1)
    out.de_energise()
    assert not relay.energised


def test_switching_from_many_threads_keeps_one_consistent_line(make_output: MakeOutput) -> None:
    relay = FakeRelay("unlock")
    out = make_output(relay, max_on_s=0.05)

    def hammer() -> None:
        for _ in range(200):
            try:
                out.energise(0.01)
            except LockClosedError:
                return
            out.de_energise()

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.shutdown()
    levels = [e for _, e in relay.states]
    assert all(a != b for a, b in zip(levels, levels[1:], strict=False))  # strictly alternating
    assert levels[-1] is False

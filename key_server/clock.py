"""The vehicle's clock: never goes backwards, and is not trusted until a source confirms it (docs/THREAT_MODEL.md
§4.6, docs/PROTOCOL.md §5.7, docs/DEPLOY.md §9).

A Raspberry Pi has no real-time clock unless one is fitted: after a power cut it boots with whatever time it saved
last (or 1970) until NTP answers, and a car has no network. Two guards follow.

1. A high-water mark. now() returns max(system time, highest time ever seen), and the mark is persisted in the key
   store when it has advanced by more than `persist_every` seconds, at close, and at once when a decision needs it
   (a key refused as expired, a confirmation); so a clock set back, or a reboot into the past, never revives a key
   that was seen expired. What the mark cannot see is time that passed while the Pi was off.
2. Trust. After start the clock is *untrusted*: time-limited keys are refused (policy.authorize) until a source
   confirms the time: a real-time clock the kernel can read (`rtc`), a synchronised NTP clock (`ntp`), a time
   statement from an owner's or driver's device in a confidential session (confirm_statement), or, for a dev machine,
   the system clock as it is (`system`). A confirmation is accepted only if it is not behind the mark by more than
   SKEW seconds and not before EARLIEST. From then on the trusted time runs on the monotonic boot clock since the
   confirmation (`anchor`), so setting the system clock back after that changes nothing; the system clock still
   moves the time forward (that only expires keys early).

The flip side of the mark: a clock set far into the future (a bad NTP answer) pushes the mark there and expires keys
early; clearing the mark (meta key HIGH_WATER_KEY) is then an owner's explicit repair.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

__all__ = [
    "DEFAULT_PERSIST_EVERY",
    "DRIVER_MAX_FORWARD",
    "EARLIEST",
    "HIGH_WATER_KEY",
    "OWNER_MAX_FORWARD",
    "SKEW",
    "GuardedClock",
    "HighWaterStore",
    "Probe",
    "ProbeResult",
    "Source",
    "Statement",
    "boot_clock",
    "ntp_probe",
    "probes_for",
    "rtc_probe",
    "system_probe",
]

HIGH_WATER_KEY: Final = "time_high_water"
DEFAULT_PERSIST_EVERY: Final = 60
# No trusted source can say it is earlier than this (2026-01-01 UTC): an RTC reset to 2000 or 1970 is not a time.
EARLIEST: Final = 1_767_225_600
# How far a confirmation may lie behind the mark (a source a little slow, a mark a little fast), and how far a
# statement may move an already trusted clock forward: clocks that agree this well are the same clock.
SKEW: Final = 120
# How far a statement may move an untrusted clock forward (PROTOCOL.md §5.7; [clock] *_max_forward): an owner's
# covers a car stored for a year; a driver's the gaps of everyday use (a weekend), not a guest's early start.
OWNER_MAX_FORWARD: Final = 366 * 86_400
DRIVER_MAX_FORWARD: Final = 3 * 86_400
PROBE_EVERY: Final = 5.0  # seconds between looks at the RTC and NTP state (sysfs reads and one syscall)
NTP_MAX_ERROR_US: Final = 16_000_000  # the kernel's maxerror at or above this means "not synchronised" (16 s)


class Source(enum.StrEnum):
    """What may confirm the clock ([clock] trust_* in the config)."""

    RTC = "rtc"
    NTP = "ntp"
    OWNER = "owner"
    DRIVER = "driver"
    SYSTEM = "system"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What a source says now: the time it vouches for (None: it vouches for nothing) and why, for `doctor`."""

    time: int | None
    detail: str


Probe = Callable[[], ProbeResult]


class HighWaterStore(Protocol):
    """The part of KeyStore the clock needs."""

    def get_meta(self, k: str) -> str | None:
        """Read a metadata value."""
        ...

    def max_meta_int(self, k: str, v: int) -> int:
        """Raise the stored integer to at least `v`; return the stored value."""
        ...


@dataclass(frozen=True, slots=True)
class Statement:
    """The verdict on a device's time statement: accepted or not, why, and the clock after it."""

    accepted: bool
    reason: str  # "confirmed", "behind", "too far ahead", "before 2026"
    time: int  # the guarded time after the statement
    trusted: bool


def boot_clock() -> float:
    """Seconds on CLOCK_BOOTTIME where there is one (counts suspend; never set), else the monotonic clock."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()


class GuardedClock:
    """Integer Unix seconds that never decrease, and whether a trusted source has confirmed them since start."""

    def __init__(
        self,
        store: HighWaterStore,
        *,
        source: Callable[[], float] = time.time,
        persist_every: int = DEFAULT_PERSIST_EVERY,
        probes: Mapping[Source, Probe] | None = None,
        monotonic: Callable[[], float] = boot_clock,
    ) -> None:
        """Load the persisted mark from `store`; `source` is the system clock, `probes` the sources to poll
        (rtc, ntp, system; none by default: then only confirm() and device statements can make it trusted)."""
        if persist_every < 0:
            raise ValueError("persist_every must be >= 0")
        self._store = store
        self._source = source
        self._persist_every = persist_every
        self._probes = dict(probes or {})
        self._mono = monotonic
        stored = store.get_meta(HIGH_WATER_KEY)
        try:
            persisted = int(stored) if stored is not None else 0
        except ValueError:
            persisted = 0  # a garbled mark only loses the protection; refusing every key would be worse
        self._persisted = persisted
        self._high = persisted
        self._anchor: tuple[int, float] | None = None  # (trusted Unix time, monotonic reading) at confirmation
        self.trusted_by: Source | None = None  # the source of the latest confirmation
        self._next_probe = -math.inf

    # ------------------------------------------------------------------ time

    def now(self) -> int:
        """The current guarded time in whole seconds; persists the mark when it has advanced enough."""
        t = math.floor(self._source())
        if self._anchor is not None:
            wall, mono = self._anchor
            t = max(t, wall + math.floor(self._mono() - mono))
        if t > self._high:
            self._high = t
            if self._high - self._persisted > self._persist_every:
                self.persist()
        return self._high

    @property
    def trusted(self) -> bool:
        """True once a trusted source has confirmed the time since this clock was made."""
        return self._anchor is not None

    def persist(self) -> None:
        """Write the high-water mark now (never lowering a mark another process wrote)."""
        stored = self._store.max_meta_int(HIGH_WATER_KEY, self._high)
        self._high = max(self._high, stored)
        self._persisted = self._high

    def persist_now(self) -> int:
        """The guarded time, made durable before returning (a decision that depends on it must survive a cut)."""
        t = self.now()
        if self._high > self._persisted:
            self.persist()
        return t

    @property
    def high_water(self) -> int:
        """The highest time seen so far (in memory; may be ahead of what is persisted)."""
        return self._high

    def source_behind_by(self) -> int:
        """How many seconds the system clock is behind the mark (0 if not): worth a warning in `doctor`."""
        return max(0, self._high - math.floor(self._source()))

    # ------------------------------------------------------------------ trust

    def acceptable(self, at: int) -> str | None:
        """Why a confirmation saying `at` would be refused (None: it would be accepted)."""
        if at < EARLIEST:
            return "before 2026"
        if at < self.now() - SKEW:
            return "behind"
        return None

    def confirm(self, at: int, source: Source, *, durable: bool = True) -> bool:
        """A trusted source says it is `at` now: trust the clock from here on (never moving it back).

        With `durable` (and always for the first confirmation) the mark is written before this returns; a probe
        re-confirming a trusted clock every few seconds leaves that to now()'s periodic writes (SD card wear).
        """
        if self.acceptable(at) is not None:
            return False
        first = self._anchor is None
        trusted_time = max(self.now(), at)
        self._anchor = (trusted_time, self._mono())
        self.trusted_by = source
        self._high = max(self._high, trusted_time)
        if durable or first:
            self.persist()
        return True

    def confirm_statement(self, at: int, source: Source, max_forward: int) -> Statement:
        """A device's statement that it is `at` now, judged by the rule of PROTOCOL.md §5.7.

        Accepted if it is not before EARLIEST, not more than SKEW behind the guarded time, and not further ahead
        than SKEW once the clock is trusted, or than `max_forward` while it is not. Accepted, it confirms the
        clock (durably) and moves it forward to `at` if `at` is ahead; refused, it changes nothing.
        """
        current = self.now()
        reason = self.acceptable(at)
        if reason is None and at > current + (SKEW if self.trusted else max(SKEW, max_forward)):
            reason = "too far ahead"
        if reason is not None:
            return Statement(False, reason, current, self.trusted)
        self.confirm(at, source)
        return Statement(True, "confirmed", self.now(), True)

    def refresh(self, *, force: bool = False) -> None:
        """Ask the configured probes (at most every PROBE_EVERY s unless `force`); the first that vouches confirms."""
        mono = self._mono()
        if not force and mono < self._next_probe:
            return
        self._next_probe = mono + PROBE_EVERY
        for name, probe in self._probes.items():
            try:
                said = probe().time
            except OSError:
                continue
            if said is not None and self.confirm(said, name, durable=False):
                return

    def describe(self) -> list[tuple[Source, ProbeResult]]:
        """What every configured probe says now (for `doctor`); nothing is confirmed by asking."""
        out = []
        for name, probe in self._probes.items():
            try:
                result = probe()
            except OSError as exc:
                result = ProbeResult(None, f"cannot be read: {exc}")
            if result.time is not None:
                why = self.acceptable(result.time)
                if why == "behind":
                    result = ProbeResult(None, f"{result.detail}, but {self.high_water - result.time} s behind the "
                                               "time this vehicle has already seen (flat RTC battery?)")
                elif why is not None:
                    result = ProbeResult(None, f"{result.detail}, but that is before 2026")
            out.append((name, result))
        return out

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Persist the mark if it moved since the last write; call before closing the store (idempotent)."""
        if self._high > self._persisted:
            self.persist()

    def __enter__(self) -> GuardedClock:
        """Use the clock as a context manager that persists on exit."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Persist the mark."""
        self.close()


# ---------------------------------------------------------------------------------------------- probes


def rtc_probe(root: Path = Path("/sys/class/rtc")) -> Probe:
    """A probe of the kernel's real-time clocks: the time the first readable `rtcN/since_epoch` gives.

    The RTC is read directly, so it counts whoever set the system clock at boot (the kernel's hctosys, or udev's
    hwclock for an RTC driver loaded as a module). The kernel refuses to read an RTC whose time it knows is invalid.
    """

    def probe() -> ProbeResult:
        rtcs = sorted(root.glob("rtc[0-9]*")) if root.is_dir() else []
        if not rtcs:
            return ProbeResult(None, f"no real-time clock ({root} lists none)")
        problems = []
        for rtc in rtcs:
            try:
                seconds = int((rtc / "since_epoch").read_text().strip())
            except (OSError, ValueError) as exc:
                problems.append(f"{rtc.name} cannot be read ({exc.__class__.__name__})")
                continue
            return ProbeResult(seconds, f"{rtc.name} reads {seconds}" + _hctosys(rtc))
        return ProbeResult(None, "; ".join(problems))

    return probe


def _hctosys(rtc: Path) -> str:
    try:
        return " (set the system clock at boot)" if (rtc / "hctosys").read_text().strip() == "1" else ""
    except OSError:
        return ""


class _Timex(ctypes.Structure):
    # struct timex up to `status` (adjtimex(2)); the tail is padding big enough for every ABI's full struct.
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("_rest", ctypes.c_byte * 256)]


def read_adjtimex() -> tuple[int, int]:
    """(return value, maxerror in µs) of a read-only adjtimex(2) (modes = 0: needs no privilege); OSError if none."""
    name = ctypes.util.find_library("c")
    if name is None:
        raise OSError("no C library to call adjtimex with")
    libc = ctypes.CDLL(name, use_errno=True)
    call = getattr(libc, "adjtimex", None)
    if call is None:  # not Linux: no such call, so nothing says the clock is synchronised
        raise OSError("this system has no adjtimex")
    tx = _Timex()
    rc = int(call(ctypes.byref(tx)))
    if rc < 0:
        raise OSError(ctypes.get_errno(), "adjtimex failed")
    return rc, int(tx.maxerror)


def ntp_probe(adjtimex: Callable[[], tuple[int, int]] = read_adjtimex,
              synchronized_file: Path = Path("/run/systemd/timesync/synchronized"),
              system: Callable[[], float] = time.time) -> Probe:
    """A probe of NTP synchronisation: the system time while the kernel says it is synchronised.

    Synchronised means what systemd's timedatectl calls NTPSynchronized: adjtimex's maximum error below 16 s (an
    NTP daemon lowers it; the kernel grows it by 500 µs a second and stops at 16 s when nobody syncs). The
    systemd-timesyncd flag file (in /run: it never survives a boot) is reported too, but the kernel decides.
    """

    def probe() -> ProbeResult:
        flag = " (systemd-timesyncd synchronised this boot)" if synchronized_file.exists() else ""
        try:
            _rc, maxerror = adjtimex()
        except OSError as exc:
            return ProbeResult(None, f"cannot ask the kernel (adjtimex: {exc})")
        if maxerror >= NTP_MAX_ERROR_US:
            return ProbeResult(None, "the kernel says the system clock is not synchronised" + flag)
        return ProbeResult(math.floor(system()), f"synchronised, maximum error {maxerror / 1e6:.3f} s" + flag)

    return probe


def system_probe(system: Callable[[], float] = time.time) -> Probe:
    """A probe that vouches for the system clock as it is (trust_system: a dev machine, never a Pi without RTC)."""

    def probe() -> ProbeResult:
        return ProbeResult(math.floor(system()), "the system clock, trusted as it is (trust_system)")

    return probe


def probes_for(*, rtc: bool, ntp: bool, system: bool) -> dict[Source, Probe]:
    """The probes of the sources a config trusts, in the order they are asked (the RTC first: it needs no network)."""
    probes: dict[Source, Probe] = {}
    if rtc:
        probes[Source.RTC] = rtc_probe()
    if ntp:
        probes[Source.NTP] = ntp_probe()
    if system:
        probes[Source.SYSTEM] = system_probe()
    return probes

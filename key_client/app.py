"""The device's use cases: pair, run a command, manage keys, read the audit log, scan, passive entry.

One DeviceApp per invocation; `key_client.cli` parses arguments into calls of its methods and formats the
results, the proximity runner acts through `DeviceApp.command`, and tests call it directly. Every method
returns plain data (or raises a ClientError saying what failed and whether the vehicle may have acted);
nothing here prints. The retry budget lives in the driver (docs/CLIENT.md, "Time limits and retries").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from dkey_link.contract import Advertisement, Central, LinkLost, RadioError
from protocol import (
    MAX_CODE_ATTEMPTS,
    MAX_CODE_TTL,
    AdSecret,
    AuditHead,
    AuditRecord,
    AuthenticationError,
    ClockReport,
    Command,
    DecodeError,
    IssuedCode,
    KeyEdit,
    KeyInfo,
    KeyPair,
    LocalProtocolError,
    PairingTerms,
    Role,
    Status,
    StatusReport,
    decode_audit_page,
    decode_key_page,
    decode_public_key,
    list_keys_args,
    pairing_uri,
    parse_code,
    read_audit_args,
    resolve_token,
    revoke_args,
    set_time_args,
)

from . import driver
from .audit_pins import AuditPins, AuditTampered, Pin, PinCheck, check
from .driver import CONNECT_ATTEMPTS, WINDOW_PER_ATTEMPT, Clock, Target, VehicleLink, connect_vehicle, find_vehicles
from .errors import (
    ClientError,
    ConnectFailed,
    KeychainError,
    OutcomeUnknown,
    ProtocolViolation,
    TimedOut,
    UsageError,
    VehicleNotFound,
    VehicleRefused,
)
from .keychain import Keychain, VehicleEntry
from .radios import make_central

if TYPE_CHECKING:
    from .proximity import Action, ProximityPolicy
    from .shares import ImportedResult, IssuedResult, ListedRevocation

T = TypeVar("T")
log = logging.getLogger("key_client.app")

PAIR_TIMEOUT = 30.0  # pairing runs a PAKE on both sides: slower than a command on a Pi Zero
IDENTIFY_TIMEOUT = 5.0  # `scan --identify`: one attempt per advertiser, it is a survey
KEY_PAGE = 50  # keys asked for per LIST_KEYS request (a page holds what fits the size cap)
AUDIT_PAGE = 100  # audit records asked for per READ_AUDIT request
MAX_AUDIT_LIMIT = 10_000  # `audit --limit` upper bound: 100 round trips over BLE
DEFAULT_CODE_TTL = 600  # `issue-code` without --expires: ten minutes, `key-server pair`'s default
DEFAULT_CODE_ATTEMPTS = 5  # `issue-code` without --attempts: `key-server pair`'s default

# Asks for a passphrase: (prompt, confirm) -> the passphrase; raises KeychainError if it cannot ask.
PassphraseSource = Callable[[str, bool], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class RadioChoice:
    """Which radio to use: `kind` ble, sim (or mock inside the tests), with its options."""

    kind: str = "ble"
    adapter: str | None = None
    sim_dir: Path | None = None


@dataclass(frozen=True, slots=True)
class CommandDone:
    """A command the vehicle carried out; `report` is its status report, read only inside a confidential session.

    A fast-path answer (UNLOCK, LOCK, START) carries no report (PROTOCOL.md §5.3): OK means the actuator took the
    command, and `report` is None.
    """

    entry: VehicleEntry
    command: Command
    report: StatusReport | None
    clock: ClockReport | None = None  # the vehicle asked for the time and this device stated it (PROTOCOL.md §5.7)


@dataclass(frozen=True, slots=True)
class TimeStated:
    """This device's statement of the time and the vehicle's verdict on it (`key-client set-time`)."""

    entry: VehicleEntry
    stated: int  # the Unix time this device sent
    accepted: bool
    clock: ClockReport  # the vehicle's guarded time after the statement, and whether it now trusts its clock


@dataclass(frozen=True, slots=True)
class KeyListing:
    """The keys enrolled on a vehicle (every page), as an owner reads them."""

    entry: VehicleEntry
    keys: list[KeyInfo]


@dataclass(frozen=True, slots=True)
class Revocation:
    """What `revoke` did: on the vehicle at once (`key`, `already_revoked`), on this device's list (`listed`), or both.

    `key` is None when the vehicle was not reached (or does not list the key yet: a share not enrolled); `listed`
    is None when the key was not put on a list (this device is not an owner, or it cannot name the key offline).
    """

    entry: VehicleEntry
    key: KeyInfo | None
    already_revoked: bool
    listed: ListedRevocation | None = None
    reached: bool = True  # the vehicle was reached in this run
    delivered: bool = False  # this device's list reached the vehicle in this run (acknowledged)
    rotated: AdSecret | None = None  # with rotate_secret: the vehicle's new advertising secret (kept in the keychain)

    @property
    def key_id(self) -> bytes:
        """The revoked key's id."""
        if self.key is not None:
            return self.key.key_id
        assert self.listed is not None
        return self.listed.key_id

    @property
    def name(self) -> str:
        """The revoked key's name, as the vehicle or the issued share names it."""
        if self.key is not None:
            return self.key.name
        return self.listed.name if self.listed is not None else ""

    @property
    def this_device(self) -> bool:
        """True if it was this device's own key for that vehicle."""
        return self.key_id == self.entry.key_id


@dataclass(frozen=True, slots=True)
class CodeIssued:
    """A pairing code the vehicle issued at an owner's request (ISSUE_CODE), and the terms it was asked for."""

    entry: VehicleEntry
    code: str
    expires_at: int
    terms: PairingTerms
    uri: str  # the dkey://pair QR payload, as `key-server pair` prints it


@dataclass(frozen=True, slots=True)
class KeyEdited:
    """A key changed on the vehicle (EDIT_KEY): its record before and as the vehicle now holds it."""

    entry: VehicleEntry
    before: KeyInfo
    after: KeyInfo


@dataclass(frozen=True, slots=True)
class AuditListing:
    """Consecutive audit records read from a vehicle, oldest first, with its signed head checked against the pin.

    `problem` says why the log cannot be the one this device saw before (cut or rewritten); the pin then stays.
    """

    entry: VehicleEntry
    records: list[AuditRecord]
    head: Pin | None = None  # the vehicle's signed head, as pinned now (SEQ:HASH for `audit --verify --pinned`)
    pinned_before: Pin | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class ShareRequest:
    """What `request-share` shows: the request text (its QR payload) and the key it names."""

    uri: str
    key_id: bytes
    name: str
    reused: bool  # the key of an earlier request that no vehicle uses yet


@dataclass(frozen=True, slots=True)
class Sighting:
    """One vehicle heard in a scan; `vehicle_id` only with identify (a claim, checked by no signature)."""

    advertisement: Advertisement
    identified: bool = False
    vehicle_id: bytes | None = None
    keychain_name: str | None = None  # with identify: our entry for that vehicle id
    last_seen_as: str | None = None  # without identify: our entry last seen at this address (proves nothing)
    # Our entry whose advertising secret made this advertisement's token (PROTOCOL.md §13; no connection needed).
    recognised_as: str | None = None


@dataclass(frozen=True, slots=True)
class AutoEvent:
    """What passive entry did: `kind` says which, `done` carries the vehicle's report, `error` the problem."""

    kind: Literal["learned", "watching", "acted", "unknown", "not_delivered", "refused_for_now"]
    entry: VehicleEntry
    action: str  # 'status', 'unlock' or 'lock'
    done: CommandDone | None = None
    error: ClientError | None = None
    policy: ProximityPolicy | None = None  # with "watching"


@dataclass
class AutoOptions:
    """Flags of `key-client auto`; None means "from config.toml [auto], else the default"."""

    relay_risk_accepted: bool = False
    unlock_rssi: int | None = None
    lock_rssi: int | None = None
    dwell: float | None = None
    lost: float | None = None
    interval: float | None = None
    duration: float | None = None  # stop after this many seconds (None: until stopped)


RELAY_WARNING = (
    "`auto` unlocks without you touching anything, so it is weaker against relay attacks: two radios "
    "forwarding the link can make the vehicle look close while you are away. Opt in with "
    "--i-understand-relay-risk (or `relay_risk_accepted = true` under [auto] in the keychain's config.toml)."
)


class DeviceApp:
    """The device's use cases over one keychain and one radio choice."""

    def __init__(
        self,
        keychain: Path | None,
        radio: RadioChoice,
        *,
        passphrase: PassphraseSource,
        scan_time: float = 10.0,
        connect_attempts: int = CONNECT_ATTEMPTS,
        progress: Callable[[str], None] | None = None,
        note: Callable[[str], None] | None = None,
        clock: Clock | None = None,
        central_factory: Callable[[], Central] | None = None,
        wall: Callable[[], float] | None = None,
    ) -> None:
        """`progress` hears what the radio is doing, `note` remarks meant for the person; both may be None.

        `wall` is this device's own clock (None: time.time), which it states to a vehicle that asks for the time.
        """
        self._wall = wall or time.time
        self.keychain_path = keychain
        self._keychain_dir: Path | None = None  # resolved (and an old default moved) on first use
        self.radio = radio
        self.scan_time = scan_time
        self.connect_attempts = connect_attempts
        self._passphrase = passphrase
        self._progress = progress or (lambda _msg: None)
        self._note = note or (lambda _msg: None)
        self._clock = clock
        self._central_factory = central_factory

    # ------------------------------------------------------------------ plumbing

    def keychain(self, *, create: bool = True) -> Keychain:
        """The keychain (made, mode 0700, if `create` and it does not exist); an old default one is moved first."""
        if self._keychain_dir is None:
            from .relocate import keychain_dir

            self._keychain_dir = keychain_dir(self.keychain_path, self._note)
        return Keychain.open(self._keychain_dir, create=create)

    def _central(self) -> Central:
        if self._central_factory is not None:
            return self._central_factory()
        return make_central(self.radio.kind, adapter=self.radio.adapter, sim_dir=self.radio.sim_dir)

    async def _device_key(self, kc: Keychain, entry: VehicleEntry) -> KeyPair:
        if entry.keyring:  # the OS keyring may wait on D-Bus or an unlock dialog: off the event loop
            return await asyncio.to_thread(kc.load_key, entry)
        secret = await self._passphrase(f"passphrase for the key of {entry.name}: ", False) if entry.encrypted \
            else None
        return kc.load_key(entry, secret)

    @staticmethod
    def _target(kc: Keychain, entry: VehicleEntry) -> Target:
        """The pinned vehicle of `entry`, with its advertising secret when this keychain holds one, and the share
        certificate it still has to present (the fallback presents it to tell the vehicle from others)."""
        from .sharebook import ShareBook

        ad = kc.ad_secret(entry)
        held = ShareBook(kc.path).imported(entry.vehicle_id) if entry.via == "share" else None
        share = held.certificate if held is not None and not held.enrolled else None
        return Target(entry.vehicle_public_key, entry.vehicle_id, ad.secret if ad is not None else None, share)

    async def _refresh_ad_secret(self, link: VehicleLink, kc: Keychain, entry: VehicleEntry) -> None:
        """AD_SECRET in the open session; keep the record if it is new (best effort: the car is found without it)."""
        try:
            result = await link.secure(Command.AD_SECRET)
            ad = AdSecret.decode(result.data)
        except VehicleRefused as exc:
            log.info("%s did not give its advertising secret: %s", entry.name, exc)
            return
        except (ClientError, DecodeError) as exc:
            self._note(f"could not fetch the advertising secret of {entry.name}: {exc}; the next session tries "
                       "again")
            return
        if kc.store_ad_secret(entry, ad):
            log.info("stored the advertising secret of %s (generation %d)", entry.name, ad.generation)

    async def _connect(self, central: Central, device: KeyPair, target: Target, *, hint: str | None = None,
                       candidates: list[Advertisement] | None = None) -> VehicleLink:
        return await connect_vehicle(central, device, target, scan_time=self.scan_time, prefer_address=hint,
                                     attempts=self.connect_attempts,
                                     connect_window=self.connect_attempts * WINDOW_PER_ATTEMPT,
                                     candidates=candidates, on_progress=self._progress, clock=self._clock)

    async def _run_command(self, kc: Keychain, entry: VehicleEntry, central: Central, device: KeyPair,
                           cmd: Command) -> CommandDone:
        """Connect, run one command once (never resent if its outcome is unknown), disconnect.

        STATUS goes inside a confidential session: its answer (lock, door, start output) says whether the car is
        open, and on the fast path it would travel in clear (PROTOCOL.md §11, property 5). The others stay on
        the fast path: their command code already tells a listener what they do.
        """
        link = await self._connect(central, device, self._target(kc, entry), hint=entry.address_hint)
        clock: ClockReport | None = None
        try:
            await self._present_share(link, kc, entry)
            if link.probed:
                # Found by the fallback (no advertiser carried our token): learn the current secret in a session
                # (the one that proved it is our car, or one opened now that the share is enrolled), then run the
                # command sealed inside it (CLIENT.md, "Finding the vehicle").
                if not link.session_open:
                    await link.open_secure()
                await self._refresh_ad_secret(link, kc, entry)
                result = await link.secure(cmd)
            elif cmd is Command.STATUS:
                await link.open_secure()
                result = await link.secure(cmd)
                await self._refresh_ad_secret(link, kc, entry)
            else:
                result = await link.command(cmd)
            try:  # STATUS: the whole report, sealed; the fast path: empty, or the time_wanted hint alone (§5.3)
                report = StatusReport.decode(result.data)
            except DecodeError as exc:
                raise ProtocolViolation(f"the vehicle's signed answer does not parse: {exc}") from exc
            await self._deliver_lists(link, kc, entry)
            if report.time_wanted:
                # The vehicle does not trust its clock yet and this key may confirm it: state the time on this
                # link now (a confidential session), so guests work again without anyone doing anything.
                clock = await self._state_time_after(link, entry, session_open=link.session_open)
        except OutcomeUnknown as exc:
            raise OutcomeUnknown(f"{exc} (key-client never resends a command whose outcome is unknown)") from exc
        except BaseException:
            await link.close()
            raise
        await _close_keeping_result(link)
        entry = kc.remember_address(entry, link.advertisement.address)
        return CommandDone(entry, cmd, report if cmd is Command.STATUS else None, clock)

    async def _state_time_after(self, link: VehicleLink, entry: VehicleEntry, *,
                                session_open: bool) -> ClockReport | None:
        """Best effort after a command that succeeded: state the time; a failure is a note, never the result."""
        try:
            if not session_open:
                await link.open_secure()
            stated = await _state_time(link, self._wall)
        except ClientError as exc:
            self._note(f"{entry.name} asked for the time but stating it failed: {exc}")
            return None
        if stated[0]:
            self._note(f"{entry.name} asked for the time: stated it; the vehicle's clock is now trusted")
        else:
            self._note(f"{entry.name} asked for the time but refused this device's ({_skew(stated[1], stated[2])}): "
                       "check this device's clock")
        return stated[2]

    async def _present_share(self, link: VehicleLink, kc: Keychain, entry: VehicleEntry) -> None:
        """SHARE_PRESENT once, before the first command, while the keychain says the share is not enrolled yet.

        OK (enrolled) and NO_CHANGE (already enrolled) both mean done for good; any other answer is the command's
        refusal, in words that name the share.
        """
        from protocol import ShareCertificate

        from .sharebook import ShareBook

        if entry.via != "share":
            return
        book = ShareBook(kc.path)
        held = book.imported(entry.vehicle_id)
        if held is None or held.enrolled:
            return
        try:
            cert = ShareCertificate.decode(held.certificate)
        except DecodeError as exc:
            raise KeychainError(f"the share kept for {entry.name} is damaged ({exc}): import it again") from None
        # The fallback (no token resolved) already presented it to prove which vehicle this is.
        answer = link.share_answer or await link.present_share(held.certificate)
        if answer.status in (Status.OK, Status.NO_CHANGE):
            book.mark_enrolled(entry.vehicle_id)
            if answer.status is Status.OK:
                self._note(f"{entry.name} enrolled this device's key with the share from owner key "
                           f"{cert.issuer_id.hex()}")
            return
        raise VehicleRefused(answer.status, authenticated=True, message=_share_refusal(cert, answer.status))

    async def _deliver_lists(self, link: VehicleLink, kc: Keychain, entry: VehicleEntry) -> None:
        """After an OK answer: every revocation list held for this vehicle that it has not acknowledged yet.

        Best effort: the command already succeeded, so a failure here is a note and the list waits for the next
        connection. A list the vehicle refuses (DENIED: its signer is no longer an active owner, or the signature
        does not verify) is dropped from the ones to carry, since no later connection can change that answer.
        """
        from .sharebook import ShareBook

        book = ShareBook(kc.path)
        for held in book.undelivered(entry.vehicle_id):
            try:
                answer = await link.send_revocations(held.raw)
            except ClientError as exc:
                self._note(f"the revocation list of owner key {held.issuer_id.hex()} (version {held.version}) was "
                           f"not delivered to {entry.name}: {exc}; it goes with the next connection")
                return
            if answer.status in (Status.OK, Status.NO_CHANGE):
                book.acknowledge(entry.vehicle_id, held.issuer_id, answer.version)
                if answer.status is Status.OK:
                    self._note(f"delivered the revocation list of owner key {held.issuer_id.hex()} (version "
                               f"{held.version}) to {entry.name}")
            elif answer.status is Status.DENIED:
                book.acknowledge(entry.vehicle_id, held.issuer_id, held.version)
                self._note(f"{entry.name} refused the revocation list of owner key {held.issuer_id.hex()} (version "
                           f"{held.version}): its signer is not an active owner of the vehicle; it is no longer "
                           "carried")
            else:
                self._note(f"{entry.name} did not take the revocation list of owner key {held.issuer_id.hex()} "
                           f"({answer.status.name.lower()}); it goes with the next connection")

    async def _owner_session(self, vehicle: str | None,
                             action: Callable[[VehicleLink, VehicleEntry], Awaitable[T]], *,
                             not_permitted: str = "only owner keys can manage keys and read the audit log") -> T:
        """Connect, open the confidential session, run `action`, disconnect."""
        kc = self.keychain()
        entry = kc.select(vehicle)
        device = await self._device_key(kc, entry)
        central = self._central()
        try:
            link = await self._connect(central, device, self._target(kc, entry), hint=entry.address_hint)
            try:
                await self._present_share(link, kc, entry)
                if not link.session_open:
                    await link.open_secure()
                result = await action(link, entry)
                await self._refresh_ad_secret(link, kc, entry)
                await self._deliver_lists(link, kc, entry)
            except VehicleRefused as exc:
                if exc.status is Status.NOT_PERMITTED and entry.role != "owner":
                    raise VehicleRefused(exc.status, authenticated=exc.authenticated,
                                         message=f"this device holds a {entry.role} key for {entry.name}: "
                                                 f"{not_permitted}") from exc
                raise
            except BaseException:
                await link.close()
                raise
            await _close_keeping_result(link)
            kc.remember_address(entry, link.advertisement.address)
            return result
        finally:
            await central.aclose()

    # ------------------------------------------------------------------ keychain

    def vehicles(self) -> tuple[Path, list[VehicleEntry]]:
        """The keychain's path and the vehicles it holds, in pairing order (nothing is created)."""
        kc = self.keychain(create=False)
        return kc.path, kc.vehicles()

    def forget(self, vehicle: str) -> VehicleEntry:
        """Delete this device's key for `vehicle`; the vehicle keeps listing it until an owner revokes it.

        The share imported for it and the revocation lists carried to it go too; the shares this device issued
        stay on record (they are the owner's history, and `revoke` may still name them).
        """
        from .sharebook import ShareBook

        kc = self.keychain(create=False)
        entry = kc.forget(vehicle)
        ShareBook(kc.path).drop_vehicle(entry.vehicle_id)
        return entry

    # ------------------------------------------------------------------ shares (PROTOCOL.md §12)

    def request_share(self, name: str | None = None, *, now: int | None = None) -> ShareRequest:
        """Make (or reuse: one that no vehicle uses yet) a device key for a share and return its request text."""
        from protocol import MAX_SHARE_NAME

        from .share_uri import share_request_uri
        from .sharebook import PendingRequest, ShareBook

        if name is not None and (len(name.encode()) > MAX_SHARE_NAME
                                 or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name)):
            # A share's name is at most 32 bytes (PROTOCOL.md §12): a longer suggestion could not be used as is.
            raise UsageError(f"--name must be at most {MAX_SHARE_NAME} bytes of UTF-8 without control characters")
        kc = self.keychain()
        book = ShareBook(kc.path)
        when = int(now if now is not None else self._wall())
        # Reuse the newest request whose key no vehicle took yet: showing the request twice must not make two
        # keys, and an owner may already hold the first text.
        pending = [r for r in book.requests() if kc.find_key_id(r.key_id) is None]
        for request in reversed(pending):
            try:
                pair = kc.load_request_key(request.key_id)
            except KeychainError:
                book.drop_request(request.key_id)  # its key file is gone: that request can never be used
                continue
            chosen = request.name if name is None else name
            if chosen != request.name:
                book.add_request(PendingRequest(request.key_id, chosen, request.created_at))
            return ShareRequest(share_request_uri(pair.public_bytes, chosen), pair.key_id, chosen, reused=True)
        pair = kc.new_device_key()
        book.add_request(PendingRequest(pair.key_id, name or "", when))
        return ShareRequest(share_request_uri(pair.public_bytes, name or ""), pair.key_id, name or "", reused=False)

    async def share(self, request_text: str, vehicle: str | None, *, role: str, name: str | None,
                    valid_from: str | None = None, valid_until: str | None = None,
                    schedule: str | None = None) -> IssuedResult:
        """Sign a share for the key in `request_text` on `vehicle` (owner keys only) and record it; offline."""
        from dkey_link.when import parse_when
        from protocol import Role

        from .shares import issue_share

        granted = {"driver": Role.DRIVER, "guest": Role.GUEST}.get(role)
        if granted is None:
            raise UsageError(f"a share grants driver or guest, not {role!r}")
        now = int(self._wall())
        try:
            start = parse_when(valid_from, now) if valid_from else now
            end = parse_when(valid_until, now, end_of_day=True) if valid_until else None
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        kc = self.keychain()
        entry = kc.select(vehicle)
        if entry.role != "owner":
            from .shares import NotAllowed

            raise NotAllowed(f"this device holds a {entry.role} key for {entry.name}: only an owner's key can sign "
                             "a share")
        device = await self._device_key(kc, entry)
        return issue_share(kc, entry, device, request_text, role=granted, name=name, valid_from=start,
                           valid_until=end, schedule=schedule, now=now)

    def import_share(self, text: str, *, name: str | None = None) -> ImportedResult:
        """Import a dkey://share text (or @FILE) for a key this device requested; offline."""
        from .shares import import_share, read_share_text

        return import_share(self.keychain(), read_share_text(text), name=name, now=int(self._wall()))

    # ------------------------------------------------------------------ fast path

    async def command(self, cmd: Command, vehicle: str | None = None) -> CommandDone:
        """unlock / lock / status / start on `vehicle` (nickname or id prefix; None: the only one)."""
        kc = self.keychain()
        entry = kc.select(vehicle)
        device = await self._device_key(kc, entry)
        central = self._central()
        try:
            return await self._run_command(kc, entry, central, device, cmd)
        finally:
            await central.aclose()

    # ------------------------------------------------------------------ owner commands

    async def set_time(self, vehicle: str | None = None) -> TimeStated:
        """State this device's time to the vehicle (owner and driver keys; PROTOCOL.md §5.7)."""

        async def action(link: VehicleLink, entry: VehicleEntry) -> TimeStated:
            accepted, stated, report = await _state_time(link, self._wall)
            return TimeStated(entry, stated, accepted, report)

        return await self._owner_session(vehicle, action, not_permitted=(
            "only owner and driver keys without a validity window or schedule can state the time"))

    async def keys(self, vehicle: str | None = None) -> KeyListing:
        """Every key enrolled on the vehicle (owner keys only); the keychain learns this device's role from it."""
        listing = await self._owner_session(vehicle, lambda link, entry: _listing(link, entry))
        mine = next((k for k in listing.keys if k.key_id == listing.entry.key_id), None)
        if mine is not None and Role.label_of(mine.role) != listing.entry.role:
            # An owner may have changed this key's role (EDIT_KEY): `share` and offline `revoke` go by the
            # keychain's record, so keep it true.
            entry = self.keychain().set_role(listing.entry, Role.label_of(mine.role))
            self._note(f"this device's key for {entry.name} is now {entry.role} (the keychain said otherwise)")
            listing = KeyListing(entry, listing.keys)
        return listing

    async def revoke(self, key: str, vehicle: str | None = None, *, with_shares: bool = False,
                     offline: bool = False, rotate_secret: bool = False) -> Revocation:
        """Revoke the key `key` names (hex key-id prefix or name): on this device's revocation list when it can name
        it offline (a share it issued, or a full key id; owner keys only), and on the vehicle at once when in reach.

        `offline` skips the vehicle. The list travels with the next OK command of any of its owner or driver
        devices that carry it (PROTOCOL.md §12); `with_shares` also revokes the keys that key enrolled by share.
        `rotate_secret` then has the vehicle replace its advertising secret (ROTATE_SECRET, PROTOCOL.md §13.1), so
        the revoked device no longer recognises the car on air; it needs the vehicle in reach.
        """
        if offline and rotate_secret:
            raise UsageError("--rotate-secret needs the vehicle in reach: it cannot go with --offline")
        from .shares import resolve_offline, revoke_offline

        kc = self.keychain()
        entry = kc.select(vehicle)
        listed: ListedRevocation | None = None
        known = resolve_offline(kc, entry, key) if entry.role == "owner" else None
        if known is not None and known[0] != entry.key_id:
            device = await self._device_key(kc, entry)
            listed = revoke_offline(kc, entry, device, known[0], known[1], with_shares=with_shares,
                                    now=int(self._wall()))
        if offline:
            if listed is None:
                raise UsageError(f"--offline needs an owner key and a key this device can name without the vehicle "
                                 f"(a share it issued, or a full 8-digit key id), not {key!r}")
            return Revocation(entry, None, already_revoked=not listed.changed, listed=listed, reached=False)

        async def action(link: VehicleLink, entry: VehicleEntry) -> Revocation:
            done = await revoke_on(link, entry)
            if not rotate_secret:
                return done
            ad = AdSecret.decode((await link.secure(Command.ROTATE_SECRET)).data)
            kc.store_ad_secret(entry, ad)  # this device keeps recognising the car
            return replace(done, rotated=ad)

        async def revoke_on(link: VehicleLink, entry: VehicleEntry) -> Revocation:
            keys = await _list_keys(link)
            try:
                target = resolve_key(keys, listed.key_id.hex() if listed is not None else key)
            except UsageError:
                if listed is None:
                    raise
                # Not enrolled (yet): the list, delivered after this session's OK answer, keeps it out for good.
                return Revocation(entry, None, already_revoked=False, listed=listed)
            if target.revoked_at is not None:
                return Revocation(entry, target, already_revoked=True, listed=listed)
            try:
                await link.secure(Command.REVOKE_KEY, revoke_args(target.key_id, with_shares=with_shares),
                                  accept=frozenset({Status.OK, Status.NO_CHANGE}))
            except VehicleRefused as exc:
                if exc.status in (Status.LAST_OWNER, Status.NOT_PERMITTED) and entry.role == "owner":
                    raise VehicleRefused(exc.status, authenticated=exc.authenticated,
                                         message=f"{target.name} is the last owner key: revoking it would lock "
                                                 "every owner out; add another owner first (at the vehicle, "
                                                 "`key-server revoke --force` can still do it)") from exc
                raise
            return Revocation(entry, target, already_revoked=False, listed=listed)

        try:
            done = await self._owner_session(vehicle, action)
        except (VehicleNotFound, ConnectFailed, TimedOut) as exc:
            if listed is None:
                raise
            self._note(f"{entry.name} is not in reach ({exc}): the revocation waits on this device's revocation list"
                       + ("; the advertising secret was not rotated (run it again with the vehicle in reach)"
                          if rotate_secret else ""))
            return Revocation(entry, None, already_revoked=not listed.changed, listed=listed, reached=False)

        if listed is not None:
            from .sharebook import ShareBook

            now_held = ShareBook(kc.path).held(entry.vehicle_id, listed.held.issuer_id)
            if now_held is not None and now_held.acknowledged >= listed.held.version:
                done = replace(done, delivered=True)
        return done

    async def issue_code(self, vehicle: str | None = None, *, role: str, name: str, expires: str | None = None,
                         attempts: int = DEFAULT_CODE_ATTEMPTS, valid_from: str | None = None,
                         valid_until: str | None = None, schedule: str | None = None) -> CodeIssued:
        """Ask the vehicle for a one-time pairing code for a new device with these terms (owner keys only)."""
        now = int(self._wall())
        start = _when_arg(valid_from, now, "--valid-from")
        end = _when_arg(valid_until, now, "--valid-until", end_of_day=True)
        ttl = (_when_arg(expires, now, "--expires") or now + DEFAULT_CODE_TTL) - now
        if not 1 <= ttl <= MAX_CODE_TTL:
            raise UsageError(f"--expires must be a time within {MAX_CODE_TTL // 86400} days from now")
        if not 1 <= attempts <= MAX_CODE_ATTEMPTS:
            raise UsageError(f"--attempts must be 1 to {MAX_CODE_ATTEMPTS}")
        if start is not None and end is not None and end <= start:
            raise UsageError("--valid-until must be later than --valid-from")
        _check_schedule(schedule)
        terms = PairingTerms(_role_arg(role), name, ttl, attempts, start,
                             end, schedule)
        try:
            args = terms.encode()
        except ValueError as exc:
            raise UsageError(str(exc)) from None

        async def action(link: VehicleLink, entry: VehicleEntry) -> CodeIssued:
            result = await link.secure(Command.ISSUE_CODE, args)
            try:
                issued = IssuedCode.decode(result.data)
            except DecodeError as exc:
                raise ProtocolViolation(f"the vehicle's issued code does not parse: {exc}") from exc
            return CodeIssued(entry, issued.code, issued.expires_at, terms,
                              pairing_uri(issued.code, entry.vehicle_id, entry.advertised_name or entry.name))

        return await self._owner_session(vehicle, action, not_permitted="only owner keys can issue pairing codes")

    async def edit_key(self, key: str, vehicle: str | None = None, *, name: str | None = None,
                       role: str | None = None, valid_from: str | None = None, valid_until: str | None = None,
                       no_expiry: bool = False, schedule: str | None = None, no_schedule: bool = False) -> KeyEdited:
        """Change the name, role, window or schedule of the key `key` names (owner keys only)."""
        now = int(self._wall())
        start = _when_arg(valid_from, now, "--valid-from")
        end = _when_arg(valid_until, now, "--valid-until", end_of_day=True)
        if no_expiry and end is not None:
            raise UsageError("--valid-until and --no-expiry contradict each other")
        if no_schedule and schedule is not None:
            raise UsageError("--schedule and --no-schedule contradict each other")
        _check_schedule(schedule)
        new_role = None if role is None else _role_arg(role)
        if (name, new_role, start, end, schedule) == (None, None, None, None, None) and not (no_expiry or no_schedule):
            raise UsageError("nothing to change: give --name, --role, --valid-from, --valid-until, --no-expiry, "
                             "--schedule or --no-schedule")

        async def action(link: VehicleLink, entry: VehicleEntry) -> KeyEdited:
            target = resolve_key(await _list_keys(link), key)
            edit = KeyEdit(target.key_id, role=new_role, name=name, valid_from=start, valid_until=end,
                           schedule=schedule, clear_valid_until=no_expiry, clear_schedule=no_schedule)
            try:
                args = edit.encode()
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            try:
                result = await link.secure(Command.EDIT_KEY, args)
            except VehicleRefused as exc:
                if exc.status is Status.LAST_OWNER:
                    raise VehicleRefused(exc.status, authenticated=exc.authenticated,
                                         message=f"{target.name} is the last owner key: demoting it would leave the "
                                                 "vehicle without an owner; add another owner first") from exc
                if exc.status is Status.BAD_REQUEST:
                    raise VehicleRefused(exc.status, authenticated=exc.authenticated,
                                         message="the vehicle refused the change as invalid (a window that ends "
                                                 "before it starts, or a schedule it cannot read)") from exc
                raise
            try:
                after = KeyInfo.decode(result.data)
            except DecodeError as exc:
                raise ProtocolViolation(f"the vehicle's updated key record does not parse: {exc}") from exc
            return KeyEdited(entry, target, after)

        return await self._owner_session(vehicle, action, not_permitted="only owner keys can change keys")

    async def watch(self, vehicle: str | None, stop: asyncio.Event,
                    on_change: Callable[[VehicleEntry, StatusReport, bool], None]) -> int:
        """Subscribe with WATCH and report the state now (`initial` True), then each change, until `stop` is set.

        Returns how many changes were reported after the first state. The link dropping ends it with a
        ClientError that says so (owner and driver keys; PROTOCOL.md §9.6).
        """
        kc = self.keychain()

        async def action(link: VehicleLink, entry: VehicleEntry) -> int:
            # Lists first: once subscribed, a push could arrive while a list's answer is awaited.
            await self._deliver_lists(link, kc, entry)
            result = await link.secure(Command.WATCH)
            try:
                on_change(entry, StatusReport.decode(result.data), True)
            except DecodeError as exc:
                raise ProtocolViolation(f"the vehicle's answer to WATCH does not parse: {exc}") from exc
            seen = 0
            stopped = asyncio.ensure_future(stop.wait())
            try:
                while not stop.is_set():
                    change = asyncio.ensure_future(link.next_change())
                    await asyncio.wait((change, stopped), return_when=asyncio.FIRST_COMPLETED)
                    if not change.done():
                        change.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await change
                        break
                    try:
                        report = change.result()
                    except (LinkLost, RadioError) as exc:
                        plural = "" if seen == 1 else "s"
                        raise ClientError(f"the link to {entry.name} dropped after {seen} change{plural} ({exc}): "
                                          "run `key-client watch` again to keep watching") from exc
                    seen += 1
                    on_change(entry, report, False)
            finally:
                stopped.cancel()
            return seen

        return await self._owner_session(vehicle, action,
                                         not_permitted="only owner and driver keys can watch the vehicle's state")

    async def audit(self, vehicle: str | None = None, *, limit: int = 20, after: int | None = None) -> AuditListing:
        """Up to `limit` audit records after sequence number `after` (None: the newest `limit`), oldest first."""
        if not 1 <= limit <= MAX_AUDIT_LIMIT:
            raise UsageError(f"--limit must be between 1 and {MAX_AUDIT_LIMIT}, not {limit}")
        if after is not None and after < 0:
            raise UsageError(f"--after must be a sequence number >= 0, not {after}")

        pins = AuditPins(self.keychain(create=False).path)

        async def action(link: VehicleLink, entry: VehicleEntry) -> AuditListing:
            vehicle_key = decode_public_key(entry.vehicle_public_key)
            pin = pins.get(entry.vehicle_id)
            heads: list[AuditHead] = []

            async def read(after_seq: int, n: int) -> list[AuditRecord]:
                try:
                    head, page = decode_audit_page(
                        (await link.secure(Command.READ_AUDIT, read_audit_args(after_seq, n))).data)
                except DecodeError as exc:
                    raise ProtocolViolation(f"the vehicle's audit page does not parse: {exc}") from exc
                try:
                    head.verify(vehicle_key, entry.vehicle_id)
                except AuthenticationError:
                    raise AuditTampered(f"WARNING: {entry.name}'s signature on its audit head does not verify: "
                                        "the answer is not the vehicle's own") from None
                if heads and head.seq < heads[-1].seq:
                    raise AuditTampered(f"WARNING: {entry.name}'s audit head went back from {heads[-1].seq} to "
                                        f"{head.seq} during one read: its log is being cut")
                if page and page[-1].seq == head.seq and page[-1].entry_hash != head.entry_hash:
                    raise AuditTampered(f"WARNING: {entry.name}'s newest audit entry does not match its signed "
                                        "head: the log was edited")
                heads.append(head)
                return page

            start = after
            if start is None:
                # The head is the newest sequence number: one small read tells where "the last N" start.
                await read(0, 1)
                start = max(0, heads[-1].seq - limit)
            records: list[AuditRecord] = []
            while len(records) < limit:
                ask = min(AUDIT_PAGE, limit - len(records))
                page = await read(start, ask)
                records += page
                # Each page says where the log ends (its head): stop there rather than ask for an empty page,
                # so a large --limit costs the pages that exist and not one more.
                if not page or page[-1].seq >= heads[-1].seq:
                    break
                start = page[-1].seq
            at_pin: bytes | None = None
            if pin is not None and heads[-1].pruned_through < pin.seq < heads[-1].seq:
                # The fork check needs the entry at the pinned seq: from this listing, or one more small read.
                found = next((r for r in records if r.seq == pin.seq), None)
                if found is None:
                    extra = await read(pin.seq - 1, 1)
                    found = extra[0] if extra and extra[0].seq == pin.seq else None
                at_pin = found.entry_hash if found is not None else None
            last = heads[-1]
            head = Pin(last.seq, last.entry_hash, last.pruned_through, last.signature)
            return AuditListing(entry, records, head, pin,
                                check(pin, head, PinCheck(at_pin)))

        listing = await self._owner_session(vehicle, action)
        if listing.problem is None and listing.head is not None:
            # The pin only moves forward, and never past a log that failed the check.
            pins.advance(listing.entry.vehicle_id, listing.head)
        return listing

    # ------------------------------------------------------------------ scan and pair

    async def scan(self, *, identify: bool = False) -> list[Sighting]:
        """Vehicles in range, strongest first; `identify` connects to each to read the vehicle id it claims."""
        kc = self.keychain(create=False)
        central = self._central()
        try:
            found = await find_vehicles(central, self.scan_time, clock=self._clock, on_progress=self._progress)
            sightings: list[Sighting] = []
            probe = KeyPair.generate() if identify else None  # throwaway: identifying sends nothing signed
            secrets = kc.ad_secrets()
            for adv in found:
                recognised = resolve_token(adv.service_data, secrets)
                if probe is None:
                    hinted = [e.name for e in kc.vehicles() if e.address_hint == adv.address]
                    sightings.append(Sighting(adv, last_seen_as=hinted[0] if hinted else None,
                                              recognised_as=recognised))
                    continue
                self._progress(f"identifying {adv.name or adv.address}")
                vid = await _identify(central, adv, probe)
                entry = kc.find_vehicle_id(vid) if vid else None
                sightings.append(Sighting(adv, identified=True, vehicle_id=vid,
                                          keychain_name=entry.name if entry else None, recognised_as=recognised))
            return sightings
        finally:
            await central.aclose()

    async def pair(self, code_text: str, *, name: str | None = None, protect: bool = False,
                   keyring: bool = False) -> VehicleEntry:
        """Pair with the vehicle showing `code_text` (code or dkey://pair URI) and store what it tells us; the new
        device key goes to a file (with `protect`, passphrase-encrypted) or, with `keyring`, to the OS keyring."""
        if protect and keyring:
            raise UsageError("choose one place for the key: --passphrase (an encrypted file) or --keyring")
        try:
            code, qr_vehicle = parse_code(code_text)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        kc = self.keychain()
        if qr_vehicle is not None and (have := kc.find_vehicle_id(qr_vehicle)) is not None:
            raise KeychainError(f"this device already holds a key for that vehicle ({have.name}); "
                                f"`key-client forget {have.name}` first to pair again")
        if name is not None and any(e.name.casefold() == name.casefold() for e in kc.vehicles()):
            raise KeychainError(f"the keychain already has a vehicle called {name!r}")
        secret = await self._passphrase("passphrase for the new key: ", True) if protect else None
        # Stored before the vehicle enrols it (an enrolled key is never lost), and before the code is spent.
        device = await asyncio.to_thread(kc.new_device_key, keyring=True) if keyring else kc.new_device_key(secret)
        paired = None
        central = self._central()
        try:
            if qr_vehicle is not None:
                # The QR code names the vehicle: connect only to the one whose challenge carries that id.
                link = await self._connect(central, device, Target(None, qr_vehicle))
            else:
                link = await self._connect(central, device, Target(None),
                                           candidates=[await self._pick_for_pairing(central)])
            try:
                vid = link.session.challenge_vehicle_id or b""
                if (have := kc.find_vehicle_id(vid)) is not None:
                    # Checked before the code is used, so the code stays good for another device.
                    raise KeychainError(f"this device already holds a key for "
                                        f"{link.advertisement.name or vid.hex()} ({have.name}); "
                                        f"`key-client forget {have.name}` first to pair again")
                self._progress(f"pairing with {link.advertisement.name or link.advertisement.address}")
                paired = await link.pair(code, int(code[:2]), timeout=PAIR_TIMEOUT)
                ad_secret = await self._ad_secret_after_pairing(link)
            finally:
                await link.close()
        finally:
            await central.aclose()
            if paired is None:
                kc.discard_device_key(device, keyring=keyring)
        entry = kc.add(device, paired, name=name, advertised_name=link.advertisement.name,
                       address=link.advertisement.address, encrypted=secret is not None, keyring=keyring)
        if ad_secret is not None:
            try:
                kc.store_ad_secret(entry, ad_secret)
            except KeychainError as exc:
                self._note(f"paired, but {exc}; the next session fetches it again")
        return entry

    async def _ad_secret_after_pairing(self, link: VehicleLink) -> AdSecret | None:
        """On the pairing's own connection: a session with the new key, and the advertising secret in it.

        Best effort: the key is enrolled whatever happens here, and the first later session fetches the secret.
        """
        try:
            await link.open_secure()
            return AdSecret.decode((await link.secure(Command.AD_SECRET)).data)
        except (ClientError, DecodeError, LocalProtocolError) as exc:
            self._note(f"paired, but could not fetch the advertising secret yet ({exc}); the next session does")
            return None

    async def _pick_for_pairing(self, central: Central) -> Advertisement:
        """A bare code does not name the vehicle: the only one in range, else the strongest (and say so)."""
        found = await find_vehicles(central, self.scan_time, clock=self._clock, on_progress=self._progress)
        adv = found[0]  # scans come strongest first
        if len(found) > 1:
            others = ", ".join(f"{a.name or a.address} ({a.rssi} dBm)" for a in found[1:])
            self._note(f"{len(found)} vehicles in range; pairing with the strongest signal: {adv.name or adv.address} "
                       f"({adv.rssi} dBm), not {others}. To choose, scan the QR code or pass its dkey://pair text.")
        return adv

    # ------------------------------------------------------------------ passive entry

    def auto_policy(self, options: AutoOptions) -> tuple[ProximityPolicy, float]:
        """The policy and reading interval from the flags, else config.toml [auto], else the defaults.

        UsageError without the relay-risk opt-in, ConfigError for an invalid config.toml."""
        from .config import load_config  # only `auto` reads the config: other commands skip its schema
        from .proximity import ProximityPolicy

        kc = self.keychain()
        cfg = load_config(kc.path).auto
        if not (options.relay_risk_accepted or cfg.relay_risk_accepted):
            raise UsageError(RELAY_WARNING)
        try:
            policy = ProximityPolicy(_pick(options.unlock_rssi, cfg.unlock_rssi),
                                     _pick(options.lock_rssi, cfg.lock_rssi),
                                     _pick(options.dwell, cfg.dwell), _pick(options.lost, cfg.lost))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return policy, _pick(options.interval, cfg.interval)

    async def auto(self, vehicle: str | None, options: AutoOptions, stop: asyncio.Event,
                   on_event: Callable[[AutoEvent], None]) -> None:
        """Unlock when near, lock when gone, until `stop` is set or `options.duration` passes.

        A revoked or expired key (an authenticated, lasting refusal) ends it with VehicleRefused."""
        from .proximity import Action, ProximityRunner

        policy, interval = self.auto_policy(options)
        kc = self.keychain()
        entry = kc.select(vehicle)
        device = await self._device_key(kc, entry)
        central = self._central()
        state = {"entry": entry}

        async def act(action: Action) -> bool:
            cmd = Command.UNLOCK if action is Action.UNLOCK else Command.LOCK
            try:
                done = await self._run_command(kc, state["entry"], central, device, cmd)
            except OutcomeUnknown as exc:
                # Never resend: count it as done. The next action is the opposite one, which is safe either way.
                on_event(AutoEvent("unknown", state["entry"], action.value, error=exc))
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # interrupted while it was in flight: auto ends with its outcome unknown
                return True
            except (TimedOut, ConnectFailed, VehicleNotFound) as exc:
                on_event(AutoEvent("not_delivered", state["entry"], action.value, error=exc))
                return False
            except VehicleRefused as exc:
                if exc.temporary or exc.status is Status.DOOR_OPEN:
                    on_event(AutoEvent("refused_for_now", state["entry"], action.value, error=exc))
                    return False
                raise  # revoked, expired, not permitted: stop passive entry
            state["entry"] = done.entry
            recognise.update(self._target(kc, done.entry).ad_secret)  # a session may have fetched a new secret
            on_event(AutoEvent("acted", done.entry, action.value, done=done))
            return True

        loop = asyncio.get_running_loop()
        timer = loop.call_later(options.duration, stop.set) if options.duration is not None else None
        recognise = _Recogniser(self._target(kc, entry).ad_secret)
        try:
            if entry.address_hint is None and recognise.secret is None:
                # Without the advertising secret nothing on air says which car is ours: learn the secret (and the
                # address) from one verified exchange (a status read), then follow the RSSI of our token.
                on_event(AutoEvent("learned", entry, "status"))
                done = await self._run_command(kc, entry, central, device, Command.STATUS)
                state["entry"] = done.entry
                recognise.update(self._target(kc, done.entry).ad_secret)
                on_event(AutoEvent("learned", done.entry, "status", done=done))
            on_event(AutoEvent("watching", state["entry"], "watch", policy=policy))
            runner = ProximityRunner(central, policy, act,
                                     match=lambda adv: recognise(adv, state["entry"].address_hint),
                                     interval=interval, scan_window=min(1.0, max(0.1, interval)))
            await runner.run(stop)
        finally:
            if timer is not None:
                timer.cancel()
            await central.aclose()


# ---------------------------------------------------------------------- helpers


class _Recogniser:
    """Passive entry's test for "this advertisement is our car": its token (PROTOCOL.md §13), else its address."""

    def __init__(self, secret: bytes | None) -> None:
        self.secret = secret
        self._tokens: dict[bytes, bool] = {}  # a token is resolved once, not at every advertisement it comes in

    def update(self, secret: bytes | None) -> None:
        """Use `secret` from now on (a newer one fetched in a session); None keeps the current one."""
        if secret is not None and secret != self.secret:
            self.secret, self._tokens = secret, {}

    def __call__(self, adv: Advertisement, address_hint: str | None) -> bool:
        token = adv.service_data
        if self.secret is not None and token is not None:
            if token not in self._tokens:
                if len(self._tokens) > 1024:
                    self._tokens.clear()  # other cars' tokens rotate too: keep the memo small
                self._tokens[token] = resolve_token(token, {True: self.secret}) is not None
            if self._tokens[token]:
                return True
        # An address proves nothing and changes with a private address; still the only hint without a secret.
        return address_hint is not None and adv.address == address_hint


def _when_arg(text: str | None, now: int, option: str, *, end_of_day: bool = False) -> int | None:
    """A time option (dkey_link.when formats) as Unix seconds, None if not given; UsageError naming the option."""
    if text is None:
        return None
    from dkey_link.when import parse_when

    try:
        return parse_when(text, now, end_of_day=end_of_day)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def _check_schedule(schedule: str | None) -> None:
    """UsageError for a schedule the vehicle would refuse (PROTOCOL.md §6.5 syntax)."""
    if schedule is None:
        return
    from protocol import MAX_SCHEDULE_LEN, parse_schedule

    if len(schedule.encode()) > MAX_SCHEDULE_LEN:
        raise UsageError(f"--schedule is at most {MAX_SCHEDULE_LEN} bytes")
    try:
        parse_schedule(schedule)
    except ValueError as exc:
        raise UsageError(f"bad --schedule: {exc}") from None


def _role_arg(role: str) -> Role:
    """The Role a command-line label names; UsageError otherwise."""
    found = {r.label: r for r in Role}.get(role)
    if found is None:
        raise UsageError(f"unknown role {role!r} (choose {', '.join(Role.labels())})")
    return found


def _share_refusal(cert: Any, status: Status) -> str:
    """Why the vehicle refused this device's share, naming it (a ShareCertificate; Any keeps imports lazy)."""
    what = f"the share for {cert.name!r} (serial {cert.serial.hex()}, from owner key {cert.issuer_id.hex()})"
    reasons = {
        Status.KEY_EXPIRED: f"{what} has expired",
        Status.CLOCK_UNTRUSTED: f"the vehicle's clock is not yet trusted, so it cannot check {what} yet; an owner's "
                                "device fixes this by connecting",
        Status.NOT_PERMITTED: f"{what} grants a role a share cannot grant",
        Status.DENIED: f"the vehicle refused {what}: its signer is not an active owner of this vehicle, or the share "
                       "or this key was revoked",
    }
    return reasons.get(status, f"the vehicle refused {what}: {status.name.lower()}")


def _pick(flag: T | None, configured: T) -> T:
    return flag if flag is not None else configured


async def _close_keeping_result(link: VehicleLink) -> None:
    """Disconnect after the answer is in: an interruption now must not lose a result the vehicle gave."""
    try:
        await link.close()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # the work is done: report it rather than "interrupted"


async def _identify(central: Central, adv: Advertisement, probe: KeyPair) -> bytes | None:
    """The vehicle id in `adv`'s challenge (a claim, not proof), or None if it does not answer."""
    try:
        link = await driver.open_link(central, adv, probe, Target(None), IDENTIFY_TIMEOUT)
    except (ClientError, RadioError, TimeoutError):
        return None
    try:
        return link.session.challenge_vehicle_id
    finally:
        await link.close()


async def _list_keys(link: VehicleLink) -> list[KeyInfo]:
    keys: list[KeyInfo] = []
    while True:
        total, page = decode_key_page((await link.secure(Command.LIST_KEYS, list_keys_args(len(keys), KEY_PAGE)))
                                      .data)
        keys += page
        # A page holds what fits the size cap, so advance by what came, not by what was asked.
        if not page or len(keys) >= total:
            return keys


async def _listing(link: VehicleLink, entry: VehicleEntry) -> KeyListing:
    return KeyListing(entry, await _list_keys(link))


def resolve_key(keys: Sequence[KeyInfo], wanted: str) -> KeyInfo:
    """The one key `wanted` names (hex key-id prefix or name; active keys first); UsageError otherwise."""
    want = wanted.strip()
    active = [k for k in keys if k.revoked_at is None]
    for pool in (active, list(keys)):
        by_name = [k for k in pool if k.name.casefold() == want.casefold()]
        by_id = [k for k in pool if len(want) >= 2 and k.key_id.hex().startswith(want.lower())]
        found = by_name or by_id
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            listed = ", ".join(f"{k.key_id.hex()} ({k.name})" for k in found)
            raise UsageError(f"{want!r} matches several keys: {listed}; give more of the key id")
    raise UsageError(f"no key called {want!r} on the vehicle (see `key-client keys`)")


def audit_detail(record: AuditRecord) -> Any:
    """An audit record's detail as JSON data when it is JSON text, else the text."""
    try:
        return json.loads(record.detail)
    except ValueError:
        return record.detail


__all__ = ["AUDIT_PAGE", "MAX_AUDIT_LIMIT", "PAIR_TIMEOUT", "RELAY_WARNING", "AuditListing", "AutoEvent",
           "AutoOptions", "CodeIssued", "CommandDone", "DeviceApp", "KeyEdited", "KeyListing", "PassphraseSource",
           "RadioChoice", "Revocation", "ShareRequest", "Sighting", "TimeStated", "audit_detail", "resolve_key"]


async def _state_time(link: VehicleLink, wall: Callable[[], float]) -> tuple[bool, int, ClockReport]:
    """SET_TIME with this device's time on an open confidential session: (accepted, stated, the vehicle's clock)."""
    stated = int(wall())
    result = await link.secure(Command.SET_TIME, set_time_args(stated),
                               accept=frozenset({Status.OK, Status.BAD_REQUEST}))
    try:
        report = ClockReport.decode(result.data)
    except DecodeError as exc:
        raise ProtocolViolation(f"the vehicle's answer to SET_TIME does not parse: {exc}") from exc
    return result.status is Status.OK, stated, report


def _skew(stated: int, vehicle: ClockReport) -> str:
    """How the vehicle's clock and this device's differ, in words."""
    diff = vehicle.time - stated
    return f"the vehicle's clock is {abs(diff)} s {'ahead of' if diff > 0 else 'behind'} this device's"

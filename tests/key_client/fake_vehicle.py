"""A small vehicle for the client's share and watch tests: protocol.VehicleSession on the mock radio, driven here.

The real key server gains share enrolment and revocation lists on another branch; the client's side of those
exchanges is tested against this one, which answers exactly what the test tells it to and records what it saw.
Keys are plain public keys in a dict (`enrol`); commands are answered OK with the status report it holds.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import Any

from dkey_link.mock import MockAir, MockPeripheral
from protocol import (
    AdSecret,
    ChallengeBook,
    Command,
    CommandRequested,
    DoorState,
    IssuedCode,
    KeyEdit,
    KeyInfo,
    KeyPair,
    KeyState,
    LockState,
    PairingTerms,
    RevocationsOffered,
    RevokeArgs,
    Role,
    SessionOpened,
    ShareOffered,
    Status,
    StatusReport,
    VehicleSession,
    Via,
    decode_public_key,
    encode_key_page,
    key_id,
    make_token,
    parse_list_keys_args,
    parse_revoke_args,
)

T0 = 1_800_000_000  # when every key of the fake vehicle was made, and "now" for the codes it issues


@dataclass
class _Link:
    session: VehicleSession
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    watching: bool = False


class FakeVehicle:
    """A PeripheralHandler answering one VehicleSession per link; see the module docstring."""

    def __init__(self, air: MockAir, name: str = "test-car") -> None:
        self.air = air
        self.identity = KeyPair.generate()
        self.peripheral: MockPeripheral = air.peripheral(name)
        self.keys: dict[bytes, bytes] = {}
        self.roles: dict[bytes, Role] = {}
        self.infos: dict[bytes, KeyInfo] = {}  # what LIST_KEYS shows (and EDIT_KEY / REVOKE_KEY change)
        self.issued_codes: list[PairingTerms] = []
        self.revoke_requests: list[RevokeArgs] = []
        self.challenges = ChallengeBook()
        self.links: dict[str, _Link] = {}
        self.seen: list[tuple[str, Any]] = []  # ("command", Command) / ("share", event) / ("revocations", event)
        self.report = StatusReport(lock=LockState.LOCKED, door=DoorState.CLOSED, start_enabled=False)
        self.share_status = Status.OK  # what SHARE_PRESENT is answered with
        self.revocation_status: Status | None = None  # None: OK if newer than held, else NO_CHANGE
        self.held_versions: dict[bytes, int] = {}  # issuer key id -> version held
        self.writes = 0  # ATT writes received (every link)
        self.ad = AdSecret.generate()  # its advertising secret: a token of it is on air from start()
        self.ad_secret_reads = 0  # AD_SECRET commands answered (not in `seen`: every session may fetch it)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def vehicle_id(self) -> bytes:
        """The vehicle's id (its key id)."""
        return self.identity.key_id

    def enrol(self, device: KeyPair | bytes, role: Role = Role.OWNER, name: str = "key", **info: Any) -> bytes:
        """Enrol a key (a key pair, or a 65-byte public key); returns its key id. `info`: more KeyInfo fields."""
        public = device if isinstance(device, bytes) else device.public_bytes
        kid = key_id(public)
        self.keys[kid] = public
        self.roles[kid] = role
        self.infos[kid] = KeyInfo(kid, role, name, T0, **{"state": KeyState.ACTIVE, "via": Via.CODE, **info})
        return kid

    async def start(self) -> FakeVehicle:
        """Start advertising, with a token of its advertising secret."""
        await self.peripheral.advertise_token(make_token(self.ad.secret))
        await self.peripheral.start(self)
        return self

    async def stop(self) -> None:
        """Stop advertising and let queued notifications finish."""
        await self.peripheral.stop()
        for task in list(self._tasks):
            task.cancel()

    # ------------------------------------------------------------------ PeripheralHandler

    def on_connect(self, link: str, mtu: int) -> None:
        """A new session sized to the link."""
        self.links[link] = _Link(VehicleSession(self.identity, challenges=self.challenges,
                                                lookup_key=self._lookup, chunk_size=max(20, mtu - 3)))

    def _lookup(self, kid: bytes) -> Any:
        public = self.keys.get(kid)
        return decode_public_key(public) if public is not None else None

    def on_mtu(self, link: str, mtu: int) -> None:
        """The link's MTU."""
        if link in self.links:
            self.links[link].session.link_mtu(mtu)

    def on_subscribe(self, link: str | None) -> None:
        """Push a challenge to the subscriber."""
        if link is None or link not in self.links:
            return
        self.links[link].session.push_challenge(time.monotonic())
        self._flush(link)

    def on_write(self, link: str, data: bytes) -> None:
        """Feed the session and answer every event it yields."""
        self.writes += 1
        lk = self.links[link]
        now = time.monotonic()
        lk.session.receive_data(data, now)
        while True:
            try:
                ev = lk.session.next_event(now)
            except Exception as exc:  # noqa: BLE001 - a protocol error ends the session; the ERROR is queued
                self.seen.append(("error", exc))
                self._flush(link)
                return
            if ev is None:
                break
            self._answer(link, lk, ev)
        self._flush(link)

    def on_disconnect(self, link: str) -> None:
        """The central left."""
        lk = self.links.pop(link, None)
        if lk is not None:
            lk.session.close()

    # ------------------------------------------------------------------ answers

    def _answer(self, link: str, lk: _Link, ev: object) -> None:
        if isinstance(ev, CommandRequested) and ev.secure and ev.command is Command.AD_SECRET:
            self.ad_secret_reads += 1
            lk.session.respond(Status.OK, self.ad.encode())
        elif isinstance(ev, CommandRequested):
            self.seen.append(("command", ev.command))
            data = self.report.encode() if ev.secure and ev.command is Command.STATUS else b""
            self._respond_command(lk, ev, data)
        elif isinstance(ev, SessionOpened):
            self.seen.append(("session", ev.key_id))
        else:
            self._answer_new(link, lk, ev)

    def _respond_command(self, lk: _Link, ev: CommandRequested, data: bytes) -> None:
        if ev.secure and ev.command is Command.WATCH:
            if self.roles.get(ev.key_id) not in (Role.OWNER, Role.DRIVER):
                lk.session.respond(Status.NOT_PERMITTED)
                return
            lk.session.respond(Status.OK, self.report.encode())
            lk.watching = True
            return
        # Every role's commands, on either path (the fallback of PROTOCOL.md §13.5 sends an unlock sealed).
        if not ev.secure or ev.command in (Command.STATUS, Command.SET_TIME, Command.UNLOCK, Command.LOCK,
                                           Command.START):
            lk.session.respond(Status.OK, data)
            return
        if self.roles.get(ev.key_id) is not Role.OWNER:
            lk.session.respond(Status.NOT_PERMITTED)
            return
        status, out = self._admin(ev.command, ev.args)
        lk.session.respond(status, out)

    def _owners(self) -> int:
        return sum(1 for k in self.infos.values() if k.role == Role.OWNER and k.revoked_at is None)

    def _admin(self, command: Command, args: bytes) -> tuple[Status, bytes]:
        """The owner commands, the way the design contract says the vehicle answers them (no store, no audit)."""
        if command is Command.LIST_KEYS:
            offset, limit = parse_list_keys_args(args)
            keys = list(self.infos.values())
            data, _ = encode_key_page(keys[offset:offset + limit], len(keys))
            return Status.OK, data
        if command is Command.ISSUE_CODE:
            terms = PairingTerms.decode(args)
            self.issued_codes.append(terms)
            return Status.OK, IssuedCode("42123456", T0 + terms.code_ttl).encode()
        if command is Command.EDIT_KEY:
            edit = KeyEdit.decode(args)
            old = self.infos.get(edit.key_id)
            if old is None:
                return Status.BAD_REQUEST, b""
            if edit.role is not None and edit.role != Role.OWNER and old.role == Role.OWNER and self._owners() == 1:
                return Status.LAST_OWNER, b""
            new = replace(old, role=edit.role if edit.role is not None else old.role,
                          name=edit.name if edit.name is not None else old.name,
                          valid_from=None if edit.clear_valid_from else edit.valid_from or old.valid_from,
                          valid_until=None if edit.clear_valid_until else edit.valid_until or old.valid_until,
                          schedule=None if edit.clear_schedule else edit.schedule or old.schedule)
            self.infos[edit.key_id] = new
            self.roles[edit.key_id] = Role(new.role)
            return Status.OK, new.encode()
        if command is Command.REVOKE_KEY:
            revoke = parse_revoke_args(args)
            self.revoke_requests.append(revoke)
            if revoke.force:
                return Status.BAD_REQUEST, b""
            old = self.infos.get(revoke.key_id)
            if old is None or old.revoked_at is not None:
                return Status.NO_CHANGE, b""
            if old.role == Role.OWNER and self._owners() == 1:
                return Status.LAST_OWNER, b""
            self.infos[revoke.key_id] = replace(old, revoked_at=T0, state=KeyState.REVOKED)
            self.keys.pop(revoke.key_id, None)
            return Status.OK, b""
        return Status.NOT_SUPPORTED, b""

    def _answer_new(self, link: str, lk: _Link, ev: object) -> None:
        if isinstance(ev, ShareOffered):
            self.seen.append(("share", ev.certificate))
            cert = ev.certificate
            status = self.share_status
            if status is Status.OK and cert.subject_key_id in self.keys:
                status = Status.NO_CHANGE
            if status is Status.OK:
                self.enrol(cert.subject_public_key, cert.role, cert.name, via=Via.SHARE, enrolled_by=cert.issuer_id,
                           valid_from=cert.valid_from, valid_until=cert.valid_until, schedule=cert.schedule)
            lk.session.answer_share(status)
        elif isinstance(ev, RevocationsOffered):
            lst = ev.revocations
            self.seen.append(("revocations", lst))
            held = self.held_versions.get(lst.issuer_id, 0)
            status = self.revocation_status or (Status.OK if lst.version > held else Status.NO_CHANGE)
            if status is Status.OK:
                for kid, _flags in lst.entries:
                    self.keys.pop(kid, None)
                    if kid in self.infos:
                        self.infos[kid] = replace(self.infos[kid], revoked_at=T0, state=KeyState.REVOKED)
                held = self.held_versions[lst.issuer_id] = lst.version
            lk.session.answer_revocations(status, held)
        else:
            self.seen.append(("other", ev))

    def push(self, report: StatusReport) -> int:
        """Push a state change to every link that is watching; returns how many got it."""
        self.report = report
        sent = 0
        for link, lk in list(self.links.items()):
            if lk.watching:
                lk.session.push_watch(report.encode())
                self._flush(link)
                sent += 1
        return sent

    def _flush(self, link: str) -> None:
        lk = self.links.get(link)
        if lk is None:
            return
        chunks = lk.session.data_to_send()
        if not chunks:
            return

        async def send() -> None:
            async with lk.lock:  # FIFO: notifications leave in the order the session queued them
                for chunk in chunks:
                    await self.peripheral.notify(chunk, link)

        task = asyncio.get_running_loop().create_task(send())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

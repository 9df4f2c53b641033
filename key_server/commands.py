"""What an authenticated key asks of the vehicle, and what the vehicle does about it.

authorize, then act: drive the lock (unlock, lock, start), report its status, take an owner's or driver's statement
of the time (SET_TIME, docs/PROTOCOL.md §5.7), or serve an owner's admin command (list keys, read the audit log,
revoke) through KeyAdmin, the same code `key-server` runs on the Pi. The result
is a protocol Status and payload; the session service only carries them. An actuation's intent ("actuate") is
committed to the audit log before the lock is driven, so a crash at any instant leaves a record of it; what is
written afterwards (last use, the outcome's audit entry) is split out into record(), which the service runs once
the answer is on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import tzinfo
from typing import Final

from hardware import ActuatorError, ActuatorStatus, DoorOpenError, Lock, NotConfiguredError
from protocol import (
    ACTUATING_COMMANDS,
    AuditHead,
    AuditRecord,
    ClockReport,
    Command,
    DecodeError,
    IssuedCode,
    KeyEdit,
    KeyInfo,
    KeyPair,
    KeyState,
    LockState,
    PairingTerms,
    RetryAfter,
    Role,
    Status,
    StatusReport,
    Via,
    encode_audit_page,
    encode_key_page,
    parse_list_keys_args,
    parse_read_audit_args,
    parse_revoke_args,
    parse_set_time_args,
    with_time_wanted,
)

from .audit import AuditEvent
from .clock import DRIVER_MAX_FORWARD, OWNER_MAX_FORWARD, Source
from .enrollment import Enrollment
from .keyadmin import UNCHANGED, KeyAdmin
from .policy import Refusal, authorize, may_state_time
from .ratelimit import ActuationLimiter
from .store import AlreadyRevoked, KeyRecord, LastOwnerError, NoFreeSlot, StoreError, UnknownKey
from .timezone import local_zone

__all__ = ["REFUSAL_STATUS", "KeyCommands", "Outcome", "key_info", "to_status_report"]

log = logging.getLogger("key_server.commands")

# What the device is told. Unknown and revoked keys get DENIED, exactly like a bad signature (docs/PROTOCOL.md §8.4).
REFUSAL_STATUS: Final[dict[Refusal, Status]] = {
    Refusal.UNKNOWN_KEY: Status.DENIED,
    Refusal.REVOKED: Status.DENIED,
    Refusal.NOT_YET_VALID: Status.KEY_NOT_YET_VALID,
    Refusal.EXPIRED: Status.KEY_EXPIRED,
    Refusal.OUTSIDE_SCHEDULE: Status.OUTSIDE_SCHEDULE,
    Refusal.NOT_PERMITTED: Status.NOT_PERMITTED,
    Refusal.CLOCK_UNTRUSTED: Status.CLOCK_UNTRUSTED,
}
# Whose time statements count, and how far ahead of the guarded time an untrusted clock may be moved by one
# (PROTOCOL.md §5.7): the [clock] trust_owner / trust_driver and *_max_forward options.
DEFAULT_STATEMENTS: Final[Mapping[Role, int]] = {Role.OWNER: OWNER_MAX_FORWARD, Role.DRIVER: DRIVER_MAX_FORWARD}
_STATEMENT_SOURCE: Final[Mapping[Role, Source]] = {Role.OWNER: Source.OWNER, Role.DRIVER: Source.DRIVER}
# Commands that move something: each spends one of the key's actuations (ratelimit.ActuationLimiter).
ACTUATIONS: Final = ACTUATING_COMMANDS
# Commands that use the vehicle (recorded as their own event and as the key's last use); the rest are admin.
_USE_EVENT: Final[dict[Command, AuditEvent]] = {cmd: AuditEvent.use_of(cmd) for cmd in ACTUATIONS | {Command.STATUS}}
# Commands answered with a status report. They take no arguments: ARGS sent with one is a malformed request
# (PROTOCOL.md §5.4), not ignored.
_REPORTING: Final = ACTUATIONS | {Command.STATUS}
AUDIT_PAGE_MAX: Final = 100  # entries per READ_AUDIT answer: keeps one confidential message small
# Reads that change nothing. Audited as one "admin" row per session and command with a count (count_read /
# record_reads), not one row per page: a client paging through the log would otherwise flood it with its own
# reads (docs/THREAT_MODEL.md, "The audit log").
READS: Final = frozenset({Command.LIST_KEYS, Command.READ_AUDIT})
SET_TIME_EVENT: Final = Command.SET_TIME.label  # audit event of a time statement (detail: verdict, stated, ...)
# Changes an owner makes over the air: KeyAdmin / Enrollment audit each with the owner's key id ("by") in the same
# commit as the change, so record() writes no second row for them when they succeed.
_SELF_AUDITED: Final = frozenset({Command.REVOKE_KEY, Command.EDIT_KEY, Command.ISSUE_CODE, Command.ROTATE_SECRET})
_KEY_STATE: Final[Mapping[str, KeyState]] = {"active": KeyState.ACTIVE, "not_yet_valid": KeyState.NOT_YET_VALID,
                                              "expired": KeyState.EXPIRED, "revoked": KeyState.REVOKED}
_VIA: Final[Mapping[str, Via]] = {"code": Via.CODE, "share": Via.SHARE, "vehicle": Via.VEHICLE}


def to_status_report(status: ActuatorStatus) -> StatusReport:
    """The wire form of an actuator status (the actuator and the wire share one LockState and DoorState)."""
    return StatusReport(status.lock, status.door, status.start_enabled)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The answer to one command, and what record() needs to account for it."""

    key_id: bytes
    command: Command
    at: int  # guarded wall time the command was decided at
    status: Status
    data: bytes = b""
    refusal: Refusal | None = None  # why policy refused (audit log only: the device sees `status`)
    revoked: tuple[bytes, ...] = ()  # keys this command revoked: their open sessions must end
    rate_limited: bool = False  # refused with BUSY: the key used up its actuations (nothing moved)
    refusals_to_audit: int = 0  # rate-limit refusals of this key to write now, as one aggregated row
    intent: int | None = None  # seq of the "actuate" row written before the lock was driven
    detail: Mapping[str, str | int | bool] | None = None  # a time statement's verdict, for its audit row


class KeyCommands:
    """Authorize and carry out commands of enrolled keys."""

    def __init__(self, admin: KeyAdmin, lock: Lock, *, tz: tzinfo | None = None, reply_after: float = 0.1,
                 actuations: ActuationLimiter | None = None, monotonic: Callable[[], float] = time.monotonic,
                 identity: KeyPair | None = None, statements: Mapping[Role, int] | None = None,
                 enrollment: Enrollment | None = None) -> None:
        """Act on `lock`; `tz` reads guest schedules (None: the local zone); see run() for `reply_after`.

        `enrollment` issues the pairing codes an owner asks for over the air (ISSUE_CODE; without it:
        NOT_SUPPORTED).

        `identity` is the vehicle key that signs the audit head in READ_AUDIT answers (without it: NOT_SUPPORTED).

        `actuations` limits how often one key may move the vehicle, on the `monotonic` clock (a wall clock set
        forward or back must neither refill nor freeze the buckets). `statements` maps the roles whose SET_TIME
        counts to how far ahead they may move an untrusted clock (seconds); other roles are NOT_PERMITTED.
        """
        self.statements = dict(DEFAULT_STATEMENTS if statements is None else statements)
        self.admin = admin
        self.lock = lock
        self.tz = tz
        self.reply_after = reply_after
        self.actuations = actuations if actuations is not None else ActuationLimiter()
        self._mono = monotonic
        self.identity = identity
        self.enrollment = enrollment
        self._head: AuditHead | None = None  # the last head signed: most reads find the log unchanged
        self._pulses: set[asyncio.Task[ActuatorStatus]] = set()  # answered actuations still driving the lock

    async def run(self, key_id: bytes, command: Command, args: bytes) -> Outcome:
        """Authorize `command` for `key_id` and carry it out; a refusal or failure is a status, never an exception.

        Long actuations are answered once they have been driving for `reply_after` seconds (their relay is
        energised by then); a revocation is committed and audited before this returns.
        """
        store, clock = self.admin.store, self.admin.clock
        wall = clock.now()
        rec = store.get_key(key_id)
        refusal = authorize(rec, command, wall, self.tz or local_zone(), trusted=clock.trusted)
        if refusal is None and command is Command.SET_TIME and rec is not None and rec.role not in self.statements:
            refusal = Refusal.NOT_PERMITTED  # this vehicle's [clock] config does not count that role's statements
        if refusal is Refusal.EXPIRED:
            # Durable before the answer: after a power cut the mark is at least this time, so the key stays
            # expired (otherwise up to persist_every seconds of the mark could be lost with the refusal).
            try:
                clock.persist_now()
            except StoreError:  # a failing disk: the refusal stands; only its survival of a power cut is lost
                log.exception("could not write the time mark before refusing an expired key")
        if refusal is not None:
            return Outcome(key_id, command, wall, REFUSAL_STATUS[refusal], refusal=refusal)
        if args and command in _REPORTING:
            return Outcome(key_id, command, wall, Status.BAD_REQUEST)
        if command is Command.SET_TIME:
            assert rec is not None  # authorize() refuses an unknown key
            return self._set_time(rec.role, key_id, args, wall)
        earlier = 0
        if command in ACTUATIONS:
            mono = self._mono()
            if not self.actuations.allow(key_id, mono):
                # The signed answer says when to try again (PROTOCOL.md §5.4), so the person is told a number.
                wait = RetryAfter(math.ceil(self.actuations.retry_after(key_id, mono))).encode()
                return Outcome(key_id, command, wall, Status.BUSY, data=wait, rate_limited=True,
                               refusals_to_audit=self.actuations.to_report(key_id, mono))
            earlier = self.actuations.to_report(key_id, mono, flush=True)  # the spell is over: its last count
        intent: int | None = None
        if command in ACTUATIONS:
            # Durable before the relay is energised: a kill or stop mid-pulse still leaves this row (its outcome,
            # written after the reply, may never come). One fsynced commit; without it nothing moves.
            try:
                entry = self.admin.audit.append(AuditEvent.ACTUATE, ts=wall, key_id=key_id,
                                                detail={"command": command.label})
            except StoreError:
                log.exception("could not write the actuation's intent to the audit log: not actuating")
                return Outcome(key_id, command, wall, Status.INTERNAL_ERROR, refusals_to_audit=earlier)
            intent = entry.seq
        revoked: tuple[bytes, ...] = ()
        data = b""
        try:
            status, data, revoked = await self._execute(key_id, command, args)
        except DoorOpenError:
            status = Status.DOOR_OPEN
        except NotConfiguredError:
            status = Status.NOT_SUPPORTED
        except ActuatorError as exc:
            log.warning("actuator failed: %s", exc)
            status = Status.ACTUATOR_FAILED
        except DecodeError:
            status = Status.BAD_REQUEST
        if (status is Status.OK and command in _REPORTING and not self.admin.clock.trusted and rec is not None
                and may_state_time(rec) and rec.role in self.statements):
            # This key could confirm the clock: say so in its signed (or sealed) answer, so its device follows up
            # with SET_TIME in a confidential session (PROTOCOL.md §5.7) and guests work again.
            data = with_time_wanted(data)
        return Outcome(key_id, command, wall, status, data, revoked=revoked, refusals_to_audit=earlier,
                       intent=intent)

    def _set_time(self, role: Role, key_id: bytes, args: bytes, wall: int) -> Outcome:
        """Judge a time statement (PROTOCOL.md §5.7): OK and the clock confirmed, or BAD_REQUEST; both report it."""
        try:
            stated = parse_set_time_args(args)
        except DecodeError:
            return Outcome(key_id, Command.SET_TIME, wall, Status.BAD_REQUEST,
                           detail={"status": Status.BAD_REQUEST.name, "verdict": "malformed"})
        clock = self.admin.clock
        was_trusted, before = clock.trusted, clock.now()
        verdict = clock.confirm_statement(stated, _STATEMENT_SOURCE[role], self.statements[role])
        status = Status.OK if verdict.accepted else Status.BAD_REQUEST
        return Outcome(key_id, Command.SET_TIME, verdict.time, status,
                       ClockReport(verdict.time, verdict.trusted).encode(),
                       detail={"status": status.name, "verdict": verdict.reason, "stated": stated,
                               "before": before, "after": verdict.time, "was_trusted": was_trusted})

    def record(self, outcome: Outcome) -> None:
        """Account for an answered command: the key's last use and the audit entry (a revocation has its own)."""
        cmd, kid, audit = outcome.command, outcome.key_id, self.admin.audit
        if outcome.refusals_to_audit:
            self._audit_rate_limited(kid, outcome.refusals_to_audit)
        if outcome.rate_limited:
            return  # nothing moved: not a use; the refusals are counted in aggregated rows
        if outcome.refusal is not None:
            audit.record(AuditEvent.REFUSED, ts=self.admin.clock.now(), key_id=kid,
                         detail={"reason": outcome.refusal.value, "command": cmd.name.lower()})
        elif cmd is Command.SET_TIME:
            # Accepted or not, a statement about the time is worth its own row: it moves what every expiry means.
            audit.record(SET_TIME_EVENT, ts=self.admin.clock.now(), key_id=kid, detail=outcome.detail)
        elif cmd in _USE_EVENT:
            try:
                self.admin.store.mark_used(kid, outcome.at)
            except StoreError:  # a failing disk (the intent may have failed too): still try the audit row
                log.exception("could not record the key's last use")
            detail: dict[str, str | int] = {"status": outcome.status.name}
            if outcome.intent is not None:
                detail["intent"] = outcome.intent  # pairs the outcome with its intent row
            audit.record(_USE_EVENT[cmd], ts=self.admin.clock.now(), key_id=kid, detail=detail)
        elif outcome.status is Status.NO_CHANGE:
            return  # nothing was done, nothing is written (an already revoked key: PROTOCOL.md §5.3)
        elif cmd is Command.AD_SECRET and outcome.status is Status.OK:
            return  # part of every device's sessions (PROTOCOL.md §13.4): a row each would drown the log
        elif outcome.status is not Status.OK or cmd not in _SELF_AUDITED:
            audit.record(AuditEvent.ADMIN, ts=self.admin.clock.now(), key_id=kid,
                         detail={"command": cmd.name.lower(), "status": outcome.status.name})

    def _audit_rate_limited(self, key_id: bytes, count: int) -> None:
        """One row for `count` refused actuations of a key (a flood of refusals must not flood the log)."""
        self.admin.audit.record(AuditEvent.RATE_LIMITED, ts=self.admin.clock.now(), key_id=key_id,
                                detail={"what": "actuation", "refused": count})

    @staticmethod
    def is_counted_read(outcome: Outcome) -> bool:
        """True for an answered read (READS, status OK): count it with the session's others, not record() it."""
        return outcome.command in READS and outcome.status is Status.OK and outcome.refusal is None

    def record_reads(self, key_id: bytes, reads: dict[Command, int]) -> None:
        """Audit a session's counted reads: one "admin" row per command, with how many times it was answered."""
        for cmd in sorted(reads, key=lambda c: c.name):
            self.admin.audit.record(AuditEvent.ADMIN, ts=self.admin.clock.now(), key_id=key_id,
                                    detail={"command": cmd.name.lower(), "status": Status.OK.name,
                                            "count": reads[cmd]})

    async def stop(self) -> None:
        """Cancel actuations still running after their answer (the drivers de-energise on cancellation)."""
        pulses = list(self._pulses)
        for task in pulses:
            task.cancel()
        for task in pulses:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for key_id, count in self.actuations.flush_all(self._mono()).items():
            self._audit_rate_limited(key_id, count)

    async def _execute(self, key_id: bytes, cmd: Command, args: bytes) -> tuple[Status, bytes, tuple[bytes, ...]]:
        if cmd is Command.UNLOCK:
            return Status.OK, (await self._actuate(self.lock.unlock, LockState.UNLOCKED, key_id)).encode(), ()
        if cmd is Command.LOCK:
            return Status.OK, (await self._actuate(self.lock.lock, LockState.LOCKED, key_id)).encode(), ()
        if cmd is Command.START:
            return Status.OK, (await self._actuate(self.lock.start_enable, None, key_id)).encode(), ()
        if cmd is Command.STATUS:
            return Status.OK, to_status_report(self.lock.status()).encode(), ()
        if cmd is Command.WATCH:
            # The report now; the service then pushes every change to this session (PROTOCOL.md §9.6).
            if args:
                return Status.BAD_REQUEST, b"", ()
            return Status.OK, to_status_report(self.lock.status()).encode(), ()
        if cmd is Command.LIST_KEYS:
            offset, limit = parse_list_keys_args(args)
            keys = self.admin.keys()
            now = self.admin.clock.now()
            data, _ = encode_key_page([key_info(k, now) for k in keys[offset : offset + limit]], len(keys))
            return Status.OK, data, ()
        if cmd is Command.READ_AUDIT:
            after, limit = parse_read_audit_args(args)
            if self.identity is None:
                return Status.NOT_SUPPORTED, b"", ()
            entries, (head_seq, head_hash), pruned = self.admin.audit_page(after, min(limit, AUDIT_PAGE_MAX))
            records = [AuditRecord(e.seq, e.ts, str(e.event), _json(dict(e.detail)), e.hash, e.key_id)
                       for e in entries]
            # min(): an anchor past the head exists only in a tampered store; answer (verify reports it) not crash.
            data, _ = encode_audit_page(records, self._signed_head(head_seq, head_hash, min(pruned, head_seq)))
            return Status.OK, data, ()
        if cmd is Command.REVOKE_KEY:
            target, force, with_shares = parse_revoke_args(args)
            if force:  # only at the vehicle's own CLI: over the air the last active owner is never revoked
                return Status.BAD_REQUEST, b"", ()
            try:
                done = self.admin.revoke(target, by=key_id.hex(), with_shares=with_shares)
            except LastOwnerError:
                return Status.LAST_OWNER, b"", ()
            except AlreadyRevoked:
                return Status.NO_CHANGE, b"", ()
            except UnknownKey:
                return Status.BAD_REQUEST, b"", ()
            return Status.OK, b"", done.revoked_ids
        if cmd is Command.ROTATE_SECRET:
            # An owner's `key-client revoke --rotate-secret`: audited by rotate_ad_secret with the owner as `by`.
            if args:
                return Status.BAD_REQUEST, b"", ()
            return Status.OK, self.admin.rotate_ad_secret(by=key_id.hex()).encode(), ()
        if cmd is Command.AD_SECRET:
            # The advertising secret (PROTOCOL.md §13): sealed in the session like every answer here, never logged.
            if args:
                return Status.BAD_REQUEST, b"", ()
            return Status.OK, self.admin.store.ad_secret().encode(), ()
        if cmd is Command.EDIT_KEY:
            return self._edit(key_id, KeyEdit.decode(args))
        if cmd is Command.ISSUE_CODE:
            return self._issue_code(key_id, PairingTerms.decode(args))
        return Status.NOT_SUPPORTED, b"", ()

    def _edit(self, key_id: bytes, edit: KeyEdit) -> tuple[Status, bytes, tuple[bytes, ...]]:
        """EDIT_KEY: KeyAdmin.edit_key with the owner as the actor; the answer carries the key's new record."""

        def field(value: object, cleared: bool) -> object:
            return None if cleared else UNCHANGED if value is None else value

        try:
            rec = self.admin.edit_key(
                edit.key_id, by=key_id.hex(),
                name=UNCHANGED if edit.name is None else edit.name,
                role=UNCHANGED if edit.role is None else Role(edit.role),
                valid_from=field(edit.valid_from, edit.clear_valid_from),  # type: ignore[arg-type]
                valid_until=field(edit.valid_until, edit.clear_valid_until),  # type: ignore[arg-type]
                schedule=field(edit.schedule, edit.clear_schedule))  # type: ignore[arg-type]
        except LastOwnerError:
            return Status.LAST_OWNER, b"", ()
        except AlreadyRevoked:  # a revoked key stays as it was revoked: the edit changes nothing
            return Status.NO_CHANGE, b"", ()
        except (UnknownKey, ValueError):  # no such key, an empty name, an empty window
            return Status.BAD_REQUEST, b"", ()
        return Status.OK, key_info(rec, self.admin.clock.now()).encode(), ()

    def _issue_code(self, key_id: bytes, terms: PairingTerms) -> tuple[Status, bytes, tuple[bytes, ...]]:
        """ISSUE_CODE: a one-time pairing code on the owner's terms, as `key-server pair` makes one."""
        if self.enrollment is None:
            return Status.NOT_SUPPORTED, b"", ()
        now = self.admin.clock.now()
        try:
            ticket, pairing = self.enrollment.issue(
                role=terms.role, name=terms.name, expires_at=now + terms.code_ttl, key_valid_from=terms.valid_from,
                key_valid_until=terms.valid_until, schedule=terms.schedule, attempts=terms.attempts,
                issued_by=key_id)
        except NoFreeSlot:
            return Status.BUSY, b"", ()  # all 100 slots hold codes: one frees when it is used, cancelled or expires
        except ValueError:  # an empty name, a key expiry already past
            return Status.BAD_REQUEST, b"", ()
        return Status.OK, IssuedCode(ticket.code, pairing.expires_at).encode(), ()

    def _signed_head(self, seq: int, entry_hash: bytes, pruned_through: int) -> AuditHead:
        """The head statement signed by the vehicle key (PROTOCOL.md §5.6), reused while the log is unchanged."""
        head = self._head
        if head is None or (head.seq, head.entry_hash, head.pruned_through) != (seq, entry_hash, pruned_through):
            assert self.identity is not None  # noqa: S101 - checked by the caller
            head = self._head = AuditHead.signed(self.identity, seq, entry_hash, pruned_through)
        return head

    async def _actuate(self, op: Callable[[], Awaitable[ActuatorStatus]], commanded: LockState | None,
                       key_id: bytes) -> StatusReport:
        """Drive the actuator; answer once it is done or, for a long pulse, once it has been driving a while.

        The drivers energise first and then hold the pulse, so an operation still running after `reply_after`
        has its relay energised: the device is told now (a 3 s door-strike hold must not look like a timeout),
        and a fault later in the pulse goes to the log and the audit log.
        """
        task: asyncio.Task[ActuatorStatus] = asyncio.get_running_loop().create_task(op())  # type: ignore[arg-type]
        done, _ = await asyncio.wait({task}, timeout=self.reply_after)
        if task in done:
            return to_status_report(task.result())
        self._pulses.add(task)

        def finished(t: asyncio.Task[ActuatorStatus]) -> None:
            self._pulses.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.warning("actuator fault after the reply was sent: %s", t.exception())
                self.admin.audit.record(AuditEvent.REFUSED, ts=self.admin.clock.now(), key_id=key_id,
                                        detail={"reason": f"actuator fault after reply: {t.exception()}",
                                                "status": Status.ACTUATOR_FAILED.name})

        task.add_done_callback(finished)
        report = to_status_report(self.lock.status())
        return replace(report, lock=commanded) if commanded is not None else report


def key_info(rec: KeyRecord, now: int) -> KeyInfo:
    """A stored key as a key record for LIST_KEYS and EDIT_KEY, its state computed at the guarded time `now`."""
    return KeyInfo(rec.key_id, rec.role, rec.name, rec.created_at, rec.valid_from, rec.valid_until, rec.last_used_at,
                   rec.revoked_at, rec.schedule, _KEY_STATE[rec.state(now)], _VIA[rec.via], rec.enrolled_by)


def _json(detail: object) -> str:
    return json.dumps(detail, sort_keys=True, separators=(",", ":"))

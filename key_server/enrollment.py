"""Enrolling a device: one-time pairing codes issued on the Pi (`key-server pair`), spent and completed over BLE.

The CLI calls issue/pending/cancel; the session service calls begin/failed/complete as the PAKE runs
(docs/PROTOCOL.md §6.5: the vehicle application counts attempts and enrolls the key atomically). Every attempt
leaves two audit rows: pair_start when it begins, then pair (a key enrolled) or pair_failed (with its reason).
"""

from __future__ import annotations

import logging
from typing import Final

from protocol import Role

from .audit import AuditEvent, AuditLog
from .clock import GuardedClock
from .pairing import PairingTicket, issue_code
from .store import KeyRecord, KeyStore, PendingPairing, StoreError

__all__ = ["MAX_ATTEMPTS", "MAX_CODE_TTL", "Enrollment"]

log = logging.getLogger("key_server.enrollment")

MAX_CODE_TTL: Final = 7 * 86400  # a code is a short secret: a week is already generous for handing it over
MAX_ATTEMPTS: Final = 20  # wrong tries a code survives; every one is a 1-in-a-million online guess


class Enrollment:
    """Pairing codes in `store`, audited in `audit`, for the vehicle whose key id is `vehicle_id`."""

    def __init__(self, store: KeyStore, audit: AuditLog, clock: GuardedClock, vehicle_id: bytes) -> None:
        """Issue and complete pairings for `vehicle_id` (its key id is bound into every code's PRS)."""
        self.store = store
        self.audit = audit
        self.clock = clock
        self.vehicle_id = vehicle_id

    # ------------------------------------------------------------------ on the Pi

    def issue(
        self,
        *,
        role: Role,
        name: str,
        expires_at: int,
        key_valid_from: int | None,
        key_valid_until: int | None,
        schedule: str | None,
        attempts: int,
        issued_by: bytes | None = None,
    ) -> tuple[PairingTicket, PendingPairing]:
        """A one-time code for a new device, stored (as its PRS only) and audited in one commit.

        ValueError, saying what is wrong, for a code that would be dead or a key that would be: a code lifetime
        that is not in (0, MAX_CODE_TTL], a key expiry already past, attempts outside 1..MAX_ATTEMPTS.
        NoFreeSlot when all 100 slots are taken. `issued_by` is the owner key that asked over the air (None: the
        Pi's CLI); the key the code enrolls records it as enrolled_by, and the audit row as "by".
        """
        now = self.clock.now()
        if expires_at <= now:
            raise ValueError("the code lifetime must be positive")
        if expires_at - now > MAX_CODE_TTL:
            raise ValueError(f"a pairing code may live at most {MAX_CODE_TTL // 86400} days")
        if key_valid_until is not None and key_valid_until <= now:
            raise ValueError("the key's expiry is already past: the new key would be dead on arrival")
        if not 1 <= attempts <= MAX_ATTEMPTS:
            raise ValueError(f"attempts must be between 1 and {MAX_ATTEMPTS}, not {attempts}")
        with self.store.transaction():
            code, pairing = issue_code(self.store, self.vehicle_id, role=role, name=name, expires_at=expires_at,
                                       key_valid_from=key_valid_from, key_valid_until=key_valid_until,
                                       schedule=schedule, attempts=attempts, now=now, issued_by=issued_by)
            self.audit.append(AuditEvent.ADMIN, ts=now, key_id=issued_by, detail={
                "action": "pair_code", "slot": pairing.slot, "role": role.label, "name": name,
                "by": issued_by.hex() if issued_by is not None else "cli"})
        return PairingTicket(code, self.vehicle_id, name), pairing

    def pending(self) -> list[PendingPairing]:
        """Codes still usable, by slot."""
        return self.store.list_pairings(self.clock.now())

    def cancel(self, slot: int) -> None:
        """Withdraw the code in `slot`; UnknownPairing if there is none."""
        self.store.cancel_pairing(slot)

    # ------------------------------------------------------------------ over the air

    def begin(self, slot: int) -> PendingPairing | None:
        """Spend one attempt of the code in `slot` and audit the attempt, in one durable commit; None if no code.

        An empty slot costs the same commit as a live one (the same statements, one audit row each), so how long
        the vehicle takes to answer PAIR_START does not tell a prober which slots hold a code. If the audit row
        cannot be written nothing is spent and StoreError propagates: no PAKE runs unaudited.
        """
        now = self.clock.now()
        with self.store.transaction():
            pairing = self.store.spend_pairing_attempt(slot, now)
            self.audit.append(AuditEvent.PAIR_START, ts=now, detail={
                "slot": slot, "live": pairing is not None, "name": pairing.name if pairing is not None else None})
        return pairing

    def failed(self, slot: int, *, prs: bytes, live: bool, reason: str) -> None:
        """A PAKE attempt on `slot` ended without a key: count it against the code whose PRS is `prs`, audited.

        `live` says whether a real code (not a decoy) was behind it; `reason` is "wrong code", "abandoned" (the
        central left mid-PAKE), "invalid PAKE share" or a protocol error. A decoy attempt runs the same statements
        (matching no code). A store failure is logged, not raised: the link is already answered or gone.
        """
        now = self.clock.now()
        try:
            with self.store.transaction():
                self.store.fail_pairing_attempt(slot, prs)
                self.audit.append(AuditEvent.PAIR_FAILED, ts=now, detail={"slot": slot, "live": live,
                                                                          "reason": reason})
        except StoreError:
            log.exception("could not record the failed pairing attempt on slot %02d", slot)

    def complete(self, pairing: PendingPairing, key_id: bytes, public_key: bytes) -> KeyRecord | None:
        """Enroll the device key the PAKE delivered, with what `pairing` grants; None (audited) if the store refuses."""
        rec = pairing.key_record(key_id, public_key, self.clock.now())
        try:
            self.store.complete_pairing(pairing.slot, rec)
        except StoreError as exc:
            self.audit.record(AuditEvent.PAIR_FAILED, ts=self.clock.now(), key_id=key_id,
                              detail={"slot": pairing.slot, "reason": str(exc)})
            return None
        self.audit.record(AuditEvent.PAIR, ts=self.clock.now(), key_id=key_id,
                          detail={"slot": pairing.slot, "name": pairing.name, "role": pairing.role.label,
                                  "via": "code", "by": pairing.issued_by.hex() if pairing.issued_by else "cli"})
        return rec

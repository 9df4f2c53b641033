"""Owners' shares and revocation lists, applied by the vehicle (docs/PROTOCOL.md §12; issue 12).

A share certificate is an owner key's signed word that a public key is a driver's or guest's key of this vehicle;
the first time its holder presents it, enroll() checks it (in the order PROTOCOL.md §12 fixes, first failure
wins) and enrolls the key, atomically with its audit row. A revocation list is an owner key's cumulative,
versioned list of the keys it revoked here; apply() takes a newer one in one transaction. Both answer a protocol
Status (and apply() the version now held); the session service signs and sends it. Neither request is
authenticated by its sender (anyone may replay a certificate or a list), so a refusal writes nothing here: the
service counts it with the link's other unauthenticated refusals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

from protocol import (
    LIST_WITH_SHARES,
    AuthenticationError,
    RevocationList,
    Role,
    ShareCertificate,
    Status,
    is_published_test_key,
)

from .audit import AuditEvent, AuditLog
from .clock import GuardedClock
from .store import DuplicateKey, KeyRecord, KeyStore, KeyWasRevoked, LastOwnerError, PublishedTestKey, StoreError

__all__ = ["REVOCATIONS_EVENT", "ListResult", "ShareResult", "Shares"]

log = logging.getLogger("key_server.shares")

REVOCATIONS_EVENT: Final = "revocations"  # audit event of an applied list: {"issuer", "version", "revoked", ...}


@dataclass(frozen=True, slots=True)
class ShareResult:
    """The answer to a SHARE_PRESENT: its status, why (for the audit log), and the key enrolled if any."""

    status: Status
    reason: str
    key: KeyRecord | None = None


@dataclass(frozen=True, slots=True)
class ListResult:
    """The answer to REVOCATIONS: status, the version now held for the issuer, the keys it revoked, why."""

    status: Status
    version: int
    reason: str
    revoked: tuple[bytes, ...] = ()  # key ids revoked now: their open sessions must end
    skipped: tuple[bytes, ...] = ()  # named keys kept because each was the last active owner


class Shares:
    """Enroll keys by owners' shares and apply owners' revocation lists, for the vehicle `vehicle_id`."""

    def __init__(self, store: KeyStore, audit: AuditLog, clock: GuardedClock, vehicle_id: bytes) -> None:
        """Work on `store` and its `audit` log at the guarded `clock`'s time."""
        self.store = store
        self.audit = audit
        self.clock = clock
        self.vehicle_id = vehicle_id

    def _issuer(self, vehicle_id: bytes, issuer_id: bytes, now: int) -> KeyRecord | None:
        """The issuer if the record is for this vehicle and names an active owner key here (window included)."""
        if vehicle_id != self.vehicle_id:
            return None
        issuer = self.store.get_key(issuer_id)
        return issuer if issuer is not None and issuer.active_owner(now) else None

    def enroll(self, cert: ShareCertificate) -> ShareResult:
        """Check a decoded certificate and enroll its key (PROTOCOL.md §12.4, first failure wins); never raises.

        1 ours (DENIED); 2 issuer an active owner here, signature valid (DENIED); 3 not an owner role
        (NOT_PERMITTED); 4 clock trusted (CLOCK_UNTRUSTED), not expired (KEY_EXPIRED); 5 subject not revoked,
        serial not spent on another key, not a published test key (DENIED); 6 enrolled already: NO_CHANGE;
        7 enrolled and audited in one commit: OK. A window starting later still enrolls (policy then answers
        KEY_NOT_YET_VALID).
        """
        now = self.clock.now()
        if cert.vehicle_id != self.vehicle_id:
            return ShareResult(Status.DENIED, "share for another vehicle")
        issuer = self._issuer(cert.vehicle_id, cert.issuer_id, now)
        if issuer is None:
            return ShareResult(Status.DENIED, "share issuer is not an active owner key of this vehicle")
        try:
            cert.verify(issuer.public_key)
        except AuthenticationError:
            return ShareResult(Status.DENIED, "share signature does not verify")
        if cert.role is Role.OWNER:
            return ShareResult(Status.NOT_PERMITTED, "a share cannot grant the owner role")
        if not self.clock.trusted:
            return ShareResult(Status.CLOCK_UNTRUSTED, "share refused while the clock is untrusted")
        if cert.valid_until is not None and now >= cert.valid_until:
            return ShareResult(Status.KEY_EXPIRED, "share expired")
        subject = cert.subject_key_id
        spent = self.store.share_serial_used(cert.serial)
        if self.store.key_id_revoked(subject):
            return ShareResult(Status.DENIED, "share for a revoked key")
        if spent is not None and spent.key_id != subject:
            return ShareResult(Status.DENIED, "share serial already enrolled another key")
        if is_published_test_key(cert.subject_public_key):
            return ShareResult(Status.DENIED, "share for a published test key")
        existing = self.store.get_key(subject)
        if existing is not None:
            if existing.public_key != cert.subject_public_key:  # a key id collision: never confuse the two keys
                return ShareResult(Status.DENIED, "share subject's key id names another enrolled key")
            return ShareResult(Status.NO_CHANGE, "share's key already enrolled", existing)
        rec = KeyRecord(subject, cert.subject_public_key, _name(cert), cert.role, cert.valid_from, cert.valid_until,
                        cert.schedule, now, via="share", enrolled_by=cert.issuer_id, share_serial=cert.serial)
        try:
            with self.store.transaction():
                self.store.add_key(rec)
                self.audit.append(AuditEvent.PAIR, ts=now, key_id=subject, detail={
                    "via": "share", "by": cert.issuer_id.hex(), "serial": cert.serial.hex(), "name": rec.name,
                    "role": rec.role.label})
        except DuplicateKey:  # enrolled by another link between the read above and this commit
            return ShareResult(Status.NO_CHANGE, "share's key already enrolled", self.store.get_key(subject))
        except (KeyWasRevoked, PublishedTestKey):
            return ShareResult(Status.DENIED, "share for a revoked or published key")
        except (StoreError, ValueError) as exc:
            log.warning("could not enroll a share's key: %s", exc)
            return ShareResult(Status.INTERNAL_ERROR, f"share enrolment failed: {exc}")
        return ShareResult(Status.OK, "enrolled by share", rec)

    def apply(self, revocations: RevocationList, raw: bytes) -> ListResult:
        """Check a decoded list and apply it if newer than the one held for its issuer, in one commit; never raises.

        DENIED (version 0) unless it is for this vehicle and signed by an active owner key; NO_CHANGE (the held
        version) if its version is not above the held one. Otherwise every named key id is remembered as revoked
        (so a share cannot enroll it later), every enrolled one is revoked, with its flag also the keys its shares
        enrolled; the last active owner is skipped (and the skip audited); one `revocations` audit row.
        """
        now = self.clock.now()
        held = self.store.revocation_list(revocations.issuer_id)
        held_version = held.version if held is not None else 0
        issuer = self._issuer(revocations.vehicle_id, revocations.issuer_id, now)
        # A refusal says VERSION 0: it tells nobody what the vehicle holds (PROTOCOL.md §12.5, §8.4).
        if issuer is None:
            return ListResult(Status.DENIED, 0, "revocation list not from an active owner of this vehicle")
        try:
            revocations.verify(issuer.public_key)
        except AuthenticationError:
            return ListResult(Status.DENIED, 0, "revocation list signature does not verify")
        if revocations.version <= held_version:
            return ListResult(Status.NO_CHANGE, held_version, "revocation list not newer than the one held")
        revoked: list[bytes] = []
        skipped: list[bytes] = []
        issuer_id, version = revocations.issuer_id, revocations.version
        try:
            with self.store.transaction():
                for key_id, flags in revocations.entries:
                    self.store.remember_revoked_id(key_id, issuer_id, version, now)
                    targets = [key_id]
                    if flags & LIST_WITH_SHARES:
                        targets += [k.key_id for k in self.store.keys_enrolled_by(key_id)]
                    for target in targets:
                        rec = self.store.get_key(target)
                        if rec is None or rec.revoked or target in revoked:
                            continue
                        try:
                            self.store.revoke_key(target, now)
                        except LastOwnerError:  # a list never leaves the vehicle without an owner
                            skipped.append(target)
                            continue
                        revoked.append(target)
                self.store.put_revocation_list(issuer_id, version, revocations.issued_at, now, raw)
                self.audit.append(REVOCATIONS_EVENT, ts=now, key_id=issuer_id, detail={
                    "issuer": issuer_id.hex(), "version": version, "entries": len(revocations.entries),
                    "revoked": ",".join(k.hex() for k in revoked),
                    "skipped_last_owner": ",".join(k.hex() for k in skipped)})
        except (StoreError, ValueError) as exc:
            log.warning("could not apply a revocation list: %s", exc)
            return ListResult(Status.INTERNAL_ERROR, held_version, f"revocation list not applied: {exc}")
        return ListResult(Status.OK, version, "applied", tuple(revoked), tuple(skipped))


def _name(cert: ShareCertificate) -> str:
    """The certificate's name as a key list can show it (printable, non-empty): the issuer's choice otherwise."""
    name = "".join(ch if ch.isprintable() else "?" for ch in cert.name).strip()
    return name or f"shared key {cert.serial.hex()[:8]}"


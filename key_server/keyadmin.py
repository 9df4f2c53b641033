"""Key administration, written once for `key-server` on the Pi and for owner commands over BLE.

Listing keys, editing one, revoking one (durable and audited in one commit, before anyone is told it is done) and
reading the audit log. Every change is audited with who made it (`by`: "cli" at the Pi, the acting owner's key id
in hex over the air). Callers translate the results: the CLI into lines and exit codes, the session service into
protocol statuses and pages.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Final

from protocol import AdSecret, Role

from .audit import MAX_READ, AuditEntry, AuditEvent, AuditLog, AuditVerdict, DetailValue
from .clock import GuardedClock
from .policy import MAX_SCHEDULE_LEN, parse_schedule
from .store import AlreadyRevoked, KeyRecord, KeyStore, LastOwnerError, UnknownKey

__all__ = ["EDIT_EVENT", "UNCHANGED", "KeyAdmin", "Revocation", "Unchanged"]

EDIT_EVENT: Final = "edit_key"  # audit event of an edit; detail: {"by", "changed": "name,role,..."} and new values


class Unchanged(enum.Enum):
    """The type of UNCHANGED: edit_key leaves a field alone when given it."""

    UNCHANGED = "unchanged"


UNCHANGED: Final = Unchanged.UNCHANGED


@dataclass(frozen=True, slots=True)
class Revocation:
    """What one revoke did: the key named, the keys its shares enrolled that went with it, the ones kept."""

    key: KeyRecord  # as stored afterwards (revoked)
    shares: tuple[KeyRecord, ...] = ()  # keys enrolled by this key's shares, revoked with it (WITH_SHARES)
    kept: tuple[KeyRecord, ...] = ()  # such keys kept because each was the last active owner

    @property
    def revoked_ids(self) -> tuple[bytes, ...]:
        """Every key id this revocation ended (their open sessions must end too)."""
        return (self.key.key_id, *(k.key_id for k in self.shares))


class KeyAdmin:
    """The owner's view of the key store and audit log."""

    def __init__(self, store: KeyStore, audit: AuditLog, clock: GuardedClock) -> None:
        """Work on `store` and its `audit` log, stamping changes with the guarded `clock`."""
        self.store = store
        self.audit = audit
        self.clock = clock

    def keys(self, *, include_revoked: bool = True) -> list[KeyRecord]:
        """Enrolled keys, oldest first."""
        keys = self.store.list_keys()
        return keys if include_revoked else [k for k in keys if not k.revoked]

    def find(self, prefix_or_name: str) -> KeyRecord:
        """The one key a person means by a hex id prefix or a name (UnknownKey; StoreError if ambiguous)."""
        return self.store.find_key(prefix_or_name)

    def rotate_ad_secret(self, *, by: str) -> AdSecret:
        """Replace the advertising secret with the next generation and audit it, in one synced commit.

        A running server notices on its next store poll and advertises tokens of the new secret from then on; a
        device (or former guest) holding only the old one no longer recognises the car (PROTOCOL.md §13).
        """
        now = self.clock.now()
        with self.store.transaction():
            new = self.store.rotate_ad_secret()
            self.audit.append(AuditEvent.ADMIN, ts=now,
                              detail={"action": "rotate_secret", "by": by, "generation": new.generation})
        return new

    def revoke(self, key_id: bytes, *, by: str, force: bool = False, with_shares: bool = False) -> Revocation:
        """Revoke `key_id` (with `with_shares`, also every key its shares enrolled) and audit it, in one synced commit.

        Raises UnknownKey, LastOwnerError for the last active owner without `force`, or AlreadyRevoked when the
        request changes nothing (the key is revoked and, with `with_shares`, so is every key its shares enrolled);
        nothing is written then. A share-enrolled key that is the last active owner (promoted since) is kept
        unless `force`, and audited as kept. A running server notices the change on its next store poll and ends
        the revoked keys' open sessions.
        """
        now = self.clock.now()
        with self.store.transaction():
            before = self.store.get_key(key_id)
            shared = ([k for k in self.store.keys_enrolled_by(key_id) if not k.revoked] if with_shares else [])
            if before is not None and before.revoked and not shared:
                raise AlreadyRevoked(f"{key_id.hex()} ({before.name!r}) is already revoked"
                                     + ("" if not with_shares else ", and so is every key its shares enrolled"))
            rec = self.store.revoke_key(key_id, now, force=force)  # UnknownKey, LastOwnerError
            if before is None or not before.revoked:
                self.audit.append(AuditEvent.REVOKE, ts=now, key_id=key_id,
                                  detail={"by": by, "force": force, "with_shares": with_shares})
            done: list[KeyRecord] = []
            kept: list[KeyRecord] = []
            for share in shared:
                try:
                    done.append(self.store.revoke_key(share.key_id, now, force=force))
                except LastOwnerError:
                    kept.append(share)
                    self.audit.append(AuditEvent.REVOKE, ts=now, key_id=share.key_id,
                                      detail={"by": by, "share_of": key_id.hex(), "kept": "last active owner"})
                    continue
                self.audit.append(AuditEvent.REVOKE, ts=now, key_id=share.key_id,
                                  detail={"by": by, "share_of": key_id.hex(), "force": force})
        return Revocation(rec, tuple(done), tuple(kept))

    def edit_key(self, key_id: bytes, *, by: str, name: str | Unchanged = UNCHANGED,
                 role: Role | Unchanged = UNCHANGED, valid_from: int | None | Unchanged = UNCHANGED,
                 valid_until: int | None | Unchanged = UNCHANGED,
                 schedule: str | None | Unchanged = UNCHANGED) -> KeyRecord:
        """Change a key's name, role, validity window or schedule (None clears one) and audit it; return the key.

        Raises UnknownKey, AlreadyRevoked, LastOwnerError (the last active owner demoted or given a window that
        excludes now) or ValueError (a bad name, an empty window, an unreadable or too long schedule); nothing is
        written then, nor when nothing would change. A running server applies the edit from the next command on.
        """
        if isinstance(schedule, str):
            if len(schedule.encode()) > MAX_SCHEDULE_LEN:
                raise ValueError(f"a schedule is at most {MAX_SCHEDULE_LEN} bytes")
            parse_schedule(schedule)  # refuse it now, with its reason, rather than at the key's next use
        now = self.clock.now()
        with self.store.transaction():
            old = self.store.get_key(key_id)
            if old is None:
                raise UnknownKey(f"no key {key_id.hex()}")
            if old.revoked:
                raise AlreadyRevoked(f"{key_id.hex()} ({old.name!r}) is revoked: it cannot be edited")
            changes: dict[str, object] = {field: value for field, value in (
                ("name", name), ("role", role), ("valid_from", valid_from), ("valid_until", valid_until),
                ("schedule", schedule)) if value is not UNCHANGED}
            new = dataclasses.replace(old, **changes)  # type: ignore[arg-type]  # ValueError for a bad field
            changed = [f for f in ("name", "role", "valid_from", "valid_until", "schedule")
                       if getattr(new, f) != getattr(old, f)]
            if not changed:
                return old
            new = self.store.update_key(new, now)
            detail: dict[str, DetailValue] = {"by": by, "changed": ",".join(changed)}
            for f in changed:
                value = getattr(new, f)
                detail[f] = value.label if isinstance(value, Role) else value
            self.audit.append(EDIT_EVENT, ts=now, key_id=key_id, detail=detail)
        return new

    def audit_tail(self, limit: int) -> list[AuditEntry]:
        """The newest `limit` entries (1..MAX_READ), oldest first."""
        return self.audit.tail(_bounded(limit, MAX_READ))

    def audit_page(self, after_seq: int, limit: int) -> tuple[list[AuditEntry], tuple[int, bytes], int]:
        """Up to `limit` entries after `after_seq` (clamped to 1..MAX_READ), the head (seq, hash) and the anchor.

        Read in one snapshot, so the head a page is sent with is never older than its entries.
        """
        with self.store._snapshot():
            entries = self.audit.read(after_seq=after_seq, limit=max(1, min(limit, MAX_READ)))
            return entries, self.audit.head(), self.audit.pruned_through()

    def verify_audit(self, pinned: tuple[int, bytes] | None = None) -> AuditVerdict:
        """Walk the audit log's hash chain; with `pinned` (seq, hash), also check it still holds that head."""
        return self.audit.verify() if pinned is None else self.audit.verify_pinned(*pinned)


def _bounded(limit: int, most: int) -> int:
    if not 1 <= limit <= most:
        raise ValueError(f"limit must be between 1 and {most}, not {limit}")
    return limit


"""Key administration, written once for `key-server` on the Pi and for owner commands over BLE.

Listing keys, revoking one (durable and audited in one commit, before anyone is told it is done) and reading
the audit log. Callers translate the results: the CLI into lines and exit codes, the session service into
protocol statuses and pages.
"""

from __future__ import annotations

from .audit import MAX_READ, AuditEntry, AuditEvent, AuditLog, AuditVerdict
from .clock import GuardedClock
from .store import KeyRecord, KeyStore

__all__ = ["KeyAdmin"]


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

    def revoke(self, key_id: bytes, *, by: str, force: bool = False) -> KeyRecord:
        """Revoke `key_id` and audit who did it, in one synced commit; the caller acknowledges only after this.

        Raises UnknownKey, or LastOwnerError for the last active owner without `force`; nothing is written then.
        A running server notices the change on its next store poll and ends the key's open sessions.
        """
        now = self.clock.now()
        with self.store.transaction():
            rec = self.store.revoke_key(key_id, now, force=force)
            self.audit.append(AuditEvent.REVOKE, ts=now, key_id=key_id, detail={"by": by, "force": force})
        return rec

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

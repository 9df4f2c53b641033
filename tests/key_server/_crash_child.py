"""Child process for test_store_crash.py: revoke and pair in a loop until SIGKILLed.

Usage: python _crash_child.py DB_PATH SEED ROUND

Prints one line per operation *after* the call returned (so the change is acknowledged as durable):
    R <key_id hex>            a revocation (and its audit entry) committed
    P <key_id hex> <name>     a pairing completed (key enrolled, pairing deleted, audit entry) committed
"""

from __future__ import annotations

import hashlib
import random
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from key_server.audit import AuditEvent, AuditLog
from key_server.store import DuplicateKey, KeyStore
from protocol import Role


def main() -> None:
    """Loop forever doing acknowledged revocations and pairings."""
    db_path, seed, round_no = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed * 1000 + round_no)
    with KeyStore.open(db_path, create=True) as store:
        audit = AuditLog(store)
        active = sorted(r.key_id for r in store.list_keys() if r.role is Role.DRIVER and not r.revoked)
        base = 1_800_000_000 + round_no * 100_000  # earlier rounds' unfinished pairings have expired by now
        i = 0
        while True:
            i += 1
            now = base + i
            if active and rng.random() < 0.5:
                key_id = active.pop(rng.randrange(len(active)))
                with store.transaction():
                    store.revoke_key(key_id, now)
                    audit.append(AuditEvent.REVOKE, ts=now, key_id=key_id)
                print(f"R {key_id.hex()}", flush=True)
                continue
            name = f"r{round_no}-{i}"
            pairing = store.create_pairing(
                lambda slot: hashlib.sha256(b"%d" % slot).digest(),
                role=Role.DRIVER,
                name=name,
                expires_at=now + 300,
                key_valid_from=None,
                key_valid_until=None,
                schedule=None,
                now=now,
            )
            spent = store.spend_pairing_attempt(pairing.slot, now)
            assert spent is not None
            public_key = (
                ec.generate_private_key(ec.SECP256R1())
                .public_key()
                .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
            )
            rec = spent.key_record(hashlib.sha256(public_key).digest()[:4], public_key, now)
            try:
                with store.transaction():
                    store.complete_pairing(pairing.slot, rec)
                    audit.append(AuditEvent.PAIR, ts=now, key_id=rec.key_id, detail={"name": name})
            except DuplicateKey:
                store.cancel_pairing(pairing.slot)  # a 4-byte id collision: not an acknowledged operation
                continue
            active.append(rec.key_id)
            print(f"P {rec.key_id.hex()} {name}", flush=True)


if __name__ == "__main__":
    main()

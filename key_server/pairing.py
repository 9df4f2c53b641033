"""One-time pairing codes: 8 digits, the first two name the slot, all eight are the PAKE password."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from protocol import SECRET_DIGITS, pairing_prs, pairing_uri

if TYPE_CHECKING:
    from .store import KeyStore, PendingPairing

@dataclass(frozen=True, slots=True)
class PairingTicket:
    """What `key-server pair` shows: the code, and the vehicle id so a client can find the right vehicle."""

    code: str
    vehicle_id: bytes
    name: str

    @property
    def slot(self) -> int:
        """The slot the code lives in (its first two digits)."""
        return int(self.code[:2])

    @property
    def display(self) -> str:
        """The code grouped for reading aloud: '4212 3456'."""
        return f"{self.code[:4]} {self.code[4:]}"

    def uri(self) -> str:
        """The QR payload: dkey://pair?code=...&vehicle=...&name=..."""
        return pairing_uri(self.code, self.vehicle_id, self.name)


def new_code_for_slot(slot: int) -> str:
    """A fresh code in `slot`: two slot digits then six random ones."""
    if not 0 <= slot <= 99:
        raise ValueError("slot must be 0..99")
    return f"{slot:02d}{secrets.randbelow(10**SECRET_DIGITS):0{SECRET_DIGITS}d}"


def prs_for(code: str, vehicle_id: bytes) -> bytes:
    """The stored password-related string for a code (never the code itself)."""
    return pairing_prs(code, vehicle_id=vehicle_id, slot=int(code[:2]))


def issue_code(store: KeyStore, vehicle_id: bytes, **pairing: Any) -> tuple[str, PendingPairing]:
    """Create a pending pairing in a free slot and return (its one-time code, the stored pairing).

    `pairing` is passed to KeyStore.create_pairing (role, name, expires_at, validity, schedule, attempts, now).
    Only the code's password-related string is stored; the code itself exists only in the return value.
    """
    codes: dict[int, str] = {}

    def prs(slot: int) -> bytes:
        codes[slot] = new_code_for_slot(slot)
        return prs_for(codes[slot], vehicle_id)

    pending = store.create_pairing(prs, **pairing)
    return codes[pending.slot], pending

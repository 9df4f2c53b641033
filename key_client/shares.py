"""The offline share use cases (PROTOCOL.md §12): sign a share, import one, put a key on this device's revocation list.

None of these talks to a vehicle: an owner's phone signs a share for a watch at home, a guest imports it on the
train, an owner revokes a lost watch from anywhere. What reaches the vehicle later (SHARE_PRESENT on the new
device's first connection, REVOCATIONS after any OK command of a device that carries the list) is the driver's
and DeviceApp's business; this module only decides what is signed and what the keychain remembers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dkey_link.exit_codes import ExitCode
from protocol import (
    LIST_WITH_SHARES,
    MAX_REVOCATIONS,
    MAX_SHARE_NAME,
    MAX_SHARE_SCHEDULE,
    DecodeError,
    KeyPair,
    RevocationList,
    Role,
    ShareCertificate,
    is_published_test_key,
    key_id,
    parse_schedule,
)

from .errors import ClientError, KeychainError, UsageError
from .keychain import Keychain, VehicleEntry
from .share_uri import parse_share, parse_share_request, share_uri
from .sharebook import HeldList, ImportedShare, IssuedShare, ShareBook

__all__ = ["ImportedResult", "IssuedResult", "ListedRevocation", "NotAllowed", "import_share",
           "issue_share", "read_share_text", "resolve_offline", "revoke_offline"]



class NotAllowed(ClientError):
    """This device may not do that (a share or a revocation list needs an owner key; an expired share)."""

    exit_code = ExitCode.DENIED


@dataclass(frozen=True, slots=True)
class IssuedResult:
    """A share this device signed: the text to hand over, the record kept, and the certificate's size."""

    uri: str
    share: IssuedShare
    certificate: bytes
    carries_list: int | None  # the version of this device's revocation list the text carries, if any


@dataclass(frozen=True, slots=True)
class ImportedResult:
    """A share imported: the new keychain entry and the certificate's terms."""

    entry: VehicleEntry
    certificate: ShareCertificate
    list_kept: int | None  # the version of the issuer's list the text carried and this device now holds


@dataclass(frozen=True, slots=True)
class ListedRevocation:
    """A key put on this device's revocation list for a vehicle."""

    entry: VehicleEntry
    key_id: bytes
    name: str  # the issued share's name, or "" for a bare key id
    with_shares: bool
    held: HeldList  # the list now held (its version; undelivered until the vehicle acknowledges it)
    changed: bool  # False: the key was already on the list with these flags (nothing re-signed)


def _check_name(name: str) -> str:
    if len(name.encode()) > MAX_SHARE_NAME or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise UsageError(f"a share's name is at most {MAX_SHARE_NAME} bytes of UTF-8 without control characters, "
                         f"not {name!r}")
    return name


def issue_share(kc: Keychain, entry: VehicleEntry, device: KeyPair, request_text: str, *, role: Role,
                name: str | None, valid_from: int, valid_until: int | None, schedule: str | None,
                now: int) -> IssuedResult:
    """Sign a share for the key in `request_text` on `entry`'s vehicle and record it (owner keys only)."""
    if entry.role != "owner":
        raise NotAllowed(f"this device holds a {entry.role} key for {entry.name}: only an owner's key can sign a "
                         "share")
    if role not in (Role.DRIVER, Role.GUEST):
        raise UsageError("a share grants driver or guest, never owner")
    try:
        subject, suggested = parse_share_request(request_text)
    except ValueError as exc:
        raise UsageError(f"not a share request: {exc}") from None
    subject_id = key_id(subject)
    if subject_id == entry.key_id:
        raise UsageError("that request is this device's own key for this vehicle")
    if is_published_test_key(subject):
        raise UsageError("that request carries a published test key, which no vehicle enrols")
    chosen = _check_name(suggested if name is None else name)
    if valid_until is not None and valid_until <= now:
        raise UsageError("--until is in the past: the share would never work")
    if valid_until is not None and valid_until <= valid_from:
        raise UsageError("--until must be later than --from")
    if schedule is not None:
        if len(schedule.encode()) > MAX_SHARE_SCHEDULE:
            raise UsageError(f"a share's schedule is at most {MAX_SHARE_SCHEDULE} bytes (write it shorter)")
        try:
            parse_schedule(schedule)
        except ValueError as exc:
            raise UsageError(f"bad --schedule: {exc}") from None
    cert = ShareCertificate.issue(device, entry.vehicle_id, subject, role, chosen, valid_from, valid_until,
                                  schedule)
    raw = cert.encode()
    book = ShareBook(kc.path)
    record = IssuedShare(entry.vehicle_id, cert.serial, subject_id, chosen, Role.label_of(role), valid_from,
                         valid_until, schedule, now)
    book.record_issued(record)
    own = book.held(entry.vehicle_id, device.key_id)
    # The owner's advertising secret rides along, so the new device recognises the car on air at once.
    uri = share_uri(raw, entry.vehicle_public_key, entry.advertised_name or entry.name,
                    own.raw if own is not None else None, kc.ad_secret(entry))
    return IssuedResult(uri, record, raw, own.version if own is not None else None)


def read_share_text(text: str) -> str:
    """SHARE, or the first non-empty line of FILE for @FILE (UsageError if the file cannot be read)."""
    if not text.startswith("@"):
        return text
    path = Path(text[1:])
    try:
        with open(path, encoding="utf-8") as f:
            content = f.read(64 * 1024)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the share file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    for line in content.splitlines():
        if line.strip():
            return line.strip()
    raise UsageError(f"the share file {path} is empty")


def import_share(kc: Keychain, text: str, *, name: str | None, now: int) -> ImportedResult:
    """Check a dkey://share text against this device's keys, pin its vehicle key and keep the certificate."""
    try:
        parts = parse_share(text)
    except ValueError as exc:
        raise UsageError(f"not a share: {exc}") from None
    try:
        cert = ShareCertificate.decode(parts.certificate)
    except DecodeError as exc:
        raise UsageError(f"the share's certificate is not valid: {exc}") from None
    if key_id(parts.vehicle_public_key) != cert.vehicle_id:
        raise UsageError("the share's vehicle key does not match the vehicle its certificate names")
    if cert.role not in (Role.DRIVER, Role.GUEST):
        raise UsageError(f"the share grants {Role.label_of(cert.role)}: a share grants driver or guest only, "
                         "and the vehicle refuses it")
    if cert.valid_until is not None and cert.valid_until <= now:
        raise NotAllowed(f"the share for {cert.name!r} expired on {_iso(cert.valid_until)}")
    lst: RevocationList | None = None
    if parts.revocation_list is not None:
        try:
            lst = RevocationList.decode(parts.revocation_list)
        except DecodeError as exc:
            raise UsageError(f"the share's revocation list is not valid: {exc}") from None
        if lst.vehicle_id != cert.vehicle_id or lst.issuer_id != cert.issuer_id:
            raise UsageError("the share's revocation list is not its issuer's list for that vehicle")
    subject_id = cert.subject_key_id
    book = ShareBook(kc.path)
    existing = kc.find_vehicle_id(cert.vehicle_id)
    if existing is not None and existing.key_id == subject_id and existing.via == "share":
        entry = existing  # imported before (perhaps interrupted before the certificate was kept): finish it
    else:
        # The key must be one this device made for a request; add_shared refuses a vehicle it already holds.
        if existing is None and kc.find_key_id(subject_id) is None and not _has_key_file(kc, subject_id):
            raise KeychainError(f"this share is for key {subject_id.hex()}, which this device does not hold: "
                                "import it on the device that ran `key-client request-share`")
        entry = kc.add_shared(subject_id, parts.vehicle_public_key, cert.role, valid_from=cert.valid_from,
                              valid_until=cert.valid_until, advertised_name=parts.vehicle_name or None, name=name,
                              now=now)
    held = book.imported(cert.vehicle_id)
    if held is None or held.certificate != parts.certificate:
        book.add_imported(ImportedShare(cert.vehicle_id, parts.certificate, False, now))
    book.drop_request(subject_id)
    kept: int | None = None
    if lst is not None and book.store_list(cert.vehicle_id, lst.issuer_id, lst.version, parts.revocation_list
                                           or b""):
        kept = lst.version
    if parts.ad_secret is not None:
        kc.store_ad_secret(entry, parts.ad_secret)
    return ImportedResult(entry, cert, kept)


def _has_key_file(kc: Keychain, kid: bytes) -> bool:
    from .keychain import KEYS_DIR

    return (kc.path / KEYS_DIR / f"{kid.hex()}.pem").exists()


def _iso(ts: int) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M")


def resolve_offline(kc: Keychain, entry: VehicleEntry, wanted: str) -> tuple[bytes, str] | None:
    """The key id (and name) `wanted` names from what this device knows offline: a share it issued for the
    vehicle (by name, or key-id prefix), or a full 8-digit hex key id. None if it names nothing known here."""
    want = wanted.strip()
    shares = ShareBook(kc.path).issued(entry.vehicle_id)
    by_name = {s.subject_key_id: s.name for s in shares if s.name.casefold() == want.casefold()}
    by_id = {s.subject_key_id: s.name for s in shares if len(want) >= 2
             and s.subject_key_id.hex().startswith(want.lower())}
    found = by_name or by_id
    if len(found) > 1:
        listed = ", ".join(f"{k.hex()} ({n})" for k, n in found.items())
        raise UsageError(f"{want!r} matches several shared keys: {listed}; give more of the key id")
    if found:
        ((kid, n),) = found.items()
        return kid, n
    if len(want) == 8:
        try:
            return bytes.fromhex(want), ""
        except ValueError:
            return None
    return None


def revoke_offline(kc: Keychain, entry: VehicleEntry, device: KeyPair, kid: bytes, name: str, *,
                   with_shares: bool, now: int) -> ListedRevocation:
    """Put `kid` on this device's revocation list for the vehicle: version + 1, re-signed (owner keys only)."""
    if entry.role != "owner":
        raise NotAllowed(f"this device holds a {entry.role} key for {entry.name}: only an owner's key signs "
                         "revocation lists")
    if kid == entry.key_id:
        raise UsageError("that is this device's own key: revoke it from another owner's device or at the vehicle")
    book = ShareBook(kc.path)
    held = book.held(entry.vehicle_id, device.key_id)
    entries: dict[bytes, int] = {}
    if held is not None:
        try:
            entries = dict(RevocationList.decode(held.raw).entries)
        except DecodeError as exc:
            raise KeychainError(f"this device's revocation list for {entry.name} is damaged ({exc})") from None
    flags = entries.get(kid, 0) | (LIST_WITH_SHARES if with_shares else 0)
    changed = entries.get(kid) != flags
    if changed:
        entries[kid] = flags
        if len(entries) > MAX_REVOCATIONS:
            raise NotAllowed(f"this device's revocation list for {entry.name} is full ({MAX_REVOCATIONS} keys): "
                             "revoke at the vehicle (`key-server revoke`) or while connected")
        # Above what the vehicle said it holds from this key too: a list from a copy of this keychain that went
        # further (a backup restored) must not make ours look old (NO_CHANGE) and never be applied.
        version = (max(held.version, held.acknowledged) if held is not None else 0) + 1
        lst = RevocationList.issue(device, entry.vehicle_id, version, now, tuple(sorted(entries.items())))
        book.store_list(entry.vehicle_id, device.key_id, version, lst.encode(),
                        expect_version=held.version if held is not None else 0)
        held = book.held(entry.vehicle_id, device.key_id)
    book.mark_revoked(entry.vehicle_id, kid)
    assert held is not None
    return ListedRevocation(entry, kid, name, bool(flags & LIST_WITH_SHARES), held, changed)


"""The share book (shares.json) and the share texts: storage rules, version rules, strict parsing."""

from __future__ import annotations

import json
import os
import stat

import pytest

from dkey_link.exit_codes import ExitCode
from key_client.errors import KeychainError
from key_client.keychain import Keychain
from key_client.share_uri import b64url, parse_share, parse_share_request, share_request_uri, share_uri
from key_client.sharebook import SHARES, HeldList, ImportedShare, IssuedShare, PendingRequest, ShareBook
from protocol import KeyPair

VID = bytes.fromhex("0a0b0c0d")
OWNER = bytes.fromhex("01020304")
OTHER = bytes.fromhex("05060708")


def book(tmp_path) -> ShareBook:
    return ShareBook(Keychain.open(tmp_path / "kc").path)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def issued(serial: int, subject: bytes = b"\x11\x22\x33\x44") -> IssuedShare:
    return IssuedShare(VID, serial.to_bytes(8, "big"), subject, "watch", "driver", 1_800_000_000, None, None,
                       1_800_000_000)


def test_an_absent_book_is_empty_and_nothing_is_written_by_reading(tmp_path) -> None:
    b = book(tmp_path)
    assert b.requests() == [] and b.issued() == [] and b.imported(VID) is None and b.lists(VID) == []
    assert not b.path.exists()


def test_every_record_round_trips_through_a_private_file(tmp_path) -> None:
    b = book(tmp_path)
    b.add_request(PendingRequest(b"\x09\x08\x07\x06", "watch", 5))
    b.record_issued(issued(1))
    b.add_imported(ImportedShare(VID, b"\x71cert", False, 7))
    assert b.store_list(VID, OWNER, 1, b"list-1")
    assert mode(b.path) == 0o600
    again = ShareBook(b.path.parent)
    assert again.requests() == [PendingRequest(b"\x09\x08\x07\x06", "watch", 5)]
    assert again.issued(VID) == [issued(1)] and again.issued(OTHER) == []
    assert again.imported(VID) == ImportedShare(VID, b"\x71cert", False, 7)
    assert again.lists(VID) == [HeldList(VID, OWNER, 1, b"list-1", 0)]
    assert not [p for p in b.path.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_serial_is_recorded_once(tmp_path) -> None:
    b = book(tmp_path)
    b.record_issued(issued(1))
    with pytest.raises(KeychainError, match="already recorded"):
        b.record_issued(issued(1))


def test_mark_revoked_marks_every_share_of_that_subject_on_that_vehicle(tmp_path) -> None:
    b = book(tmp_path)
    b.record_issued(issued(1))
    b.record_issued(issued(2))
    b.record_issued(issued(3, subject=b"\x99\x99\x99\x99"))
    assert b.mark_revoked(VID, b"\x11\x22\x33\x44") == 2
    assert [s.revoked for s in b.issued(VID)] == [True, True, False]
    assert b.mark_revoked(VID, b"\x11\x22\x33\x44") == 0  # already marked


def test_imported_share_is_marked_enrolled_once_the_vehicle_says_so(tmp_path) -> None:
    b = book(tmp_path)
    b.add_imported(ImportedShare(VID, b"cert", False, 7))
    b.mark_enrolled(VID)
    assert b.imported(VID) == ImportedShare(VID, b"cert", True, 7)
    b.drop_vehicle(VID)
    assert b.imported(VID) is None


def test_lists_only_move_forward_and_stay_undelivered_until_acknowledged(tmp_path) -> None:
    b = book(tmp_path)
    assert b.store_list(VID, OWNER, 2, b"v2")
    assert not b.store_list(VID, OWNER, 1, b"v1")  # an older list never replaces a newer one
    assert not b.store_list(VID, OWNER, 2, b"other v2")  # nor does another copy of the same version
    assert b.held(VID, OWNER) == HeldList(VID, OWNER, 2, b"v2", 0)
    assert [h.version for h in b.undelivered(VID)] == [2]
    b.acknowledge(VID, OWNER, 2)
    assert b.undelivered(VID) == []
    b.acknowledge(VID, OWNER, 1)  # an older acknowledgement does not move it back
    assert b.held(VID, OWNER).acknowledged == 2  # type: ignore[union-attr]
    assert b.store_list(VID, OWNER, 3, b"v3")
    assert b.held(VID, OWNER) == HeldList(VID, OWNER, 3, b"v3", 2)  # the acknowledgement survives
    assert [h.version for h in b.undelivered(VID)] == [3]


def test_lists_are_kept_per_issuer(tmp_path) -> None:
    b = book(tmp_path)
    assert b.store_list(VID, OWNER, 5, b"a")
    assert b.store_list(VID, OTHER, 1, b"b")  # another owner's list numbers on its own
    assert {h.issuer_id: h.version for h in b.lists(VID)} == {OWNER: 5, OTHER: 1}


def test_expect_version_refuses_a_list_signed_from_a_stale_copy(tmp_path) -> None:
    b = book(tmp_path)
    b.store_list(VID, OWNER, 1, b"v1", expect_version=0)
    with pytest.raises(KeychainError, match="changed meanwhile"):
        b.store_list(VID, OWNER, 2, b"v2", expect_version=0)
    assert b.held(VID, OWNER).version == 1  # type: ignore[union-attr]


def test_a_book_others_can_write_is_refused(tmp_path) -> None:
    b = book(tmp_path)
    b.store_list(VID, OWNER, 1, b"v1")
    os.chmod(b.path, 0o622)
    with pytest.raises(KeychainError, match="chmod 600") as info:
        b.lists(VID)
    assert info.value.exit_code is ExitCode.KEYS
    os.chmod(b.path, 0o600)
    assert b.lists(VID)  # the honest mode reads fine


@pytest.mark.parametrize("damage", [
    b"not json",
    b'{"version": 99}',
    b'{"version": 1, "lists": [{"vehicle_id": "0a0b0c0d"}]}',
    b'{"version": 1, "lists": [{"vehicle_id": "0a0b0c0d", "issuer_id": "01020304", "version": 0, "list": "00",'
    b' "acknowledged": 0}]}',
    b'{"version": 1, "issued": "nope"}',
])
def test_a_damaged_book_is_an_error_and_is_never_reset(tmp_path, damage: bytes) -> None:
    b = book(tmp_path)
    fd = os.open(b.path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, damage)
    os.close(fd)
    with pytest.raises(KeychainError, match="damaged"):
        b.lists(VID)
    with pytest.raises(KeychainError, match="damaged"):
        b.store_list(VID, OWNER, 1, b"v1")  # a write never starts from an empty book over a damaged one
    assert (tmp_path / "kc" / SHARES).read_bytes() == damage


def test_the_file_is_plain_json_with_hex_bytes(tmp_path) -> None:
    b = book(tmp_path)
    b.store_list(VID, OWNER, 1, b"\x91\x04")
    doc = json.loads(b.path.read_text())
    assert doc["version"] == 1 and doc["lists"] == [{"vehicle_id": VID.hex(), "issuer_id": OWNER.hex(),
                                                     "version": 1, "list": "9104", "acknowledged": 0}]


# ---------------------------------------------------------------------- share texts


def test_share_request_round_trips() -> None:
    key = KeyPair.generate().public_bytes
    uri = share_request_uri(key, "Maya's watch & co")
    assert uri.startswith("dkey://share-request?key=") and "=" not in uri.split("key=")[1].split("&")[0]
    assert parse_share_request(uri) == (key, "Maya's watch & co")


@pytest.mark.parametrize("text", [
    "dkey://pair?code=12345678",
    "dkey://share-request?name=x",
    "dkey://share-request?key=%%%",
    "dkey://share-request?key=AAAA",
    "dkey://share-request?key=" + b64url(b"\x04" + b"\x01" * 64),  # not on the curve
    "dkey://share-request?key=" + b64url(KeyPair.generate().public_bytes) + "&name=a&name=b",
    "dkey://share-request?key=" + b64url(KeyPair.generate().public_bytes) + "&extra=1",
    "dkey://share-request?key=" + b64url(KeyPair.generate().public_bytes) + "&name=" + "x" * 65,
    "dkey://share-request?key=" + b64url(KeyPair.generate().public_bytes) + "&name=a%0Ab",
])
def test_a_bad_share_request_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_share_request(text)


def test_share_text_round_trips_with_and_without_a_list() -> None:
    vehicle = KeyPair.generate().public_bytes
    uri = share_uri(b"\x71" * 166, vehicle, "test car")
    got = parse_share(uri)
    assert (got.certificate, got.vehicle_public_key, got.vehicle_name, got.revocation_list) == (
        b"\x71" * 166, vehicle, "test car", None)
    assert parse_share(share_uri(b"c", vehicle, "", b"\x91list")).revocation_list == b"\x91list"


@pytest.mark.parametrize("text", [
    "dkey://share?v=2&c=AA&k=AA",
    "dkey://share?v=1&k=" + b64url(KeyPair.generate().public_bytes),
    "dkey://share?v=1&c=" + b64url(b"\x71" * 257) + "&k=" + b64url(KeyPair.generate().public_bytes),
    "dkey://share?v=1&c=AA&k=" + b64url(b"\x04" * 65),
    "dkey://share?v=1&c=AA&k=" + b64url(KeyPair.generate().public_bytes) + "&l=" + b64url(b"x" * 513),
    "dkey://share?v=1&c=AA&k=" + b64url(KeyPair.generate().public_bytes) + "&z=1",
    "https://share?v=1",
])
def test_a_bad_share_text_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_share(text)

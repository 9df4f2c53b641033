"""Owner command arguments (PROTOCOL.md §5.4): REVOKE_KEY's flags, and the documented defaults of the pagers.

Written against mutants that survived the rest of the suite (docs/MUTANTS.md): a revocation's force flag read as
always false, a flag byte of 2 accepted, or a default page that is not the documented one, all went unnoticed.
"""

from __future__ import annotations

import pytest

from protocol import (
    DecodeError,
    list_keys_args,
    parse_list_keys_args,
    parse_read_audit_args,
    parse_revoke_args,
    read_audit_args,
    revoke_args,
)

KID = bytes.fromhex("0a0b0c0d")


def test_revoke_force_flag_round_trips_both_ways() -> None:
    assert revoke_args(KID) == KID + b"\x00"
    assert parse_revoke_args(revoke_args(KID)) == (KID, False, False)
    assert parse_revoke_args(revoke_args(KID, force=True)) == (KID, True, False)


def test_revoke_with_shares_is_bit_1_and_independent_of_force() -> None:
    assert revoke_args(KID, with_shares=True) == KID + b"\x02"
    assert revoke_args(KID, True, with_shares=True) == KID + b"\x03"
    parsed = parse_revoke_args(KID + b"\x02")
    assert parsed == (KID, False, True) and parsed.with_shares and not parsed.force
    assert parse_revoke_args(KID + b"\x03") == (KID, True, True)


@pytest.mark.parametrize("args", [KID + b"\x04", KID + b"\x80", KID + b"\xff", KID, KID + b"\x00\x00", b""])
def test_revoke_arguments_other_than_id_and_known_flags_are_refused(args: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_revoke_args(args)


def test_pagers_default_to_the_documented_first_page() -> None:
    assert parse_list_keys_args(b"") == (0, 50) == parse_list_keys_args(list_keys_args())
    assert parse_read_audit_args(b"") == (0, 20) == parse_read_audit_args(read_audit_args())
    assert parse_list_keys_args(list_keys_args(0x0102, 7)) == (0x0102, 7)  # big-endian offset
    assert parse_read_audit_args(read_audit_args(0x0102, 7)) == (0x0102, 7)

"""Owner command arguments (PROTOCOL.md §7): REVOKE_KEY's force flag, and the documented defaults of the pagers.

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
    assert parse_revoke_args(revoke_args(KID)) == (KID, False)
    assert parse_revoke_args(revoke_args(KID, force=True)) == (KID, True)


@pytest.mark.parametrize("args", [KID + b"\x02", KID + b"\xff", KID, KID + b"\x00\x00", b""])
def test_revoke_arguments_other_than_id_and_a_0_or_1_flag_are_refused(args: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_revoke_args(args)


def test_pagers_default_to_the_documented_first_page() -> None:
    assert parse_list_keys_args(b"") == (0, 50) == parse_list_keys_args(list_keys_args())
    assert parse_read_audit_args(b"") == (0, 20) == parse_read_audit_args(read_audit_args())
    assert parse_list_keys_args(list_keys_args(0x0102, 7)) == (0x0102, 7)  # big-endian offset
    assert parse_read_audit_args(read_audit_args(0x0102, 7)) == (0x0102, 7)

"""Pin the public API: a change to it must be deliberate (and documented in PROTOCOL.md)."""

import protocol

EXPECTED = {
    "DEFAULT_CHALLENGE_TTL",
    "ACTUATING_COMMANDS", "AuditHead", "AuditRecord", "AuthenticationError", "CODE_DIGITS", "ChallengeBook",
    "ChallengeError",
    "ChallengeReceived", "Command", "CommandFailed", "CommandRequested", "CommandResult", "DState", "DecodeError",
    "DeviceSession", "DoorState", "Event", "FAST_COMMANDS", "FramingError", "KEY_ID_LEN", "KeyInfo", "KeyPair",
    "KeyProtocolError", "LocalProtocolError", "LockState", "MAX_ATT_MTU", "MAX_MESSAGE", "MIN_ATT_MTU", "Message",
    "MsgType", "PUBLIC_KEY_LEN", "Paired", "PairingFailed", "PairingKeyReceived", "PairingRequested", "PakeError",
    "QR_SCHEME", "Reassembler", "Refused", "RetryAfter", "RemoteProtocolError", "ReplayError", "Role", "SECRET_DIGITS",
    "SECURE_COMMANDS", "SIGNATURE_LEN", "SessionOpened", "SessionReady", "Status", "StatusReport", "VERSION",
    "VState", "VehicleError", "VehicleSession", "chunk_count", "chunk_size_for_mtu", "decode", "decode_audit_page",
    "decode_key_page", "decode_public_key", "encode_audit_page", "encode_key_page", "encode_public_key",
    "generate_private_key", "key_id", "list_keys_args", "load_private_key", "pairing_prs", "pairing_uri",
    "parse_code", "parse_list_keys_args", "parse_read_audit_args", "parse_revoke_args", "read_audit_args",
    "revoke_args", "serialize_private_key", "split",
    "PUBLISHED_TEST_KEYS", "is_published_test_key",  # PROTOCOL.md §10.1: what a vehicle refuses to run with or enroll
    "ClockReport", "set_time_args", "parse_set_time_args", "with_time_wanted",  # PROTOCOL.md §5.7: SET_TIME
    "fast_result_data",  # PROTOCOL.md §5.3: the only result data of a fast-path RESULT
    # issue 12: remote key management (§5.3, §5.4), shares and revocation lists (§12)
    "CLEAR_SCHEDULE", "CLEAR_VALID_FROM", "CLEAR_VALID_UNTIL", "LIST_WITH_SHARES", "MAX_CERTIFICATE",
    "MAX_CODE_ATTEMPTS", "MAX_CODE_TTL", "MAX_REVOCATIONS", "MAX_REVOCATION_LIST", "MAX_SCHEDULE_LEN",
    "MAX_SHARE_NAME", "MAX_SHARE_SCHEDULE", "REVOKE_FORCE", "REVOKE_WITH_SHARES", "IssuedCode", "KeyEdit",
    "KeyState", "PairingTerms", "RevocationList", "RevokeArgs", "Schedule", "ShareCertificate", "Via",
    "parse_schedule",
    "ShareOffered", "RevocationsOffered", "ShareAnswered", "RevocationsAnswered", "StateChanged",  # §12.3, §9.6
    # issue 13: privacy on air (§13)
    "AD_SECRET_LEN", "TOKEN_LEN", "AdSecret", "make_token", "resolve_token",
}


def test_public_api_is_pinned() -> None:
    assert set(protocol.__all__) == EXPECTED
    for name in protocol.__all__:
        assert hasattr(protocol, name)


def test_protocol_imports_no_io_modules() -> None:
    import sys

    import protocol as p  # noqa: F401

    for mod in ("asyncio", "bleak", "bless", "gpiozero", "socket", "sqlite3"):
        loaded = [m for m in sys.modules if m.split(".")[0] == mod]
        if loaded:
            # Something else in the test run may have imported them; check our modules' own imports.
            import pathlib

            for src in pathlib.Path(p.__file__).parent.glob("*.py"):
                text = src.read_text()
                assert f"import {mod}" not in text and f"from {mod}" not in text, (src, mod)

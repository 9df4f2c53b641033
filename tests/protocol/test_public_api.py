"""Pin the public API: a change to it must be deliberate (and documented in PROTOCOL.md)."""

import protocol

EXPECTED = {
    "AuditRecord", "AuthenticationError", "CODE_DIGITS", "MAX_ATT_MTU", "MIN_ATT_MTU", "QR_SCHEME", "SECRET_DIGITS",
    "pairing_uri", "parse_code", "ChallengeBook", "ChallengeError", "ChallengeReceived", "Cmd",
    "CommandFailed", "CommandRequested", "CommandResult", "DState", "DecodeError", "DeviceSession", "DoorPosition",
    "Event", "FAST_COMMANDS", "FramingError", "KeyInfo", "KeyPair", "KeyProtocolError", "KeyRole",
    "LocalProtocolError", "LockPosition", "MAX_MESSAGE", "Message", "MsgType", "PakeError", "Paired",
    "PairingFailed", "PairingKeyReceived", "PairingRequested", "Reassembler", "Refused", "RemoteProtocolError",
    "ReplayError", "SessionOpened", "SessionReady", "Status", "StatusReport", "VERSION", "VState", "VehicleError",
    "VehicleSession", "chunk_count", "chunk_size_for_mtu", "decode", "decode_audit_page", "decode_key_page",
    "decode_public_key", "encode_audit_page", "encode_key_page", "encode_public_key", "generate_private_key",
    "key_id", "list_keys_args", "load_private_key", "pairing_prs", "parse_list_keys_args", "parse_read_audit_args",
    "parse_revoke_args", "read_audit_args", "revoke_args", "serialize_private_key", "split",
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

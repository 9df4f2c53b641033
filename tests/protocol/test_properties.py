"""Hypothesis: the decoders and the reassembler raise only their typed errors; the tables stay closed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

import protocol
from protocol import (
    DecodeError,
    FramingError,
    IssuedCode,
    KeyEdit,
    KeyProtocolError,
    PairingTerms,
    Reassembler,
    RevocationList,
    Role,
    ShareCertificate,
    decode,
    split,
)
from protocol._codec import MAX_MESSAGE, MESSAGE_TYPES
from protocol._payloads import AuditRecord, KeyInfo, StatusReport, decode_audit_page, decode_key_page
from protocol._state import (
    DEVICE_TABLE,
    VEHICLE_TABLE,
    DeviceStateMachine,
    DInput,
    DState,
    VehicleStateMachine,
    VInput,
    VState,
)

from .helpers import DEVICE_SCALAR, OTHER_SCALAR, fixed_key, make_pair


@given(st.binary(max_size=300))
def test_decoder_raises_only_decode_error(data: bytes) -> None:
    try:
        msg = decode(data)
    except DecodeError:
        return
    assert msg.encode() == data  # whatever decodes is canonical


@given(st.sampled_from(sorted(MESSAGE_TYPES)), st.binary(max_size=200))
def test_decoder_with_valid_header_raises_only_decode_error(msg_type: int, body: bytes) -> None:
    try:
        decode(bytes((1, msg_type)) + body)
    except DecodeError:
        pass


@given(st.binary(max_size=300))
def test_payload_decoders_raise_only_decode_error(data: bytes) -> None:
    for parse in (StatusReport.decode, KeyInfo.decode, AuditRecord.decode, decode_key_page, decode_audit_page):
        try:
            parse(data)
        except DecodeError:
            pass


@given(st.lists(st.binary(max_size=40), max_size=30), st.lists(st.floats(0, 3), max_size=30))
def test_reassembler_raises_only_framing_error(chunks: list[bytes], gaps: list[float]) -> None:
    r = Reassembler(max_message=MAX_MESSAGE, timeout=5.0)
    now = 0.0
    for i, ch in enumerate(chunks):
        now += gaps[i] if i < len(gaps) else 0.1
        try:
            out = r.feed(ch, now)
        except FramingError:
            continue
        assert out is None or 2 <= len(out) <= MAX_MESSAGE


@given(st.binary(min_size=2, max_size=MAX_MESSAGE), st.integers(20, 514), st.lists(st.binary(max_size=30), max_size=4))
def test_split_then_reassemble_round_trips_even_after_garbage(message: bytes, size: int, junk: list[bytes]) -> None:
    r = Reassembler()
    for j in junk:
        try:
            r.feed(j, 0.0)
        except FramingError:
            pass
    chunks = split(message, size)
    assert all(len(c) <= size for c in chunks)
    out = None
    for ch in chunks:
        out = r.feed(ch, 0.0)
    assert out == message


@given(st.lists(st.sampled_from(list(VInput)), max_size=25))
def test_vehicle_table_never_reaches_an_undefined_state(inputs: list[VInput]) -> None:
    sm = VehicleStateMachine()
    for ev in inputs:
        before = sm.state
        try:
            sm.advance(ev)
        except KeyProtocolError:
            assert (before, ev) not in VEHICLE_TABLE and sm.state is VState.ERROR
            return
        assert sm.state in VState and (before, ev) in VEHICLE_TABLE


@given(st.lists(st.sampled_from(list(DInput)), max_size=25))
def test_device_table_never_reaches_an_undefined_state(inputs: list[DInput]) -> None:
    sm = DeviceStateMachine()
    for ev in inputs:
        before = sm.state
        try:
            sm.advance(ev)
        except KeyProtocolError:
            assert (before, ev) not in DEVICE_TABLE and sm.state is DState.ERROR
            return
        assert (before, ev) in DEVICE_TABLE


def test_terminal_states_have_no_way_out() -> None:
    cases = ((VEHICLE_TABLE, (VState.CLOSED, VState.ERROR)), (DEVICE_TABLE, (DState.CLOSED, DState.ERROR)))
    for table, terminal in cases:
        assert not [k for k in table if k[0] in terminal]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=40), max_size=12))
def test_vehicle_session_survives_arbitrary_writes(chunks: list[bytes]) -> None:
    p = make_pair()
    p.subscribe()
    for ch in chunks:
        try:
            p.vehicle.receive_data(ch, p.now)
            while p.vehicle.next_event(p.now) is not None:
                pass
        except KeyProtocolError:
            if p.vehicle.state in (VState.CLOSED, VState.ERROR):
                return


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=40), max_size=12))
def test_device_session_survives_arbitrary_notifications(chunks: list[bytes]) -> None:
    p = make_pair()
    p.subscribe()
    p.device.send_command(protocol.Command.UNLOCK)
    for ch in chunks:
        try:
            p.device.receive_data(ch, p.now)
            while p.device.next_event(p.now) is not None:
                pass
        except KeyProtocolError:
            if p.device.state in (DState.CLOSED, DState.ERROR):
                return


# ------------------------------------------------------------------ issue 12's records (PROTOCOL.md §5.4, §12)

_RECORDS = (ShareCertificate, RevocationList, PairingTerms, KeyEdit, IssuedCode)
_OWNER = fixed_key(DEVICE_SCALAR)
_HONEST = (
    ShareCertificate.issue(_OWNER, b"\x88\x50\xa5\xc9", fixed_key(OTHER_SCALAR).public_bytes, Role.GUEST, "watch",
                           1_000, 2_000, "Mon-Fri 08:00-18:00", serial=bytes(8)).encode(),
    RevocationList.issue(_OWNER, b"\x88\x50\xa5\xc9", 3, 5, [(b"\x00\x00\x00\x01", 1), (b"\x00\x00\x00\x02", 0)])
    .encode(),
    PairingTerms(Role.GUEST, "guest", 600, 5, 10, 20, "weekends 10:00-12:00").encode(),
    KeyEdit(b"abcd", Role.DRIVER, "n", 1, 2, "daily 06:00-23:00").encode(),
    IssuedCode("42123456", 99).encode(),
)


@given(st.binary(max_size=300))
def test_share_and_key_management_decoders_raise_only_decode_error(data: bytes) -> None:
    for record in _RECORDS:
        try:
            decoded = record.decode(data)
        except DecodeError:
            continue
        assert decoded.encode() == data  # whatever decodes is canonical


@given(st.sampled_from(range(len(_RECORDS))), st.integers(0, 299), st.integers(0, 255))
def test_one_changed_byte_gives_decode_error_or_another_canonical_record(which: int, pos: int, value: int) -> None:
    honest = bytearray(_HONEST[which])
    honest[pos % len(honest)] = value
    try:
        decoded = _RECORDS[which].decode(bytes(honest))
    except DecodeError:
        return
    assert decoded.encode() == bytes(honest)

"""The digital-key protocol as pure sans-IO code: messages, crypto, framing and both sides' state machines.

Nothing in this package does I/O, reads a clock or sleeps: callers pass bytes in, take bytes out, and
pass the current monotonic time where expiry matters. See docs/PROTOCOL.md for the wire specification.
"""

from ._challenge import ChallengeBook
from ._codec import MAX_MESSAGE, VERSION, Message, MsgType, decode
from ._crypto import pairing_prs
from ._device import DeviceSession
from ._errors import (
    AuthenticationError,
    ChallengeError,
    CommandFailed,
    DecodeError,
    FramingError,
    KeyProtocolError,
    LocalProtocolError,
    RemoteProtocolError,
    ReplayError,
    Status,
)
from ._events import (
    FAST_COMMANDS,
    ChallengeReceived,
    Cmd,
    CommandRequested,
    CommandResult,
    Event,
    KeyRole,
    Paired,
    PairingFailed,
    PairingKeyReceived,
    PairingRequested,
    Refused,
    SessionOpened,
    SessionReady,
    VehicleError,
)
from ._framing import Reassembler, chunk_count, chunk_size_for_mtu, split
from ._keys import (
    KeyPair,
    decode_public_key,
    encode_public_key,
    generate_private_key,
    key_id,
    load_private_key,
    serialize_private_key,
)
from ._pake import PakeError
from ._state import DState, VState
from ._vehicle import VehicleSession

__all__ = [
    "FAST_COMMANDS",
    "MAX_MESSAGE",
    "VERSION",
    "AuthenticationError",
    "ChallengeBook",
    "ChallengeError",
    "ChallengeReceived",
    "Cmd",
    "CommandFailed",
    "CommandRequested",
    "CommandResult",
    "DState",
    "DecodeError",
    "DeviceSession",
    "Event",
    "FramingError",
    "KeyPair",
    "KeyProtocolError",
    "KeyRole",
    "LocalProtocolError",
    "Message",
    "MsgType",
    "PakeError",
    "Paired",
    "PairingFailed",
    "PairingKeyReceived",
    "PairingRequested",
    "Reassembler",
    "Refused",
    "RemoteProtocolError",
    "ReplayError",
    "SessionOpened",
    "SessionReady",
    "Status",
    "VState",
    "VehicleError",
    "VehicleSession",
    "chunk_count",
    "chunk_size_for_mtu",
    "decode",
    "decode_public_key",
    "encode_public_key",
    "generate_private_key",
    "key_id",
    "load_private_key",
    "pairing_prs",
    "serialize_private_key",
    "split",
]

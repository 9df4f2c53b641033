"""GATT framing: split a message into chunks that fit one ATT write or notification, and reassemble them.

Chunk layout (PROTOCOL.md §2): `header(1) || [length(2), first chunk only] || payload`. The header's top bit
marks the first chunk of a message; its low 7 bits count chunks modulo 128, starting at 0. GATT keeps
each write/notification whole, so a garbage chunk spoils at most the message it belongs to: the next
first-chunk starts clean.
"""

from __future__ import annotations

from ._codec import MAX_MESSAGE
from ._errors import FramingError

START = 0x80
SEQ_MASK = 0x7F
MIN_ATT_MTU = 23
MAX_ATT_MTU = 517
DEFAULT_PARTIAL_TIMEOUT = 5.0  # seconds a half-received message may wait for its next chunk


def chunk_size_for_mtu(att_mtu: int) -> int:
    """Largest chunk for this ATT MTU: an ATT write or notification carries MTU - 3 bytes of value."""
    if not MIN_ATT_MTU <= att_mtu <= MAX_ATT_MTU:
        raise ValueError(f"ATT MTU {att_mtu} outside {MIN_ATT_MTU}..{MAX_ATT_MTU}")
    return att_mtu - 3


def split(message: bytes, chunk_size: int) -> list[bytes]:
    """The chunks of one message, each at most `chunk_size` (>= 20) bytes long."""
    if chunk_size < MIN_ATT_MTU - 3:
        raise ValueError(f"chunk size {chunk_size} is below the 20 bytes every ATT MTU allows")
    if not 2 <= len(message) <= MAX_MESSAGE:
        raise ValueError(f"message length {len(message)} outside 2..{MAX_MESSAGE}")
    first_room = chunk_size - 3
    chunks = [bytes((START,)) + len(message).to_bytes(2, "big") + message[:first_room]]
    pos, seq = first_room, 1
    while pos < len(message):
        chunks.append(bytes((seq & SEQ_MASK,)) + message[pos : pos + chunk_size - 1])
        pos += chunk_size - 1
        seq += 1
    return chunks


def chunk_count(message_len: int, chunk_size: int) -> int:
    """How many chunks `split` makes for a message of this length."""
    first_room = chunk_size - 3
    if message_len <= first_room:
        return 1
    return 1 + -(-(message_len - first_room) // (chunk_size - 1))


class Reassembler:
    """Turns chunks back into messages; any bad chunk drops the partial message and raises FramingError."""

    def __init__(self, max_message: int = MAX_MESSAGE, timeout: float = DEFAULT_PARTIAL_TIMEOUT) -> None:
        self.max_message = max_message
        self.timeout = timeout
        self._buf = bytearray()
        self._expected = 0  # total length of the message being assembled; 0 = none in progress
        self._next_seq = 0
        self._last_chunk_at = 0.0
        self.largest_chunk = 0  # the biggest chunk seen: the peer's MTU - 3 is at least this
        self.discarded = 0  # partial messages abandoned by a newer first chunk

    @property
    def in_progress(self) -> bool:
        """True while part of a message has been received."""
        return self._expected != 0

    def reset(self) -> None:
        """Forget any partial message."""
        self._buf.clear()
        self._expected = 0

    def expire(self, now: float) -> bool:
        """Drop a partial message older than the timeout; True if one was dropped."""
        if self._expected and now - self._last_chunk_at > self.timeout:
            self.reset()
            return True
        return False

    def feed(self, chunk: bytes, now: float) -> bytes | None:
        """Take one chunk; return a complete message, None if more chunks are needed, or raise FramingError."""
        expired = self.expire(now)
        if not chunk:
            raise FramingError("empty chunk")
        self.largest_chunk = max(self.largest_chunk, len(chunk))
        header = chunk[0]
        if header & START:
            if header & SEQ_MASK:
                self.reset()
                raise FramingError("first chunk with a non-zero sequence number")
            abandoned = self.in_progress
            self.reset()
            if len(chunk) < 3:
                raise FramingError("first chunk too short for its length field")
            total = int.from_bytes(chunk[1:3], "big")
            if not 2 <= total <= self.max_message:
                raise FramingError(f"announced message length {total} outside 2..{self.max_message}")
            self._expected, self._next_seq = total, 1
            payload = chunk[3:]
            if abandoned:
                # A newer message wins: the sender gave up on the old one (or it was garbage). Count it.
                self.discarded += 1
        else:
            if not self.in_progress:
                raise FramingError("message expired before this chunk" if expired else "chunk without a start")
            if header != self._next_seq:
                self.reset()
                raise FramingError(f"chunk sequence {header}, expected {self._next_seq}")
            self._next_seq = (self._next_seq + 1) & SEQ_MASK
            payload = chunk[1:]
        return self._take(payload, now)

    def _take(self, payload: bytes, now: float) -> bytes | None:
        self._buf += payload
        self._last_chunk_at = now
        if len(self._buf) > self._expected:
            self.reset()
            raise FramingError("chunk runs past the announced message length")
        if len(self._buf) < self._expected:
            return None
        message = bytes(self._buf)
        self.reset()
        return message

"""The one TLV field codec under messages and payload records (PROTOCOL.md §3.1).

A field is `tag (u8) || length (1 or 2 bytes) || value`. A length `n < 0x80` is one byte; `0x80 <= n <= 0x7fff`
is `0x80 | (n >> 8), n & 0xff`; the two-byte form of a length under 0x80 is non-minimal and refused.
`encode_fields` / `decode_fields` add the record rules: strictly ascending tags (so each at most once), every
tag known, every length within its bounds, nothing after the last field.

Which fields are required, and whether an empty value is omitted or sent, is the caller's rule, not this
module's: a message omits an empty optional field and refuses one present with length 0 (it passes a lower
bound of 1, §3.1), while a payload record sends an empty name or detail as a present, 0-length field (§5.4).
Pages repeat one record tag, so they read fields with `iter_fields`, which checks lengths but not tag order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from ._errors import DecodeError

MAX_LEN = 0x7FFF  # the largest length the two-byte form can say
_TWO_BYTES = 0x80  # lengths from here up take two bytes; the first byte's top bit says so


def encode_length(n: int) -> bytes:
    """The minimal 1- or 2-byte length of an `n`-byte value; ValueError outside 0..MAX_LEN."""
    if not 0 <= n <= MAX_LEN:
        raise ValueError(f"a TLV value is 0..{MAX_LEN} bytes, not {n}")
    return bytes((n,)) if n < _TWO_BYTES else bytes((_TWO_BYTES | (n >> 8), n & 0xFF))


def encode_field(tag: int, value: bytes) -> bytes:
    """One field: `tag || length || value`."""
    return bytes((tag,)) + encode_length(len(value)) + value


def encode_fields(fields: Iterable[tuple[int, bytes]]) -> bytes:
    """TLV-encode (tag, value) pairs; ValueError unless tags strictly ascend and every value fits a length."""
    out = bytearray()
    last = -1
    for tag, value in fields:
        if tag <= last:
            raise ValueError(f"field 0x{tag:02x} out of order or repeated: tags must ascend")
        out += encode_field(tag, value)
        last = tag
    return bytes(out)


def iter_fields(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Yield (tag, value) for each field of `data` in order; DecodeError for a bad or truncated length."""
    pos = 0
    while pos < len(data):
        tag = data[pos]
        n, pos = _read_length(data, pos + 1)
        if pos + n > len(data):
            raise DecodeError(f"field 0x{tag:02x} runs past the end")
        yield tag, bytes(data[pos : pos + n])
        pos += n


def decode_fields(data: bytes, bounds: Mapping[int, tuple[int, int]]) -> dict[int, bytes]:
    """Strictly decode a field record; `bounds` maps each allowed tag to its (min, max) length; else DecodeError."""
    out: dict[int, bytes] = {}
    last = -1
    for tag, value in iter_fields(data):
        if tag <= last:
            raise DecodeError(f"field 0x{tag:02x} out of order or repeated")
        limits = bounds.get(tag)
        if limits is None:
            raise DecodeError(f"unknown field 0x{tag:02x}")
        lo, hi = limits
        if not lo <= len(value) <= hi:
            raise DecodeError(f"field 0x{tag:02x} has length {len(value)}, not {lo}..{hi}")
        out[tag] = value
        last = tag
    return out


def _read_length(data: bytes, pos: int) -> tuple[int, int]:
    """The length starting at `pos` and the position after it; DecodeError if missing, truncated or non-minimal."""
    if pos >= len(data):
        raise DecodeError("field length missing")
    first = data[pos]
    if first < _TWO_BYTES:
        return first, pos + 1
    if pos + 1 >= len(data):
        raise DecodeError("two-byte field length truncated")
    n = ((first & 0x7F) << 8) | data[pos + 1]
    if n < _TWO_BYTES:
        raise DecodeError("non-minimal field length")
    return n, pos + 2

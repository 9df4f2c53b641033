"""The text forms a share travels in (docs/CLIENT.md, "Shares"): what a new device shows, what the owner hands back.

    dkey://share-request?key=<base64url of the 65-byte public key>&name=<name>
    dkey://share?v=1&c=<base64url certificate>&k=<base64url vehicle public key>&n=<vehicle name>[&l=<base64url list>]
                [&a=<base64url of the advertising secret: generation (u32) || secret (16 bytes)>]

base64url is RFC 4648 §5 without `=` padding (padding is accepted on input); names are percent-encoded UTF-8.
Parsing is strict: every parameter once, no unknown parameter, sizes within the protocol's bounds, so a pasted
text that is damaged fails here with a plain message rather than later at the vehicle.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, quote, urlsplit

from protocol import PUBLIC_KEY_LEN, QR_SCHEME, AdSecret, decode_public_key

__all__ = ["MAX_CERTIFICATE", "MAX_LIST", "ShareText", "b64url", "parse_share", "parse_share_request",
           "share_request_uri", "share_uri"]

MAX_CERTIFICATE: Final = 256  # PROTOCOL.md §12: a certificate is at most 256 bytes (the CERTIFICATE field's bound)
MAX_LIST: Final = 512  # the REVOCATION_LIST field's bound
MAX_NAME: Final = 64  # characters of a name in a URI: more than any certificate (32 bytes) or advertised name holds
_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")


def b64url(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(value: str, what: str) -> bytes:
    if not _B64URL.fullmatch(value):
        raise ValueError(f"the {what} is not base64url text")
    try:
        return base64.urlsafe_b64decode(value.rstrip("=") + "=" * (-len(value.rstrip("=")) % 4))
    except (binascii.Error, ValueError):
        raise ValueError(f"the {what} is not base64url text") from None


def _params(text: str, kind: str, allowed: set[str]) -> dict[str, str]:
    parts = urlsplit(text.strip())
    if parts.scheme != QR_SCHEME or parts.netloc != kind or parts.path not in ("", "/") or parts.fragment:
        raise ValueError(f"not a {QR_SCHEME}://{kind}?... text")
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query),
                          errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"the {QR_SCHEME}://{kind} text is damaged (its parameters do not parse)") from None
    out: dict[str, str] = {}
    for key, value in pairs:
        if key not in allowed:
            raise ValueError(f"the {QR_SCHEME}://{kind} text has an unknown parameter {key!r}")
        if key in out:
            raise ValueError(f"the {QR_SCHEME}://{kind} text has {key!r} twice")
        out[key] = value
    return out


def _name(value: str, what: str) -> str:
    if len(value) > MAX_NAME or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"the {what} is longer than {MAX_NAME} characters or holds control characters")
    return value


def share_request_uri(public_key: bytes, name: str) -> str:
    """What `request-share` shows: this device's public key and the name it suggests."""
    return f"{QR_SCHEME}://share-request?key={b64url(public_key)}&name={quote(name, safe='')}"


def parse_share_request(text: str) -> tuple[bytes, str]:
    """(the 65-byte public key, the suggested name) from a share request; ValueError if it is not a valid one."""
    params = _params(text, "share-request", {"key", "name"})
    if "key" not in params:
        raise ValueError("the share request has no key")
    key = _unb64(params["key"], "share request's key")
    if len(key) != PUBLIC_KEY_LEN:
        raise ValueError(f"the share request's key is {len(key)} bytes, not a {PUBLIC_KEY_LEN}-byte P-256 key")
    try:
        decode_public_key(key)
    except ValueError:
        raise ValueError("the share request's key is not a point on P-256") from None
    return key, _name(params.get("name", ""), "share request's name")


@dataclass(frozen=True, slots=True)
class ShareText:
    """The parts of a dkey://share text (nothing in it is checked against a signature yet)."""

    certificate: bytes
    vehicle_public_key: bytes
    vehicle_name: str
    revocation_list: bytes | None
    ad_secret: AdSecret | None = None  # lets the new device recognise the car on air (PROTOCOL.md §13)


def share_uri(certificate: bytes, vehicle_public_key: bytes, vehicle_name: str,
              revocation_list: bytes | None = None, ad_secret: AdSecret | None = None) -> str:
    """What `share` prints: the certificate, the vehicle key to pin, its name, the issuer's newest list, and the
    vehicle's advertising secret as the owner's device holds it."""
    uri = (f"{QR_SCHEME}://share?v=1&c={b64url(certificate)}&k={b64url(vehicle_public_key)}"
           f"&n={quote(vehicle_name, safe='')}")
    uri += f"&l={b64url(revocation_list)}" if revocation_list else ""
    return uri + (f"&a={b64url(ad_secret.pack())}" if ad_secret is not None else "")


def parse_share(text: str) -> ShareText:
    """The parts of a dkey://share text; ValueError if it is not a well-formed one."""
    params = _params(text, "share", {"v", "c", "k", "n", "l", "a"})
    if params.get("v") != "1":
        raise ValueError("the share text is of an unknown version (this key-client reads v=1)")
    for need in ("c", "k"):
        if need not in params:
            raise ValueError(f"the share text has no {'certificate' if need == 'c' else 'vehicle key'}")
    cert = _unb64(params["c"], "share's certificate")
    if not 1 <= len(cert) <= MAX_CERTIFICATE:
        raise ValueError(f"the share's certificate is {len(cert)} bytes (1 to {MAX_CERTIFICATE} allowed)")
    key = _unb64(params["k"], "share's vehicle key")
    if len(key) != PUBLIC_KEY_LEN:
        raise ValueError(f"the share's vehicle key is {len(key)} bytes, not a {PUBLIC_KEY_LEN}-byte P-256 key")
    try:
        decode_public_key(key)
    except ValueError:
        raise ValueError("the share's vehicle key is not a point on P-256") from None
    lst: bytes | None = None
    if "l" in params:
        lst = _unb64(params["l"], "share's revocation list")
        if not 1 <= len(lst) <= MAX_LIST:
            raise ValueError(f"the share's revocation list is {len(lst)} bytes (1 to {MAX_LIST} allowed)")
    ad: AdSecret | None = None
    if "a" in params:
        try:
            ad = AdSecret.unpack(_unb64(params["a"], "share's advertising secret"))
        except ValueError as exc:
            raise ValueError(f"the share's advertising secret is damaged: {exc}") from None
    return ShareText(cert, key, _name(params.get("n", ""), "share's vehicle name"), lst, ad)

"""The pairing code's text forms: 8 digits (the first two name the slot) and the dkey://pair QR payload."""

from __future__ import annotations

from urllib.parse import parse_qs, quote, urlparse

CODE_DIGITS = 8
SECRET_DIGITS = 6  # 10^6 codes per slot, and the slot dies after a few wrong tries
QR_SCHEME = "dkey"


def pairing_uri(code: str, vehicle_id: bytes, name: str) -> str:
    """The QR payload for a code: dkey://pair?code=...&vehicle=...&name=..."""
    return f"{QR_SCHEME}://pair?code={code}&vehicle={vehicle_id.hex()}&name={quote(name)}"


def parse_code(text: str) -> tuple[str, bytes | None]:
    """Accept '4212 3456', '4212-3456' or a dkey://pair QR payload; return (code, vehicle id if given)."""
    text = text.strip()
    vehicle: bytes | None = None
    if text.startswith(f"{QR_SCHEME}://"):
        query = parse_qs(urlparse(text).query)
        text = query.get("code", [""])[0]
        if "vehicle" in query:
            try:
                vehicle = bytes.fromhex(query["vehicle"][0])
            except ValueError:
                raise ValueError("the QR code's vehicle id is not hex") from None
    code = "".join(ch for ch in text if ch not in " -")
    if len(code) != CODE_DIGITS or not code.isdigit():
        raise ValueError(f"a pairing code is {CODE_DIGITS} digits, like 4212 3456")
    return code, vehicle

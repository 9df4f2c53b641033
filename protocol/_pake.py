"""CPace over NIST P-256 with x-coordinate-only messages, for pairing with a short one-time code.

Pure sans-IO code: no I/O, no clocks, randomness only through the injected ``rng``.

What this follows
-----------------
* CPace: draft-irtf-cfrg-cpace-21 (github.com/cfrg/draft-irtf-cfrg-cpace,
  ``draft-irtf-cfrg-cpace-21/draft-irtf-cfrg-cpace.txt``):

  - section 6.3 / appendix A.1: ``prepend_len`` (LEB128 length prefix) and ``lv_cat``;
  - section 8.1 / appendix A.2: ``generator_string(DSI, PRS, CI, sid, s_in_bytes) =
    lv_cat(DSI, PRS, zero_bytes(len_zpad), CI, sid)`` with
    ``len_zpad = max(0, s_in_bytes - 1 - len(prepend_len(PRS)) - len(prepend_len(DSI)))``,
    ``s_in_bytes = 64`` for SHA-256;
  - section 8.4.3: short-Weierstrass group object, ``G.DST = G.DSI || b"_DST"``,
    ``calculate_generator = encode_to_curve(generator_string(...), G.DST)``, ``scalar_mult`` may return
    either ``s*X`` or ``(-s)*X`` (x-only implementations are explicitly allowed), ``scalar_mult_vfy``
    returns the big-endian x-coordinate of ``s*X`` or aborts;
  - section 7.2 / appendix A.3.4: ``ISK = H.hash(lv_cat(G.DSI || b"_ISK", sid, K) ||
    transcript_ir(Ya, ADa, Yb, ADb))`` with ``transcript_ir = lv_cat(Ya, ADa) || lv_cat(Yb, ADb)``.

  The draft's encoding helpers are checked in the tests against its appendix A and B.5 vectors.

* Hash to curve: RFC 9380 suite ``P256_XMD:SHA-256_SSWU_RO_`` (sections 3, 5.2, 5.3.1, 5.3.3,
  6.6.2, 8.2), checked against the RFC's appendix J.1.1 and K.1 vectors.

Deliberate differences from the draft's ``CPACE-P256_XMD:SHA-256_SSWU_NU_-SHA256`` suite
----------------------------------------------------------------------------------------
1. The generator uses the random-oracle map (``hash_to_curve``, ``_RO_``) instead of the
   non-uniform ``encode_to_curve``; accordingly ``DSI = b"CPaceP256_XMD:SHA-256_SSWU_RO_"`` and
   ``DST = DSI || b"_DST"``.
2. ``Ya``/``Yb`` on the wire (and in the transcript) are the 32-byte big-endian x-coordinate of
   ``y*G`` instead of the 65-byte uncompressed SEC1 point.  A receiver lifts ``X`` to the point
   ``0x02 || X``, which is ``+-(y_peer*G)``; since ``x(y*P) == x(y*(-P))``, ``K`` is the same either way
   (the sign freedom the draft grants ``scalar_mult`` in section 8.4.3).
3. All-zero ``X`` is rejected even though ``x = 0`` is a valid P-256 abscissa (``b`` is a square
   mod p): it is what a careless encoder emits for the point at infinity, and an honest share
   hits it with probability ~2^-256.  Likewise an all-zero ``K`` is rejected.

Every scalar multiplication with the secret scalar is OpenSSL ECDH through ``cryptography``;
pyca/cryptography has no point addition, so the generator (two SSWU points added) is computed with
Python integers here.  Note that the generator is a function of the PRS, so that Python arithmetic
does see password-dependent values; Python integers are not constant-time.

Scalar sampling: ``y = (int(rng(48)) mod (n - 1)) + 1`` -- 48 random bytes (384 bits, big-endian),
reduced, so ``y`` is in ``[1, n-1]`` at statistical distance about 2^-128 from uniform (the
"extra random bits" method of FIPS 186-4 B.4.1, with 128 rather than 64 extra bits).  The draft
(8.4.3) requires sampling indistinguishable from uniform on ``[1, n-1]`` and recommends rejection
sampling; the reduction meets the requirement, makes exactly one ``rng(48)`` call per side (simple
test vectors), and is easy to reproduce in Kotlin/Swift. It is ``_keys.random_scalar``, which the
session's ephemeral ECDH keys use too.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import ec

from ._keys import CURVE as _CURVE
from ._keys import random_scalar

__all__ = ["CPace", "PakeError", "expand_message_xmd", "hash_to_curve_p256"]

# --- NIST P-256 (SEC 2 2.4.2 / FIPS 186-4 D.1.2.3) -----------------------------------------------
# The group order n and the curve object are _keys.ORDER and _keys.CURVE.
_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
_A = _P - 3
_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B

# --- RFC 9380 section 8.2, P256_XMD:SHA-256_SSWU_RO_ ------------------------------------------------
_Z = _P - 10  # Z = -10
_L = 48  # ceil((ceil(log2(p)) + k) / 8), k = 128
_SQRT_EXP = (_P + 1) // 4  # p = 3 (mod 4)
_LEGENDRE_EXP = (_P - 1) // 2
_MINUS_B_OVER_A = (_P - _B) * pow(_A, -1, _P) % _P
_B_OVER_ZA = _B * pow(_Z * _A, -1, _P) % _P
_SHA256_BLOCK = 64  # s_in_bytes
_SHA256_OUT = 32  # b_in_bytes

# --- CPace parameters -----------------------------------------------------------------------------
DSI = b"CPaceP256_XMD:SHA-256_SSWU_RO_"
DST = DSI + b"_DST"
_FIELD_BYTES = 32


class PakeError(ValueError):
    """The peer's PAKE message is not a valid group element."""


# --- RFC 9380 ------------------------------------------------------------------------------------


def expand_message_xmd(msg: bytes, dst: bytes, len_in_bytes: int) -> bytes:
    """RFC 9380 section 5.3.1 with SHA-256; a DST over 255 bytes is hashed first (section 5.3.3)."""
    if len(dst) > 255:
        dst = hashlib.sha256(b"H2C-OVERSIZE-DST-" + dst).digest()
    ell = -(-len_in_bytes // _SHA256_OUT)
    if len_in_bytes < 0 or len_in_bytes > 65535 or ell > 255:
        raise ValueError(f"expand_message_xmd: len_in_bytes {len_in_bytes} out of range")
    dst_prime = dst + bytes([len(dst)])
    msg_prime = bytes(_SHA256_BLOCK) + msg + len_in_bytes.to_bytes(2, "big") + b"\x00" + dst_prime
    b_0 = hashlib.sha256(msg_prime).digest()
    b_i = hashlib.sha256(b_0 + b"\x01" + dst_prime).digest()
    out = bytearray(b_i)
    for i in range(2, ell + 1):
        mixed = bytes(x ^ y for x, y in zip(b_0, b_i, strict=True))
        b_i = hashlib.sha256(mixed + bytes([i]) + dst_prime).digest()
        out += b_i
    return bytes(out[:len_in_bytes])


def _hash_to_field(msg: bytes, dst: bytes, count: int) -> list[int]:
    """RFC 9380 section 5.2 for F_p (m = 1, L = 48)."""
    uniform = expand_message_xmd(msg, dst, count * _L)
    return [int.from_bytes(uniform[i * _L : (i + 1) * _L], "big") % _P for i in range(count)]


def _is_square(x: int) -> bool:
    return x == 0 or pow(x, _LEGENDRE_EXP, _P) == 1


def _map_to_curve_sswu(u: int) -> tuple[int, int]:
    """RFC 9380 section 6.6.2, simplified SWU for P-256 (A != 0, B != 0), Z = -10."""
    u2 = u * u % _P
    tv1 = (_Z * _Z % _P * u2 % _P * u2 + _Z * u2) % _P
    if tv1 == 0:  # inv0(0) = 0 -> x1 = B / (Z * A)
        x1 = _B_OVER_ZA
    else:
        x1 = _MINUS_B_OVER_A * (1 + pow(tv1, -1, _P)) % _P
    gx1 = (x1 * x1 % _P * x1 + _A * x1 + _B) % _P
    x2 = _Z * u2 % _P * x1 % _P
    gx2 = (x2 * x2 % _P * x2 + _A * x2 + _B) % _P
    if _is_square(gx1):
        x, y = x1, pow(gx1, _SQRT_EXP, _P)
    else:
        x, y = x2, pow(gx2, _SQRT_EXP, _P)
    if u % 2 != y % 2:  # sgn0 for m = 1 is parity
        y = (_P - y) % _P
    return x, y


def _point_add(p1: tuple[int, int] | None, p2: tuple[int, int] | None) -> tuple[int, int] | None:
    """Affine addition on P-256; None is the point at infinity."""
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    x1, y1 = p1
    x2, y2 = p2
    if x1 == x2:
        if (y1 + y2) % _P == 0:
            return None
        lam = (3 * x1 * x1 + _A) * pow(2 * y1, -1, _P) % _P
    else:
        lam = (y2 - y1) * pow(x2 - x1, -1, _P) % _P
    x3 = (lam * lam - x1 - x2) % _P
    y3 = (lam * (x1 - x3) - y1) % _P
    return x3, y3


def _on_curve(x: int, y: int) -> bool:
    return 0 <= x < _P and 0 <= y < _P and (y * y - (x * x * x + _A * x + _B)) % _P == 0


def hash_to_curve_p256(msg: bytes, dst: bytes) -> tuple[int, int]:
    """RFC 9380 ``hash_to_curve`` for P256_XMD:SHA-256_SSWU_RO_; returns affine ``(x, y)``.

    The cofactor of P-256 is 1, so ``clear_cofactor`` is the identity.
    """
    u0, u1 = _hash_to_field(msg, dst, 2)
    point = _point_add(_map_to_curve_sswu(u0), _map_to_curve_sswu(u1))
    if point is None:  # needs Q1 == -Q0: probability ~2^-256
        raise ValueError("hash_to_curve produced the point at infinity")
    return point


# --- CPace building blocks -------------------------------------------------------------------------


def _prepend_len(data: bytes) -> bytes:
    """draft-irtf-cfrg-cpace appendix A.1.1: LEB128(len(data)) || data."""
    length = len(data)
    prefix = bytearray()
    while True:
        if length < 128:
            prefix.append(length)
        else:
            prefix.append((length & 0x7F) | 0x80)
        length >>= 7
        if length == 0:
            break
    return bytes(prefix) + data


def _lv_cat(*parts: bytes) -> bytes:
    return b"".join(_prepend_len(part) for part in parts)


def _generator_string(
    dsi: bytes, prs: bytes, ci: bytes, sid: bytes, s_in_bytes: int = _SHA256_BLOCK
) -> bytes:
    """draft-irtf-cfrg-cpace section 8.1 / appendix A.2."""
    len_zpad = max(0, s_in_bytes - 1 - len(_prepend_len(prs)) - len(_prepend_len(dsi)))
    return _lv_cat(dsi, prs, bytes(len_zpad), ci, sid)


def _calculate_generator(prs: bytes, ci: bytes, sid: bytes) -> tuple[int, int]:
    return hash_to_curve_p256(_generator_string(DSI, prs, ci, sid), DST)


def _public_key(x: int, y: int) -> ec.EllipticCurvePublicKey:
    encoded = b"\x04" + x.to_bytes(_FIELD_BYTES, "big") + y.to_bytes(_FIELD_BYTES, "big")
    return ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, encoded)


def _x_only_scalar_mult_vfy(key: ec.EllipticCurvePrivateKey, peer_x: bytes) -> bytes:
    """``scalar_mult_vfy`` on an x-only share: the 32-byte x of ``key * (0x02 || peer_x)``."""
    if len(peer_x) != _FIELD_BYTES:
        raise PakeError(f"PAKE share must be {_FIELD_BYTES} bytes, got {len(peer_x)}")
    x = int.from_bytes(peer_x, "big")
    if x == 0:
        raise PakeError("PAKE share is all zeros")
    if x >= _P:
        raise PakeError("PAKE share is not a reduced field element")
    try:
        point = ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, b"\x02" + bytes(peer_x))
        shared = key.exchange(ec.ECDH(), point)
    except ValueError as exc:
        raise PakeError("PAKE share is not the x-coordinate of a P-256 point") from exc
    if len(shared) != _FIELD_BYTES or hmac.compare_digest(shared, bytes(_FIELD_BYTES)):
        raise PakeError("PAKE shared secret is the neutral element")
    return shared


def _isk(sid: bytes, k: bytes, ya: bytes, ada: bytes, yb: bytes, adb: bytes, *, dsi: bytes = DSI) -> bytes:
    """draft-irtf-cfrg-cpace section 7.2 with transcript_ir."""
    data = _lv_cat(dsi + b"_ISK", sid, k) + _lv_cat(ya, ada) + _lv_cat(yb, adb)
    return hashlib.sha256(data).digest()


# --- The exchange --------------------------------------------------------------------------------


class CPace:
    """One side of a CPace exchange over P-256 with x-only messages."""

    def __init__(
        self,
        prs: bytes,
        *,
        ci: bytes,
        sid: bytes,
        initiator: bool,
        ad: bytes = b"",
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        gx, gy = _calculate_generator(prs, ci, sid)
        generator = _public_key(gx, gy)
        self._key: ec.EllipticCurvePrivateKey | None = ec.derive_private_key(random_scalar(rng), _CURVE)
        self._message = self._key.exchange(ec.ECDH(), generator)
        self._sid = sid
        self._ad = ad
        self._initiator = initiator

    @property
    def message(self) -> bytes:
        """This side's public share: the 32-byte big-endian x-coordinate of ``y*G``."""
        return self._message

    def finish(self, peer_message: bytes, peer_ad: bytes = b"") -> bytes:
        """Return the 32-byte ISK; raise PakeError for an invalid share. Callable once."""
        key = self._key
        if key is None:
            raise RuntimeError("CPace.finish() may only be called once")
        self._key = None  # one scalar, one attempt -- even if this one fails
        k = _x_only_scalar_mult_vfy(key, peer_message)
        if self._initiator:
            return _isk(self._sid, k, self._message, self._ad, bytes(peer_message), peer_ad)
        return _isk(self._sid, k, bytes(peer_message), peer_ad, self._message, self._ad)

"""Withdrawal-address validation: pure functions, no I/O.

``validate_address(coin, address)`` returns the canonical form of an address to
store, or raises ``ExchangeError("invalid_address", <sentence>)``; a coin it does
not know raises ``ExchangeError("unknown_coin", ...)``.

BTC (mainnet only)
    * Base58Check P2PKH (version 0x00, ``1...``) and P2SH (version 0x05, ``3...``):
      exactly 25 decoded bytes, the last 4 of which are the first 4 bytes of
      double-SHA-256 over the first 21. Base58 is implemented here (a dozen lines,
      integer arithmetic, the usual "leading '1' = leading zero byte" rule) rather
      than via the ``base58`` package, so this module has no untyped dependency;
      the tests cross-check it against the ``base58`` package. Canonical form: the
      address unchanged (Base58 is bijective, so there is exactly one spelling).
    * Segwit: BIP-173 bech32 for witness version 0 (program of 20 or 32 bytes) and
      BIP-350 bech32m for witness versions 1..16 (program of 2..40 bytes). The
      checksum functions follow the BIP-173/BIP-350 reference code (sipa/bech32,
      ``ref/python/segwit_addr.py``). The human-readable part must be ``bc``
      (testnet ``tb`` and regtest ``bcrt`` are refused), mixed case is refused,
      total length is at most 90, and the version/encoding pairing is enforced
      (v0 must be bech32, v1+ must be bech32m). Canonical form: lower case.
      Segwit is recognised by the ``bc1``/``tb1``/``bcrt1`` prefix (in either
      case); no mainnet Base58 address can start that way.

ETH and USDT (USDT is an ERC-20 token, so the same rules)
    ``0x`` followed by exactly 40 hex digits. An all-lower or all-upper body is
    accepted without a checksum; a mixed-case body must match EIP-55 (Keccak-256
    of the lower-case hex, pycryptodome ``Crypto.Hash.keccak``). Canonical form:
    the EIP-55 checksummed address.

Nothing is trimmed or normalised before checking: surrounding whitespace is an
error, not something silently repaired.
"""

from __future__ import annotations

import hashlib
from enum import Enum
from typing import Final

from Crypto.Hash import keccak

from exchange.domain.errors import ExchangeError

__all__ = [
    "SUPPORTED_COINS",
    "Bech32Encoding",
    "b58decode",
    "b58encode",
    "bech32_decode",
    "eip55_checksum",
    "validate_address",
]

SUPPORTED_COINS: Final[frozenset[str]] = frozenset({"BTC", "ETH", "USDT"})

# --------------------------------------------------------------------------- base58

B58_ALPHABET: Final[str] = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX: Final[dict[str, int]] = {ch: i for i, ch in enumerate(B58_ALPHABET)}

_P2PKH_VERSION: Final[int] = 0x00
_P2SH_VERSION: Final[int] = 0x05
_TESTNET_VERSIONS: Final[frozenset[int]] = frozenset({0x6F, 0xC4})  # m/n..., 2...
_BASE58_ADDRESS_BYTES: Final[int] = 25
# 25 bytes need at most 35 base58 digits (58**35 > 256**25); refuse longer input
# before doing any big-integer work on it.
_BASE58_MAX_CHARS: Final[int] = 35


def b58decode(text: str) -> bytes | None:
    """Decode Base58 (Bitcoin alphabet); ``None`` if a character is not base58."""
    value = 0
    for ch in text:
        digit = _B58_INDEX.get(ch)
        if digit is None:
            return None
        value = value * 58 + digit
    leading_zeros = len(text) - len(text.lstrip("1"))
    body = value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""
    return b"\x00" * leading_zeros + body


def b58encode(data: bytes) -> str:
    """Encode bytes as Base58 (Bitcoin alphabet); inverse of :func:`b58decode`."""
    value = int.from_bytes(data, "big")
    digits: list[str] = []
    while value:
        value, rem = divmod(value, 58)
        digits.append(B58_ALPHABET[rem])
    leading_zeros = len(data) - len(data.lstrip(b"\x00"))
    return "1" * leading_zeros + "".join(reversed(digits))


def _double_sha256(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


# --------------------------------------------------------------------------- bech32

BECH32_CHARSET: Final[str] = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_INDEX: Final[dict[str, int]] = {ch: i for i, ch in enumerate(BECH32_CHARSET)}
_BECH32_MAX_LENGTH: Final[int] = 90
_BECH32_CONST: Final[int] = 1
_BECH32M_CONST: Final[int] = 0x2BC830A3
_GENERATOR: Final[tuple[int, ...]] = (
    0x3B6A57B2,
    0x26508E6D,
    0x1EA119FA,
    0x3D4233DD,
    0x2A1462B3,
)
_MAINNET_HRP: Final[str] = "bc"
_NON_MAINNET_HRPS: Final[frozenset[str]] = frozenset({"tb", "bcrt"})


class Bech32Encoding(Enum):
    """Which checksum constant a bech32-family string verifies under."""

    BECH32 = "bech32"  # BIP-173
    BECH32M = "bech32m"  # BIP-350


def _bech32_polymod(values: list[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            chk ^= _GENERATOR[i] if (top >> i) & 1 else 0
    return chk


def _bech32_hrp_expand(hrp: str) -> list[int]:
    return [ord(x) >> 5 for x in hrp] + [0] + [ord(x) & 31 for x in hrp]


def _bech32_verify_checksum(hrp: str, data: list[int]) -> Bech32Encoding | None:
    const = _bech32_polymod(_bech32_hrp_expand(hrp) + data)
    if const == _BECH32_CONST:
        return Bech32Encoding.BECH32
    if const == _BECH32M_CONST:
        return Bech32Encoding.BECH32M
    return None


class _Bech32FormatError(ValueError):
    """Internal: the string is not well-formed bech32; the message says why."""


def _bech32_split(bech: str) -> tuple[str, list[int]]:
    """Structural checks of BIP-173 ``bech32_decode``; returns (hrp, data+checksum)."""
    if any(ord(x) < 33 or ord(x) > 126 for x in bech):
        raise _Bech32FormatError("contains a character outside printable ASCII")
    if bech.lower() != bech and bech.upper() != bech:
        raise _Bech32FormatError("mixes upper and lower case")
    if len(bech) > _BECH32_MAX_LENGTH:
        raise _Bech32FormatError(f"is longer than {_BECH32_MAX_LENGTH} characters")
    bech = bech.lower()
    pos = bech.rfind("1")
    if pos < 1:
        raise _Bech32FormatError("has no human-readable part before the '1' separator")
    if pos + 7 > len(bech):
        raise _Bech32FormatError("is too short to hold a checksum")
    data: list[int] = []
    for ch in bech[pos + 1 :]:
        digit = _BECH32_INDEX.get(ch)
        if digit is None:
            raise _Bech32FormatError(f"contains {ch!r}, which is not in the bech32 alphabet")
        data.append(digit)
    return bech[:pos], data


def bech32_decode(bech: str) -> tuple[str, list[int], Bech32Encoding] | None:
    """BIP-173/BIP-350 ``bech32_decode``: (hrp, data without checksum, encoding) or None."""
    try:
        hrp, data = _bech32_split(bech)
    except _Bech32FormatError:
        return None
    encoding = _bech32_verify_checksum(hrp, data)
    if encoding is None:
        return None
    return hrp, data[:-6], encoding


def _convert_5_to_8(data: list[int]) -> bytes | None:
    """Regroup 5-bit groups into bytes (``convertbits(data, 5, 8, False)``).

    ``None`` if there are more than 4 padding bits or the padding is not zero.
    """
    acc = 0
    bits = 0
    out = bytearray()
    for value in data:
        acc = (acc << 5) | value
        bits += 5
        while bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
    if bits >= 5 or (acc << (8 - bits)) & 0xFF:
        return None
    return bytes(out)


# --------------------------------------------------------------------------- EIP-55

_HEX_DIGITS: Final[frozenset[str]] = frozenset("0123456789abcdefABCDEF")
_ETH_HEX_LENGTH: Final[int] = 40


def eip55_checksum(hex40: str) -> str:
    """EIP-55 ``0x``-prefixed checksummed form of 40 hex digits (any case, no 0x)."""
    lower = hex40.lower()
    digest = keccak.new(digest_bits=256, data=lower.encode("ascii")).hexdigest()
    return "0x" + "".join(
        ch.upper() if ch.isalpha() and int(digest[i], 16) >= 8 else ch for i, ch in enumerate(lower)
    )


# --------------------------------------------------------------------------- validate


def _invalid(message: str) -> ExchangeError:
    return ExchangeError("invalid_address", message)


def _validate_btc_base58(address: str) -> str:
    if len(address) > _BASE58_MAX_CHARS:
        raise _invalid(
            f"BTC address is {len(address)} characters long; a base58 address has "
            f"at most {_BASE58_MAX_CHARS}"
        )
    raw = b58decode(address)
    if raw is None:
        raise _invalid(
            "BTC address contains a character that is not in the base58 alphabet "
            "(whitespace, '0', 'O', 'I' and 'l' are never valid)"
        )
    if len(raw) != _BASE58_ADDRESS_BYTES:
        raise _invalid(
            f"BTC address decodes to {len(raw)} bytes; a base58 address must decode "
            f"to exactly {_BASE58_ADDRESS_BYTES}"
        )
    payload, checksum = raw[:-4], raw[-4:]
    if _double_sha256(payload)[:4] != checksum:
        raise _invalid("BTC address checksum does not match")
    version = payload[0]
    if version in _TESTNET_VERSIONS:
        raise _invalid("BTC address is a testnet address; only mainnet addresses are accepted")
    if version not in (_P2PKH_VERSION, _P2SH_VERSION):
        raise _invalid(
            f"BTC address has version byte 0x{version:02x}; only P2PKH (0x00, '1...') "
            "and P2SH (0x05, '3...') are accepted"
        )
    # Base58 is bijective (leading '1's <-> leading zero bytes), so the input is
    # already the only spelling; re-encode anyway as a cheap self-check.
    canonical = b58encode(raw)
    if canonical != address:  # pragma: no cover - unreachable by construction
        raise _invalid("BTC address is not in canonical base58 form")
    return address


def _validate_btc_segwit(address: str) -> str:
    try:
        hrp, data = _bech32_split(address)
    except _Bech32FormatError as exc:
        raise _invalid(f"BTC segwit address {exc}") from None
    if hrp in _NON_MAINNET_HRPS:
        raise _invalid(
            f"BTC segwit address has prefix '{hrp}' (testnet/regtest); only mainnet "
            "'bc1...' addresses are accepted"
        )
    if hrp != _MAINNET_HRP:
        raise _invalid(f"BTC segwit address has prefix '{hrp}'; it must be 'bc'")
    encoding = _bech32_verify_checksum(hrp, data)
    if encoding is None:
        raise _invalid("BTC segwit address checksum does not match")
    data = data[:-6]
    if not data:
        raise _invalid("BTC segwit address has an empty data section (no witness version)")
    version = data[0]
    if version > 16:
        raise _invalid(f"BTC segwit address has witness version {version}; the maximum is 16")
    program = _convert_5_to_8(data[1:])
    if program is None:
        raise _invalid("BTC segwit address has invalid padding in its witness program")
    if not 2 <= len(program) <= 40:
        raise _invalid(
            f"BTC segwit witness program is {len(program)} bytes; it must be 2 to 40 bytes"
        )
    if version == 0 and len(program) not in (20, 32):
        raise _invalid(
            f"BTC segwit version 0 witness program is {len(program)} bytes; "
            "it must be 20 or 32 bytes"
        )
    if version == 0 and encoding is not Bech32Encoding.BECH32:
        raise _invalid(
            "BTC segwit version 0 address uses the bech32m checksum; "
            "version 0 must use bech32 (BIP-173)"
        )
    if version != 0 and encoding is not Bech32Encoding.BECH32M:
        raise _invalid(
            f"BTC segwit version {version} address uses the bech32 checksum; "
            "versions 1 to 16 must use bech32m (BIP-350)"
        )
    return address.lower()


def _validate_btc(address: str) -> str:
    lowered = address.lower()
    if lowered.startswith(("bc1", "tb1", "bcrt1")):
        return _validate_btc_segwit(address)
    return _validate_btc_base58(address)


def _validate_eth(coin: str, address: str) -> str:
    if any(ch.isspace() for ch in address):
        raise _invalid(f"{coin} address must not contain whitespace")
    if not address.startswith("0x"):
        raise _invalid(f"{coin} address must start with '0x'")
    body = address[2:]
    if len(body) != _ETH_HEX_LENGTH:
        raise _invalid(
            f"{coin} address must have exactly {_ETH_HEX_LENGTH} hex digits after '0x' "
            f"(it has {len(body)} characters)"
        )
    if not all(ch in _HEX_DIGITS for ch in body):
        raise _invalid(f"{coin} address contains a character that is not a hex digit")
    canonical = eip55_checksum(body)
    if body != body.lower() and body != body.upper() and address != canonical:
        raise _invalid(f"{coin} address checksum (EIP-55 mixed case) does not match")
    return canonical


def validate_address(coin: str, address: str) -> str:
    """Return the canonical form of ``address`` for ``coin``, or raise ExchangeError.

    Codes: ``unknown_coin`` for a coin other than BTC/ETH/USDT (exact, upper case);
    ``invalid_address`` with a sentence saying what is wrong otherwise.
    """
    if coin not in SUPPORTED_COINS:
        raise ExchangeError(
            "unknown_coin", f"coin {coin!r} is not supported; use one of BTC, ETH, USDT"
        )
    if not isinstance(address, str):
        raise _invalid(f"{coin} address must be a string")
    if not address:
        raise _invalid(f"{coin} address is empty")
    if coin == "BTC":
        return _validate_btc(address)
    return _validate_eth(coin, address)

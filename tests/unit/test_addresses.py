"""Tests for exchange.domain.addresses.

Segwit vectors are the published BIP-173 and BIP-350 test vectors (as in the
reference implementation sipa/bech32 ``ref/python/tests.py``); the Ethereum
vectors are the EIP-55 "Test Cases".
"""

from __future__ import annotations

import hashlib

import base58
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.domain.addresses import (
    BECH32_CHARSET,
    Bech32Encoding,
    b58decode,
    b58encode,
    bech32_decode,
    eip55_checksum,
    validate_address,
)
from exchange.domain.errors import ExchangeError


def _rejected(coin: str, address: str) -> ExchangeError:
    with pytest.raises(ExchangeError) as info:
        validate_address(coin, address)
    assert info.value.code == "invalid_address", (address, info.value.description)
    assert info.value.message  # a human sentence, never empty
    return info.value


# =================================================================== bech32 / segwit
# Independent encoder for the tests (BIP-173/BIP-350 reference algorithm).

_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        b = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= _GEN[i] if ((b >> i) & 1) else 0
    return chk


def _segwit_encode(hrp: str, version: int, program: bytes) -> str:
    const = 1 if version == 0 else 0x2BC830A3
    acc = bits = 0
    five: list[int] = []
    for byte in program:
        acc = (acc << 8) | byte
        bits += 8
        while bits >= 5:
            bits -= 5
            five.append((acc >> bits) & 31)
    if bits:
        five.append((acc << (5 - bits)) & 31)
    data = [version, *five]
    expanded = [ord(x) >> 5 for x in hrp] + [0] + [ord(x) & 31 for x in hrp]
    pm = _polymod([*expanded, *data, 0, 0, 0, 0, 0, 0]) ^ const
    checksum = [(pm >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(BECH32_CHARSET[d] for d in data + checksum)


# BIP-173 / BIP-350 generic checksum vectors (not addresses: arbitrary HRPs).
VALID_BECH32 = [
    "A12UEL5L",
    "a12uel5l",
    "an83characterlonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1tt5tgs",
    "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
    "11qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqc8247j",
    "split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w",
    "?1ezyfcl",
]
VALID_BECH32M = [
    "A1LQFN3A",
    "a1lqfn3a",
    "an83characterlonghumanreadablepartthatcontainsthetheexcludedcharactersbioandnumber11sg7hg6",
    "abcdef1l7aum6echk45nj3s0wdvt2fg8x9yrzpqzd3ryx",
    "11llllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllludsr8",
    "split1checkupstagehandshakeupstreamerranterredcaperredlc445v",
    "?1v759aa",
]
INVALID_BECH32 = [
    " 1nwldj5",
    "\x7f1axkwrx",
    "\x801eym55h",
    "an84characterslonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1569pvx",
    "pzry9x0s0muk",
    "1pzry9x0s0muk",
    "x1b4n0q5v",
    "li1dgmt3",
    "de1lg7wt\xff",
    "A1G7SGD8",
    "10a06t8",
    "1qzzfhee",
]
INVALID_BECH32M = [
    " 1xj0phk",
    "\x7f1g6xzxy",
    "\x801vctc34",
    "an84characterslonghumanreadablepartthatcontainsthetheexcludedcharactersbioandnumber11d6pts4",
    "qyrz8wqd2c9m",
    "1qyrz8wqd2c9m",
    "y1b0jsk6g",
    "lt1igcx5c0",
    "in1muywd",
    "mm1crxm3i",
    "au1s5cgom",
    "M1VUXWEZ",
    "16plkw9",
    "1p2gdwpf",
]


@pytest.mark.parametrize("text", VALID_BECH32)
def test_bech32_checksum_vectors_valid(text: str) -> None:
    decoded = bech32_decode(text)
    assert decoded is not None and decoded[2] is Bech32Encoding.BECH32
    pos = text.rfind("1")
    flipped = text[: pos + 1] + chr(ord(text[pos + 1]) ^ 1) + text[pos + 2 :]
    assert bech32_decode(flipped) is None


@pytest.mark.parametrize("text", VALID_BECH32M)
def test_bech32m_checksum_vectors_valid(text: str) -> None:
    decoded = bech32_decode(text)
    assert decoded is not None and decoded[2] is Bech32Encoding.BECH32M
    pos = text.rfind("1")
    flipped = text[: pos + 1] + chr(ord(text[pos + 1]) ^ 1) + text[pos + 2 :]
    assert bech32_decode(flipped) is None


@pytest.mark.parametrize("text", INVALID_BECH32)
def test_bech32_checksum_vectors_invalid(text: str) -> None:
    decoded = bech32_decode(text)
    assert decoded is None or decoded[2] is not Bech32Encoding.BECH32
    _rejected("BTC", text)


@pytest.mark.parametrize("text", INVALID_BECH32M)
def test_bech32m_checksum_vectors_invalid(text: str) -> None:
    decoded = bech32_decode(text)
    assert decoded is None or decoded[2] is not Bech32Encoding.BECH32M
    _rejected("BTC", text)


# BIP-173 + BIP-350 valid addresses that are mainnet: (address, scriptPubKey hex).
VALID_MAINNET_SEGWIT = [
    ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", "0014751e76e8199196d454941c45d1b3a323f1433bd6"),
    (
        "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y",
        "5128751e76e8199196d454941c45d1b3a323f1433bd6751e76e8199196d454941c45d1b3a323f1433bd6",
    ),
    ("BC1SW50QGDZ25J", "6002751e"),
    ("bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs", "5210751e76e8199196d454941c45d1b3a323"),
    (
        "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
        "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798",
    ),
]

# BIP-173/BIP-350 valid addresses that are testnet: refused (mainnet only).
VALID_TESTNET_SEGWIT = [
    "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
    "tb1qqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesrxh6hy",
    "tb1pqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesf3hn0c",
]

# BIP-173's v1+ examples were bech32-encoded; BIP-350 made them invalid.
BIP173_V1PLUS_BECH32 = [
    "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7k7grplx",
    "BC1SW50QA3JX3S",
    "bc1zw508d6qejxtdg4y5r3zarvaryvg6kdaj",
]

INVALID_SEGWIT = [
    # BIP-173
    ("tc1qw508d6qejxtdg4y5r3zarvary0c5xw7kg3g4ty", "invalid hrp"),
    ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5", "invalid checksum"),
    ("BC13W508D6QEJXTDG4Y5R3ZARVARY0C5XW7KN40WF2", "invalid witness version"),
    ("bc1rw5uspcuh", "invalid program length"),
    (
        "bc10w508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kw5rljs90",
        "invalid program length",
    ),
    ("BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P", "invalid program length for v0"),
    ("tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sL5k7", "mixed case"),
    ("bc1zw508d6qejxtdg4y5r3zarvaryvqyzf3du", "zero padding of more than 4 bits"),
    ("tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3pjxtptv", "non-zero padding"),
    ("bc1gmk9yu", "empty data section"),
    # BIP-350
    ("tc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq5zuyut", "invalid hrp"),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd", "bech32 for v1"),
    ("tb1z0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqglt7rf", "bech32 for v2"),
    ("BC1S0XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ54WELL", "bech32 for v16"),
    ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh", "bech32m for v0"),
    ("tb1q0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq24jc47", "bech32m for v0"),
    ("bc1p38j9r5y49hruaue7wxjce0updqjuyyx0kh56v8s25huc6995vvpql3jow4", "bad checksum char"),
    ("BC130XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ7ZWS8R", "invalid version"),
    ("bc1pw5dgrnzv", "program length 1"),
    (
        "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v8n0nx0muaewav253zgeav",
        "program length 41",
    ),
    ("BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P", "invalid program length for v0"),
    ("tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq47Zagq", "mixed case"),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v07qwwzcrf", "more than 4 pad bits"),
    ("tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vpggkg4j", "non-zero padding"),
    ("bc1gmk9yu", "empty data section"),
]


def _script_pubkey(version: int, program: bytes) -> str:
    return (bytes([version + 0x50 if version else 0, len(program)]) + program).hex()


@pytest.mark.parametrize(("address", "script_hex"), VALID_MAINNET_SEGWIT)
def test_valid_mainnet_segwit_vectors_accepted_and_lowercased(
    address: str, script_hex: str
) -> None:
    canonical = validate_address("BTC", address)
    assert canonical == address.lower()
    # Cross-check the decoded program against the published scriptPubKey.
    script = bytes.fromhex(script_hex)
    version = script[0] - 0x50 if script[0] else 0
    program = script[2:]
    assert _segwit_encode("bc", version, program) == canonical
    assert _script_pubkey(version, program) == script_hex


@pytest.mark.parametrize("address", VALID_TESTNET_SEGWIT)
def test_testnet_segwit_rejected(address: str) -> None:
    assert bech32_decode(address) is not None  # well-formed, just the wrong network
    err = _rejected("BTC", address)
    assert "testnet" in err.message


def test_regtest_segwit_rejected() -> None:
    address = _segwit_encode("bcrt", 0, bytes(20))
    err = _rejected("BTC", address)
    assert "regtest" in err.message


@pytest.mark.parametrize("address", BIP173_V1PLUS_BECH32)
def test_bip173_v1plus_bech32_rejected_after_bip350(address: str) -> None:
    decoded = bech32_decode(address)
    assert decoded is not None and decoded[2] is Bech32Encoding.BECH32
    err = _rejected("BTC", address)
    assert "bech32m" in err.message


@pytest.mark.parametrize(("address", "why"), INVALID_SEGWIT)
def test_invalid_segwit_vectors_rejected(address: str, why: str) -> None:
    _rejected("BTC", address)


@pytest.mark.parametrize(
    ("address", "fragment"),
    [
        ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5", "checksum does not match"),
        ("BC13W508D6QEJXTDG4Y5R3ZARVARY0C5XW7KN40WF2", "witness version"),
        ("bc1rw5uspcuh", "2 to 40 bytes"),
        ("BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P", "20 or 32 bytes"),
        ("tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sL5k7", "mixes upper"),
        ("bc1zw508d6qejxtdg4y5r3zarvaryvqyzf3du", "padding"),
        ("bc1gmk9yu", "empty data"),
        ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd", "bech32m"),
        ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh", "version 0 must use bech32"),
        ("bc1p38j9r5y49hruaue7wxjce0updqjuyyx0kh56v8s25huc6995vvpql3jow4", "bech32 alphabet"),
    ],
)
def test_segwit_error_messages_say_what_is_wrong(address: str, fragment: str) -> None:
    assert fragment in _rejected("BTC", address).message


def test_segwit_mixed_case_rejected_even_with_valid_checksum() -> None:
    good = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"
    mixed = good[:10] + good[10].upper() + good[11:]
    assert "mixes upper and lower case" in _rejected("BTC", mixed).message


def test_segwit_too_long_rejected() -> None:
    # Checksum-valid, but 100 characters (a 40-byte program needs only 74).
    address = _segwit_encode("bc", 1, bytes(56))
    assert bech32_decode(address) is None  # the decoder itself enforces <= 90
    assert len(address) > 90
    assert "longer than 90" in _rejected("BTC", address).message


def test_segwit_encoder_limits_for_every_version() -> None:
    for version in range(17):
        lengths = (20, 32) if version == 0 else (2, 40)
        for n in lengths:
            address = _segwit_encode("bc", version, bytes(range(n)))
            assert validate_address("BTC", address.upper()) == address
        bad = (19, 21, 33) if version == 0 else (1, 41)
        for n in bad:
            _rejected("BTC", _segwit_encode("bc", version, bytes(n)))


# =================================================================== base58 (P2PKH/P2SH)

VALID_BASE58 = [
    "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa",  # genesis coinbase, P2PKH
    "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2",  # bitcoin wiki P2PKH example
    "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy",  # bitcoin wiki P2SH example
    "1111111111111111111114oLvT2",  # all-zero hash160: leading '1's -> zero bytes
]


@pytest.mark.parametrize("address", VALID_BASE58)
def test_known_mainnet_base58_accepted_unchanged(address: str) -> None:
    assert validate_address("BTC", address) == address
    assert base58.b58decode_check(address)[0] in (0x00, 0x05)


def _flip(address: str, index: int) -> str:
    index %= len(address)
    ch = address[index]
    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    replacement = alphabet[(alphabet.index(ch) + 1) % len(alphabet)]
    return address[:index] + replacement + address[index + 1 :]


@pytest.mark.parametrize("address", VALID_BASE58[:3])
@pytest.mark.parametrize("index", [-1, -5, 10, 20])
def test_base58_flipped_character_fails_checksum(address: str, index: int) -> None:
    err = _rejected("BTC", _flip(address, index))
    assert err.message == "BTC address checksum does not match"


@pytest.mark.parametrize(
    "address",
    [
        "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn",
        "2MzQwSSnBHWHqSAqtTVQ6v47XtaisrJa1Vc",
        base58.b58encode_check(b"\x6f" + bytes(20)).decode(),  # m...
        base58.b58encode_check(b"\x6f" + b"\xff" * 20).decode(),  # n...
        base58.b58encode_check(b"\xc4" + bytes(range(20))).decode(),  # 2...
    ],
)
def test_testnet_base58_rejected(address: str) -> None:
    assert address[0] in "mn2"
    base58.b58decode_check(address)  # checksum-valid: refused for its network only
    assert "testnet" in _rejected("BTC", address).message


@pytest.mark.parametrize(
    ("address", "fragment"),
    [
        ("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfN0", "base58 alphabet"),  # '0'
        ("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNO", "base58 alphabet"),  # 'O'
        ("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNI", "base58 alphabet"),  # 'I'
        ("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNl", "base58 alphabet"),  # 'l'
        (" 1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", "base58 alphabet"),
        ("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa\n", "base58 alphabet"),
        ("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa" + "1" * 5, "at most 35"),
        (base58.b58encode_check(b"\x00" + bytes(19)).decode(), "exactly 25"),
        (base58.b58encode_check(b"\x00" + bytes(21)).decode(), "exactly 25"),
        (base58.b58encode_check(b"\x30" + bytes(range(20))).decode(), "version byte 0x30"),
        ("", "empty"),
    ],
)
def test_malformed_base58_rejected(address: str, fragment: str) -> None:
    assert fragment in _rejected("BTC", address).message


def test_own_base58_matches_package() -> None:
    for raw in [b"", b"\x00", b"\x00\x00\x01", bytes(range(256)), b"\xff" * 33]:
        assert b58encode(raw) == base58.b58encode(raw).decode()
        assert b58decode(b58encode(raw)) == raw
    assert b58decode("0OIl") is None


_VERSIONS = st.sampled_from([0x00, 0x05])
_PAYLOADS = st.binary(min_size=20, max_size=20)


@settings(max_examples=300, derandomize=True)
@given(version=_VERSIONS, payload=_PAYLOADS)
def test_random_base58_addresses_round_trip(version: int, payload: bytes) -> None:
    address = base58.b58encode_check(bytes([version]) + payload).decode()
    assert address[0] == ("1" if version == 0 else "3")
    assert validate_address("BTC", address) == address


def _oracle_base58_valid(address: str) -> bool:
    """Independent judgement via the `base58` package + hashlib."""
    try:
        raw = base58.b58decode(address)
    except ValueError:
        return False
    if len(raw) != 25 or raw[0] not in (0x00, 0x05):
        return False
    return hashlib.sha256(hashlib.sha256(raw[:21]).digest()).digest()[:4] == raw[21:]


@settings(max_examples=300, derandomize=True)
@given(
    version=_VERSIONS,
    payload=_PAYLOADS,
    index=st.integers(min_value=0, max_value=40),
    shift=st.integers(min_value=1, max_value=57),
)
def test_random_base58_one_character_mutation_rejected(
    version: int, payload: bytes, index: int, shift: int
) -> None:
    address = base58.b58encode_check(bytes([version]) + payload).decode()
    index %= len(address)
    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    new_char = alphabet[(alphabet.index(address[index]) + shift) % 58]
    mutated = address[:index] + new_char + address[index + 1 :]
    assert mutated != address
    # Base58 is bijective, so the mutation always changes the decoded bytes; the
    # address survives only if the independent oracle finds a 32-bit checksum
    # collision (~2**-32) - in which case it must be accepted, else rejected.
    if _oracle_base58_valid(mutated):
        assert validate_address("BTC", mutated) == mutated
    else:
        _rejected("BTC", mutated)


@settings(max_examples=200, derandomize=True)
@given(
    version=st.integers(min_value=0, max_value=16),
    data=st.data(),
)
def test_random_segwit_round_trip_and_single_substitution_rejected(
    version: int, data: st.DataObject
) -> None:
    size = data.draw(st.sampled_from([20, 32]) if version == 0 else st.integers(2, 40))
    program = data.draw(st.binary(min_size=size, max_size=size))
    address = _segwit_encode("bc", version, program)
    assert validate_address("BTC", address) == address
    assert validate_address("BTC", address.upper()) == address
    # BCH codes guarantee detection of any single substitution (BIP-173/350), so
    # every one-character change after the separator must be rejected.
    index = data.draw(st.integers(min_value=3, max_value=len(address) - 1))
    shift = data.draw(st.integers(min_value=1, max_value=31))
    new_char = BECH32_CHARSET[(BECH32_CHARSET.index(address[index]) + shift) % 32]
    _rejected("BTC", address[:index] + new_char + address[index + 1 :])


# =================================================================== ETH / USDT (EIP-55)

EIP55_ALL_CAPS = [
    "0x52908400098527886E0F7030069857D2E4169EE7",
    "0x8617E340B3D01FA5F11F306F4090FD50E238070D",
]
EIP55_ALL_LOWER = [
    "0xde709f2102306220921060314715629080e2fb77",
    "0x27b1fdb04752bbc536007a920d24acb045561c26",
]
EIP55_NORMAL = [
    "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
    "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
    "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
]
EIP55_VECTORS = EIP55_ALL_CAPS + EIP55_ALL_LOWER + EIP55_NORMAL


@pytest.mark.parametrize("coin", ["ETH", "USDT"])
@pytest.mark.parametrize("address", EIP55_VECTORS)
def test_eip55_vectors_accepted_and_canonical(coin: str, address: str) -> None:
    # Every EIP-55 vector is already its own checksummed form.
    assert validate_address(coin, address) == address
    assert validate_address(coin, address.lower()) == address
    assert validate_address(coin, "0x" + address[2:].upper()) == address
    assert eip55_checksum(address[2:]) == address


@pytest.mark.parametrize("coin", ["ETH", "USDT"])
@pytest.mark.parametrize("address", EIP55_VECTORS)
def test_eip55_vectors_with_one_letter_case_flipped_rejected(coin: str, address: str) -> None:
    letters = [i for i, ch in enumerate(address) if i >= 2 and ch.isalpha()]
    assert letters
    for i in letters:
        flipped = address[:i] + address[i].swapcase() + address[i + 1 :]
        err = _rejected(coin, flipped)
        assert err.message == f"{coin} address checksum (EIP-55 mixed case) does not match"


@pytest.mark.parametrize("coin", ["ETH", "USDT"])
@pytest.mark.parametrize(
    ("address", "fragment"),
    [
        ("", "empty"),
        ("5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "start with '0x'"),
        ("0X5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "start with '0x'"),
        (" 0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "whitespace"),
        ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed ", "whitespace"),
        ("0x5aAeb6053F3E94C9b9A09f3366\t9435E7Ef1BeAed", "whitespace"),
        ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAe", "40 hex digits"),
        ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed0", "40 hex digits"),
        ("0x", "40 hex digits"),
        ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeg", "not a hex digit"),
        ("0xzzzeb6053f3e94c9b9a09f33669435e7ef1beaed", "not a hex digit"),
        ("0x5aaeb6053f3e94c9b9a09f33669435e7ef1bea\u0661d", "not a hex digit"),  # Arabic 1
        ("0x0x" + "5a" * 19, "not a hex digit"),
    ],
)
def test_malformed_eth_rejected(coin: str, address: str, fragment: str) -> None:
    err = _rejected(coin, address)
    assert fragment in err.message
    assert err.message.startswith(coin)


@settings(max_examples=200, derandomize=True)
@given(payload=_PAYLOADS, index=st.integers(min_value=0, max_value=39))
def test_random_eth_case_flip_rejected(payload: bytes, index: int) -> None:
    canonical = eip55_checksum(payload.hex())
    assert validate_address("ETH", "0x" + payload.hex().upper()) == canonical
    assert validate_address("ETH", canonical) == canonical
    pos = 2 + index
    if not canonical[pos].isalpha():
        return  # a digit has no case to flip
    flipped = canonical[:pos] + canonical[pos].swapcase() + canonical[pos + 1 :]
    body = flipped[2:]
    if body in (body.lower(), body.upper()):
        # The flip made the body single-case, which is accepted without checksum.
        assert validate_address("ETH", flipped) == canonical
    else:
        _rejected("ETH", flipped)


# =================================================================== coins


@pytest.mark.parametrize("coin", ["LTC", "DOGE", "", "btc", "eth", "usdt", "USDC"])
def test_unknown_coin(coin: str) -> None:
    with pytest.raises(ExchangeError) as info:
        validate_address(coin, "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa")
    assert info.value.code == "unknown_coin"


def test_btc_address_is_not_an_eth_address_and_vice_versa() -> None:
    _rejected("ETH", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa")
    _rejected("USDT", "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4")
    _rejected("BTC", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed")

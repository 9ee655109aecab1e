"""Wallet methods of SPEC §7: withdrawal addresses, withdrawals and their history.

Handlers only parse parameters and format answers; every rule (address
validation, cooldown, fee, minimum, freezing) lives in ``services.wallet`` and
the engine, so the web pages and the API cannot disagree.
"""

from __future__ import annotations

from typing import Any

from exchange.api import schemas
from exchange.api.context import Call, Method, Param
from exchange.api.params import integer, optional_text, raw, text
from exchange.domain.money import format_units
from exchange.domain.withdrawals import Withdrawal
from exchange.services.wallet import WithdrawAddress


def withdrawal_view(withdrawal: Withdrawal, scale: int) -> dict[str, Any]:
    return {
        "withdrawal_id": withdrawal.id,
        "coin": withdrawal.coin,
        "amount": format_units(withdrawal.amount, scale),
        "fee": format_units(withdrawal.fee, scale),
        "address": withdrawal.address,
        "status": withdrawal.status,
        "txid": withdrawal.txid,
        "reason": withdrawal.reason,
        "created": withdrawal.created,
        "updated": withdrawal.updated,
    }


def address_view(found: WithdrawAddress) -> dict[str, Any]:
    return {"coin": found.coin, "address": found.address, "usable_from": found.usable_from}


def _coin(call: Call) -> str:
    return text(call.params, "coin", max_length=16)


async def get_withdraw_address(call: Call) -> object:
    return address_view(await call.services.wallet.address(call.user_id, _coin(call)))


async def set_withdraw_address(call: Call) -> object:
    wallet = call.services.wallet
    coin = _coin(call)
    wallet.asset(coin)  # unknown_coin before anything about the address
    # Longer than any real address, so an overlong one is refused as invalid_address.
    address = text(call.params, "address", max_length=256)
    return address_view(await wallet.set_address(call.user_id, coin, address))


async def withdraw(call: Call) -> object:
    wallet = call.services.wallet
    asset = wallet.asset(_coin(call))
    # No amount (or an empty one, as an HTML form sends) = the whole available balance.
    amount = None if call.params.get("amount") in (None, "") else raw(call.params, "amount")
    found = await wallet.withdraw(call.user_id, asset.code, amount)
    return withdrawal_view(found, asset.scale)


async def get_withdrawals(call: Call) -> object:
    wallet = call.services.wallet
    coin = optional_text(call.params, "coin", max_length=16)
    coin = None if coin is None or coin.strip() == "" else wallet.asset(coin).code
    limit = integer(call.params, "limit", 100, low=1, high=500)
    found = await wallet.withdrawals(call.user_id, coin, limit)
    return [withdrawal_view(w, wallet.asset(w.coin).scale) for w in found]


COIN = Param("coin", required=True, description="BTC, ETH or USDT (any case)", max_length=16)

METHODS = (
    Method(
        "get_withdraw_address",
        "POST",
        get_withdraw_address,
        "Your withdrawal address for a coin (null if unset) and when it becomes usable.",
        schemas.WithdrawAddress,
        (COIN,),
        auth=True,
        tag="wallet",
    ),
    Method(
        "set_withdraw_address",
        "POST",
        set_withdraw_address,
        "Set or change a withdrawal address; a new or changed address is usable only after "
        "the cooldown (EXCHANGE_WITHDRAW_ADDRESS_COOLDOWN).",
        schemas.WithdrawAddressSet,
        (
            COIN,
            Param(
                "address",
                required=True,
                max_length=128,
                description="BTC: 1…, 3… or bc1…; ETH/USDT: 0x + 40 hex (EIP-55 if mixed case)",
            ),
        ),
        auth=True,
        tag="wallet",
        limit="orders",
    ),
    Method(
        "withdraw",
        "POST",
        withdraw,
        "Request a withdrawal to your address: the amount is frozen and the withdrawal is "
        "pending until an operator sends or rejects it. The fixed fee is taken from the amount.",
        schemas.Withdrawal,
        (
            COIN,
            Param(
                "amount",
                "decimal",
                description="what leaves your balance, fee included; omitted = all available",
            ),
        ),
        auth=True,
        tag="wallet",
        limit="orders",
    ),
    Method(
        "get_withdrawals",
        "POST",
        get_withdrawals,
        "Your withdrawals, newest first.",
        list[schemas.Withdrawal],
        (
            Param("coin", description="only this coin", max_length=16),
            Param("limit", "integer", description="1-500, default 100"),
        ),
        auth=True,
        tag="wallet",
    ),
)

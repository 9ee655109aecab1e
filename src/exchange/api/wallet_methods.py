"""Wallet methods of SPEC §7: withdrawal addresses, withdrawals and their history.

Handlers only parse parameters and format answers; every rule (address
validation, cooldown, fee, minimum, freezing) lives in ``services.wallet`` and
the engine, so the web pages and the API cannot disagree.
"""

from __future__ import annotations

from typing import Any

from exchange.api import schemas
from exchange.api.context import Call, Method, coin, integer, optional_coin, optional_decimal, text
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


COIN = coin()
#: Longer than any real address, so an overlong one is refused as invalid_address.
ADDRESS = text(
    "address",
    "BTC: 1…, 3… or bc1…; ETH/USDT: 0x + 40 hex (EIP-55 if mixed case)",
    max_length=256,
)
AMOUNT = optional_decimal(
    "amount", "what leaves your balance, fee included; omitted = all available"
)
ONLY_COIN = optional_coin("only this coin")
LIMIT = integer("limit", "how many, newest first", default=100, low=1, high=500)


async def get_withdraw_address(call: Call) -> object:
    return address_view(await call.services.wallet.address(call.user_id, COIN.of(call).code))


async def set_withdraw_address(call: Call) -> object:
    # The coin is declared first: unknown_coin before anything about the address.
    wallet = call.services.wallet
    return address_view(
        await wallet.set_address(call.user_id, COIN.of(call).code, ADDRESS.of(call))
    )


async def withdraw(call: Call) -> object:
    asset = COIN.of(call)
    # No amount (or an empty one, as an HTML form sends) = the whole available balance.
    found = await call.services.wallet.withdraw(call.user_id, asset.code, AMOUNT.of(call))
    return withdrawal_view(found, asset.scale)


async def get_withdrawals(call: Call) -> object:
    wallet = call.services.wallet
    asset = ONLY_COIN.of(call)
    found = await wallet.withdrawals(
        call.user_id, None if asset is None else asset.code, LIMIT.of(call)
    )
    return [withdrawal_view(w, wallet.asset(w.coin).scale) for w in found]


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
        (COIN, ADDRESS),
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
        (COIN, AMOUNT),
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
        (ONLY_COIN, LIMIT),
        auth=True,
        tag="wallet",
    ),
)

"""Response payload shapes, used only to document ``data`` in ``/openapi.json``.

Handlers build plain dicts (cheap); these models describe them, and the
schemathesis suite checks that every real answer matches its description.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, RootModel


class Exists(BaseModel):
    exists: bool


class CodeSent(BaseModel):
    sent: bool
    expires_in: int = Field(description="seconds the code stays valid")


class Registered(BaseModel):
    user: str


class LoggedIn(BaseModel):
    user: str
    session: str = Field(description="session token; also set as the `session` cookie")


class Balance(BaseModel):
    available: str = Field(pattern=r"^\d+\.\d+$")
    frozen: str = Field(pattern=r"^\d+\.\d+$")


class Balances(RootModel[dict[str, Balance]]):
    pass


class OrderTrade(BaseModel):
    trade_id: int
    price: str
    amount: str
    fee: str
    fee_coin: str
    role: str = Field(description="maker or taker")
    time: int


class OrderInfo(BaseModel):
    order_id: int
    client_order_id: str | None
    pair: str
    side: str
    type: str
    time_in_force: str
    post_only: bool
    price: str | None
    amount: str
    filled: str
    average_price: str | None
    status: str
    created: int
    updated: int


class Order(OrderInfo):
    trades: list[OrderTrade]


class MyTrade(BaseModel):
    trade_id: int
    order_id: int
    pair: str
    side: str
    role: str
    price: str
    amount: str
    fee: str
    fee_coin: str
    time: int


# -- wallet (SPEC §7) ---------------------------------------------------------

_AMOUNT = r"^\d+\.\d+$"


class WithdrawAddress(BaseModel):
    coin: str
    address: str | None = Field(description="canonical form; null if never set")
    usable_from: int | None = Field(
        description="ms since the epoch from which `withdraw` may use it; null if unset"
    )


class WithdrawAddressSet(BaseModel):
    coin: str
    address: str = Field(description="canonical form (EIP-55 for ETH/USDT, lower-case bech32)")
    usable_from: int = Field(description="ms since the epoch from which `withdraw` may use it")


class Withdrawal(BaseModel):
    withdrawal_id: int
    coin: str
    amount: str = Field(pattern=_AMOUNT, description="what leaves the balance, fee included")
    fee: str = Field(
        pattern=_AMOUNT, description="kept by the exchange; the address receives amount - fee"
    )
    address: str
    status: str = Field(pattern=r"^(pending|sent|rejected)$", description="pending/sent/rejected")
    txid: str | None = Field(description="blockchain transaction id once sent")
    reason: str | None = Field(description="why it was rejected")
    created: int
    updated: int


class RankItem(BaseModel):
    rank: int
    pair: str
    price: str | None = Field(description="last trade price; null before the first trade")
    volume_24h: str = Field(description='base amount traded in the last 24 h; "0" if none')
    change_percent: str = Field(description='signed, 2 decimals, against open_today: "+1.25"')
    open_today: str | None = Field(description="first price of the UTC day, else the last price")


class Deal(BaseModel):
    id: int
    price: str
    amount: str
    time: int
    side: str = Field(description="the taker's side: buy or sell")


class Depth(BaseModel):
    timetick: int = Field(description="server time of the snapshot, ms")
    bids: list[tuple[str, str]] = Field(description="[price, amount], best (highest) first")
    asks: list[tuple[str, str]] = Field(description="[price, amount], best (lowest) first")


class ApiKeyInfo(BaseModel):
    id: int
    api_key: str = Field(description="sent as the X-MBX-APIKEY header of signed requests")
    label: str
    kind: str = Field(description="hmac (HMAC-SHA256) or ed25519")
    permissions: list[str] = Field(description='["read"] or ["read", "trade"]; never withdrawals')
    ips: list[str] = Field(description="addresses or networks it may be used from; [] = any")
    created: int


class ApiKeyCreated(ApiKeyInfo):
    secret: str | None = Field(
        description="the HMAC secret, shown in this answer only (null for Ed25519 keys)"
    )

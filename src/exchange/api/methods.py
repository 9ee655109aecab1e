"""The one method table: ``/router``, ``/api/<method>`` and ``/openapi.json`` all read it."""

from __future__ import annotations

from exchange.api import (
    account_methods,
    key_methods,
    market_methods,
    trading_methods,
    wallet_methods,
)
from exchange.api.context import Method

ALL_METHODS: tuple[Method, ...] = (
    *account_methods.METHODS,
    *key_methods.METHODS,
    *trading_methods.METHODS,
    *wallet_methods.METHODS,
    *market_methods.METHODS,
)

METHODS: dict[str, Method] = {method.name: method for method in ALL_METHODS}

"""Server-rendered pages show what the engine really does (the configured fees)."""

from __future__ import annotations

from support import make_settings, running_app


async def test_trade_page_shows_the_configured_taker_fee(sqlite_url: str) -> None:
    settings = make_settings(
        sqlite_url, fee_rate="0.0015", markets={"btc_usdt": {"taker_fee": "0.001"}}
    )
    async with running_app(settings) as (_app, client):
        btc = (await client.get("/trade/BTC_USDT")).text
        assert 'data-fee-rate="0.001"' in btc and "Fee 0.1 %" in btc
        eth = (await client.get("/trade/ETH_USDT")).text
        assert 'data-fee-rate="0.0015"' in eth and "Fee 0.15 %" in eth
        assert "0.002" not in eth and "0.2 %" not in eth

"""``exchange demo``: a live market within seconds, with conservation intact."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from exchange.bench.server import exchange_env, free_port, running_server
from support import check_database_ledger

PAIRS = ("BTC/USDT", "ETH/USDT", "ETH/BTC")


def test_demo_market_is_live_within_ten_seconds(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    env = exchange_env(url, EXCHANGE_LOG_LEVEL="info")
    log = tmp_path / "demo.log"
    with running_server(free_port(), env, log, command="demo") as server:
        started = time.monotonic()
        live: set[str] = set()
        while time.monotonic() - started < 10 and live != set(PAIRS):
            for pair in PAIRS:
                trades = httpx.get(
                    f"{server.url}/api/get_deal_record", params={"pair": pair}
                ).json()
                depth = httpx.get(f"{server.url}/api/get_depth", params={"pair": pair}).json()
                if trades["data"] and depth["data"]["bids"] and depth["data"]["asks"]:
                    live.add(pair)
            time.sleep(0.2)
        assert live == set(PAIRS), f"markets without trades or book after 10 s: {set(PAIRS) - live}"
        # The printed demo login works and is funded.
        answer = httpx.post(
            f"{server.url}/api/login", data={"user": "demo@example.com", "pass": "demo-password-1"}
        )
        token = answer.json()["data"]["session"]
        coins = httpx.post(
            f"{server.url}/api/get_user_coin", headers={"Authorization": f"Bearer {token}"}
        ).json()["data"]
        assert coins["BTC"]["available"] == "2.00000000"
        assert "log in as demo@example.com / demo-password-1" in log.read_text()
        assert server.stop() in (0, 130)  # Ctrl-C: 130 is the shell's code for SIGINT
        assert "Application shutdown complete" in log.read_text()
    check_database_ledger(url)

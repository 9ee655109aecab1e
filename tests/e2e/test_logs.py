"""A whole run's log, in ``EXCHANGE_LOG_FORMAT=json`` at debug level with the access log on.

A real server process is driven through everything that handles a secret —
codes, registration, logins (a wrong password too), sessions in a header, a
cookie, a query string and a WebSocket auth message, an API key's secret,
signed Binance requests, a listen key on ``/ws/<key>`` and ``/stream``, logout,
an operator's console login (password, TOTP secret and codes, session, form token)
— and its log is then read whole: every line is one JSON object with the
documented fields, the access lines name method, path, status, duration,
request id and client, and not one of the secrets the run used is in it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pyotp
import websockets
from ccxt_support import create_key
from load_support import credit

from exchange.bench.server import admin, exchange_env, free_port, running_server
from support import assert_envelope, smtp_server

PASSWORD = "correct-horse-42"
WRONG = "not-my-password-7"


def signed(secret: str, **params: str) -> tuple[str, str]:
    """(query with its signature, the signature) as a Binance client signs it."""
    params["timestamp"] = str(int(time.time() * 1000))
    query = urlencode(params)
    signature = hmac.new(secret.encode(), query.encode(), hashlib.sha256).hexdigest()
    return f"{query}&signature={signature}", signature


def console(env: dict[str, str], url: str, used: dict[str, str]) -> None:
    """An operator made on the CLI logs in to ``/admin``, enrols TOTP and logs in again."""
    password = used["operator password"] = "ledger-keeper-77"
    made = admin(env, "create-operator", "ops@example.com", "--password-stdin", stdin=password)
    assert made.returncode == 0, made.stderr
    origin = {"Origin": url}
    with httpx.Client(base_url=url) as http:
        form = {"email": "ops@example.com", "password": password, "code": ""}
        assert http.post("/admin/login", data=form, headers=origin).status_code == 303
        used["operator session"] = http.cookies["exchange_operator"]
        page = http.get("/admin/enroll").text
        secret = used["TOTP secret"] = re.findall(r'id="secret">([A-Z2-7 ]+)<', page)[0]
        secret = secret.replace(" ", "")
        used["TOTP secret (plain)"] = secret
        csrf = used["console form token"] = re.findall(r'name="csrf" value="(\w+)"', page)[0]
        totp = pyotp.TOTP(secret)
        code = used["TOTP code"] = totp.now()
        done = http.post("/admin/enroll", data={"csrf": csrf, "code": code}, headers=origin)
        assert done.status_code == 303, done.text
    with httpx.Client(base_url=url) as http:
        later = used["TOTP code (login)"] = totp.at(time.time() + totp.interval)
        form = {"email": "ops@example.com", "password": password, "code": later}
        assert http.post("/admin/login", data=form, headers=origin).status_code == 303
        assert http.get("/admin/withdrawals").status_code == 200


def test_a_whole_runs_json_log_names_no_secret(sqlite_url: str, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    used: dict[str, str] = {"password": PASSWORD, "wrong password": WRONG}
    with smtp_server() as (mailbox, smtp_port):
        env = exchange_env(
            sqlite_url,
            smtp_port,
            EXCHANGE_LOG_FORMAT="json",
            EXCHANGE_LOG_LEVEL="debug",
            EXCHANGE_ACCESS_LOG="true",
        )
        with running_server(free_port(), env, log) as server:
            url = server.url
            email = "alice@example.com"
            with httpx.Client(base_url=url) as http:
                assert http.post("/api/make_valid_code", data={"user": email}).json()["status"]
                code = used["code"] = mailbox.code_for(email)
                made = http.post(
                    "/api/regeist_user", data={"user": email, "pass": PASSWORD, "valid_code": code}
                )
                assert made.json()["status"], made.text
                wrong = http.post("/api/login", data={"user": email, "pass": WRONG})
                assert_envelope(wrong, 401, "invalid_credentials")
                answer = http.post(
                    "/api/login",
                    data={"user": email, "pass": PASSWORD},
                    headers={"X-Request-Id": "trace-login-1"},
                )
                assert answer.headers["x-request-id"] == "trace-login-1"
                token = used["session"] = answer.json()["data"]["session"]
                # The session in a query string, a header and a cookie.
                assert http.post(f"/api/get_user_coin?session={token}").json()["status"]
                bearer = {"Authorization": f"Bearer {token}"}
                assert http.post("/api/get_user_coin", headers=bearer).json()["status"]
            credit(sqlite_url, (email, "USDT", "1000"))
            key = create_key(url, token)
            used["api secret"] = key["secret"]
            api_key = {"X-MBX-APIKEY": key["api_key"]}
            query, signature = signed(key["secret"])
            used["signature (query)"] = signature
            account = httpx.get(f"{url}/api/v3/account?{query}", headers=api_key)
            assert account.status_code == 200, account.text
            body, signature = signed(
                key["secret"],
                symbol="BTCUSDT",
                side="BUY",
                type="LIMIT",
                timeInForce="GTC",
                quantity="0.01",
                price="20000",
            )
            used["signature (body)"] = signature
            placed = httpx.post(
                f"{url}/api/v3/order",
                content=body,
                headers={**api_key, "Content-Type": "application/x-www-form-urlencoded"},
            )
            assert placed.status_code == 200, placed.text
            bad = httpx.get(f"{url}/api/v3/account?{query[:-4]}beef", headers=api_key)
            assert bad.json()["code"] == -1022  # a wrong signature, logged as a failure
            listen = httpx.post(f"{url}/api/v3/userDataStream", headers=api_key).json()
            listen_key = used["listen key"] = listen["listenKey"]

            async def streams() -> None:
                host = f"ws://127.0.0.1:{server.port}"
                async with (
                    websockets.connect(f"{host}/ws/{listen_key}") as raw,
                    websockets.connect(f"{host}/stream?streams={listen_key}"),
                ):
                    async with websockets.connect(f"{host}/ws") as seed:
                        await seed.send(json.dumps({"op": "auth", "session": token}))
                        assert json.loads(await seed.recv())["op"] == "authenticated"
                    placed = httpx.post(
                        f"{url}/api/buy",
                        data={"pair": "BTC/USDT", "amount": "0.01", "price": "19000"},
                        headers={"Cookie": f"session={token}", "Origin": url},
                    )
                    assert placed.json()["status"], placed.text
                    report = json.loads(await asyncio.wait_for(raw.recv(), 10))
                    assert report["e"] in ("executionReport", "outboundAccountPosition")

            asyncio.run(streams())
            assert httpx.post(f"{url}/api/logout", headers={"Authorization": f"Bearer {token}"})
            console(env, url, used)
        # The server stopped: its log is complete.

    lines = log.read_text().splitlines()
    assert len(lines) > 20
    records = []
    for line in lines:
        record = json.loads(line)  # every line is one JSON object
        assert {"time", "level", "logger", "event"} <= set(record), line
        assert record["time"].endswith("Z")
        records.append(record)
    access = [r for r in records if r["logger"] == "exchange.access"]
    assert access, "no access lines"
    for record in access:
        assert {"request_id", "client", "method", "path", "status", "duration_ms"} <= set(record)
        assert "?" not in record["path"]
    traced = [r for r in access if r["request_id"] == "trace-login-1"]
    assert [(r["method"], r["path"], r["status"]) for r in traced] == [("POST", "/api/login", 200)]
    assert any(r["path"] == "/api/v3/order" and r["status"] == 200 for r in access)
    assert any(r["level"] == "debug" for r in records)  # the run really logged at debug
    text = log.read_text()
    leaked = {name: value for name, value in used.items() if value in text}
    assert not leaked, f"secrets in the log: {sorted(leaked)}"

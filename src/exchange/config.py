"""One settings object for every command (server, demo, admin CLI, bench).

All values come from ``EXCHANGE_*`` environment variables or a ``.env`` file, so
an operator configures the server and the admin CLI in one place.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the exchange; ``exchange --help`` lists them."""

    model_config = SettingsConfigDict(env_prefix="EXCHANGE_", env_file=".env", extra="ignore")

    database_url: str = Field(
        "sqlite:///exchange.db",
        description="sqlite:///relative.db, sqlite:////abs/path.db or postgresql://user@host/db",
    )
    host: str = Field("127.0.0.1", description="address `exchange serve` binds to")
    port: int = Field(8088, description="port `exchange serve` listens on")
    workers: int = Field(
        1, ge=1, le=64, description="HTTP worker processes of `exchange serve` (1 = one process)"
    )
    log_level: str = Field("info", description="debug, info, warning or error")
    log_format: Literal["text", "json"] = Field(
        "text", description="text, or json: one JSON object per line (docs/operations.md)"
    )
    access_log: bool = Field(
        False, description="a log line per HTTP request: method, path, status, duration"
    )
    metrics_address: str = Field(
        "127.0.0.1:9108",
        description="host:port of the Prometheus /metrics listener (the writer's process, "
        "or a gateway host's); empty = off. Keep it off the public network",
    )

    smtp_host: str = Field("", description="SMTP server; empty = codes go to the log")
    smtp_port: int = Field(25, description="SMTP port")
    smtp_user: str = Field("", description="SMTP user name (optional)")
    smtp_password: str = Field("", description="SMTP password (optional)")
    smtp_tls: Literal["none", "starttls", "tls"] = Field("none", description="none, starttls, tls")
    mail_from: str = Field("exchange@localhost", description="From: address of e-mails")

    secret_key: str = Field(
        "",
        description="the server's secret (HMAC of codes); empty = a random key in "
        "EXCHANGE_SECRET_KEY_FILE; set the same one on every host of one database",
    )
    secret_key_file: str = Field(
        "",
        description="where a generated key is kept (default: beside the SQLite database, "
        "or ./exchange-secret.key)",
    )
    session_lifetime: int = Field(12 * 3600, description="absolute session lifetime, s")
    session_idle: int = Field(30 * 60, description="idle session lifetime, s")
    operator_session_lifetime: int = Field(
        8 * 3600, ge=60, description="absolute lifetime of an operator console session, s"
    )
    operator_session_idle: int = Field(
        15 * 60, ge=60, description="idle lifetime of an operator console session, s"
    )
    cookie_secure: bool = Field(False, description="add Secure to the session cookie")
    allowed_origins: str = Field(
        "", description="extra origins allowed for cookie POSTs, comma separated"
    )
    allowed_hosts: str = Field(
        "",
        description="host names this server answers for, comma separated, besides the loopback "
        "names and EXCHANGE_HOST; * = any (a guard against DNS rebinding)",
    )
    trusted_proxies: str = Field(
        "",
        description="reverse proxies (addresses or CIDRs, comma separated) whose "
        "X-Forwarded-For/-Proto are honoured; empty = none",
    )

    http_max_header_bytes: int = Field(
        16 * 1024, ge=1024, description="largest request line + headers, bytes (431 beyond)"
    )
    http_max_url_bytes: int = Field(
        8 * 1024, ge=256, description="longest request URL, bytes (414 beyond)"
    )
    http_read_timeout: int = Field(
        10, ge=1, description="seconds for a whole request (headers and body) to arrive"
    )
    http_max_connections: int = Field(
        4096, ge=1, description="open connections per process, HTTP and WebSocket (503 beyond)"
    )
    ws_max_message: int = Field(
        4096, ge=256, description="largest WebSocket message and frame, bytes"
    )
    ws_max_connections: int = Field(2048, ge=1, description="WebSocket connections per process")
    ws_max_per_address: int = Field(
        16, ge=1, description="WebSocket connections per client address, per process"
    )
    ws_auth_failures: str = Field(
        "5/60", description="failed WebSocket auth messages per connection: n/seconds"
    )

    rate_limits: Literal["on", "off"] = Field("on", description="off for load tests")
    rate_limit_code: str = Field(
        "5/60", description="make_valid_code per client address: n/seconds"
    )
    rate_limit_login: str = Field("20/60", description="login per client address: n/seconds")
    rate_limit_login_user: str = Field("10/60", description="login per e-mail address: n/seconds")
    rate_limit_register: str = Field("10/60", description="regeist_user per client address")
    rate_limit_exists: str = Field("30/60", description="check_exist_name per client address")
    rate_limit_orders: str = Field("200/1", description="order placement and cancel per user")
    rate_limit_weight: str = Field(
        "6000/60",
        description="Binance API request weight per client address and window (n/seconds)",
    )
    rate_limit_auth_failures: str = Field(
        "30/60", description="requests or WebSocket auths with no valid session, per address"
    )
    password_hash_memory_kib: int = Field(19 * 1024, description="argon2id memory cost")
    password_hash_time_cost: int = Field(2, description="argon2id iterations")

    fee_rate: str = Field("0.002", description="default maker and taker fee of every market")
    markets: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="JSON overrides per market, e.g. "
        '{"BTC/USDT": {"tick": "0.1", "min_notional": "10", "taker_fee": "0.001"}}; '
        "keys tick, step, min_amount, min_notional, maker_fee, taker_fee; a new pair of the "
        "listed assets (BTC, ETH, USDT) adds a market",
    )
    client_order_id_ttl: int = Field(
        86_400,
        ge=60,
        description="seconds a client_order_id keeps naming its order (idempotent retries); "
        "kept at most a quarter longer, then the id may name a new order",
    )
    prune_interval: int = Field(
        600, ge=1, description="seconds between deletions of expired sessions, codes and failures"
    )
    nats_url: str = Field(
        "",
        description="NATS server (with JetStream) linking the writer and its gateways, "
        "nats://user:password@host:4222; empty: --workers starts a private one",
    )
    nats_credentials: str = Field(
        "",
        description="a NATS .creds file (user JWT and NKey seed, as nsc writes it) for "
        "EXCHANGE_NATS_URL's server",
    )
    nats_nkey_seed: str = Field(
        "",
        description="a file holding this process's NKey seed (SU…) for EXCHANGE_NATS_URL's server",
    )
    nats_prefix: str = Field(
        "exchange",
        pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
        description="first token of every NATS subject (one exchange per prefix)",
    )
    nats_events_max_age: int = Field(
        3600, ge=60, description="how long JetStream keeps committed batches for replay, s"
    )
    nats_events_max_bytes: int = Field(
        1024**3, ge=1024**2, description="at most this many bytes of batches kept for replay"
    )
    queue_size: int = Field(10_000, description="engine command queue; full = 503 overloaded")
    batch_size: int = Field(2_000, description="most commands committed in one transaction")
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL", description="SQLite fsync policy (FULL survives power loss)"
    )

    withdraw_address_cooldown: int = Field(
        86_400, description="seconds before a new withdrawal address may be used"
    )
    # Decimal strings (never floats): parsed exactly at the asset's scale by the wallet.
    withdraw_fee_btc: str = Field("0.0005", description="BTC withdrawal fee, taken from the amount")
    withdraw_min_btc: str = Field("0.001", description="smallest BTC withdrawal amount")
    withdraw_fee_eth: str = Field("0.005", description="ETH withdrawal fee, taken from the amount")
    withdraw_min_eth: str = Field("0.01", description="smallest ETH withdrawal amount")
    withdraw_fee_usdt: str = Field("1", description="USDT withdrawal fee, taken from the amount")
    withdraw_min_usdt: str = Field("10", description="smallest USDT withdrawal amount")
    demo_user: str = Field("demo@example.com", description="login of the demo account")
    demo_password: str = Field("demo-password-1", description="password of the demo account")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings are read once per process; tests build their own ``Settings``."""
    return Settings()

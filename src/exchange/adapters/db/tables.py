"""The schema. Money columns are BIGINT minor units (never REAL): exact and fast.

Migrations in ``migrations/versions`` create exactly these tables; a test checks
that the migrated schema and this metadata agree.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData()

# Big integers autoincrement on SQLite only as INTEGER PRIMARY KEY; the variant keeps
# PostgreSQL's BIGINT while SQLite gets its rowid alias.
Id = BigInteger().with_variant(Integer(), "sqlite")

users = Table(
    "users",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("email", String(254), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("created", BigInteger, nullable=False),
    Column("last_login", BigInteger, nullable=True),
)

verification_codes = Table(
    "verification_codes",
    metadata,
    Column("email", String(254), primary_key=True),
    Column("code_hash", String(64), nullable=False),
    Column("salt", String(32), nullable=False),
    Column("created", BigInteger, nullable=False),
    Column("expires", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("used", Boolean, nullable=False, default=False),
)

login_failures = Table(
    "login_failures",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("email", String(254), nullable=False),
    Column("time", BigInteger, nullable=False),
    Index("ix_login_failures_email_time", "email", "time"),
)

sessions = Table(
    "sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", BigInteger, nullable=False, index=True),
    Column("created", BigInteger, nullable=False),
    Column("last_seen", BigInteger, nullable=False),
)

#: API keys (Binance-style): ``key`` is what a client sends in X-MBX-APIKEY; ``secret``
#: is the HMAC secret sealed with the server key, or an Ed25519 public key's PEM.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", BigInteger, nullable=False, index=True),
    Column("key", String(64), nullable=False, unique=True),
    Column("label", String(64), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("secret", Text, nullable=False),
    Column("permissions", String(32), nullable=False),
    Column("ips", Text, nullable=False),
    Column("created", BigInteger, nullable=False),
    Column("revoked", BigInteger, nullable=True),
)

balances = Table(
    "balances",
    metadata,
    Column("user_id", BigInteger, primary_key=True, autoincrement=False),
    Column("asset", String(16), primary_key=True),
    Column("available", BigInteger, nullable=False),
    Column("frozen", BigInteger, nullable=False),
)

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", BigInteger, nullable=False),
    Column("asset", String(16), nullable=False),
    Column("d_available", BigInteger, nullable=False),
    Column("d_frozen", BigInteger, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("ref", BigInteger, nullable=False),
    Column("time", BigInteger, nullable=False),
    Index("ix_ledger_entries_user_asset", "user_id", "asset"),
)

orders = Table(
    "orders",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("user_id", BigInteger, nullable=False),
    Column("market", String(32), nullable=False),
    Column("side", String(4), nullable=False),
    Column("type", String(8), nullable=False),
    Column("tif", String(3), nullable=False),
    Column("post_only", Boolean, nullable=False),
    Column("price", BigInteger, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("filled", BigInteger, nullable=False),
    Column("quote_filled", BigInteger, nullable=False),
    Column("frozen", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("client_order_id", String(36), nullable=True),
    Column("created", BigInteger, nullable=False),
    Column("updated", BigInteger, nullable=False),
    # Not unique: an id names one order for the idempotency window only.
    Index("ix_orders_user_client_order_id", "user_id", "client_order_id"),
    Index(
        "ix_orders_client_id_created",
        "created",
        sqlite_where=text("client_order_id IS NOT NULL"),
        postgresql_where=text("client_order_id IS NOT NULL"),
    ),
    Index("ix_orders_user_id", "user_id", "id"),
    Index("ix_orders_status", "status"),
)

trades = Table(
    "trades",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("market", String(32), nullable=False),
    Column("price", BigInteger, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("quote", BigInteger, nullable=False),
    Column("taker_side", String(4), nullable=False),
    Column("maker_order_id", BigInteger, nullable=False),
    Column("taker_order_id", BigInteger, nullable=False),
    Column("maker_user_id", BigInteger, nullable=False),
    Column("taker_user_id", BigInteger, nullable=False),
    Column("maker_fee", BigInteger, nullable=False),
    Column("taker_fee", BigInteger, nullable=False),
    Column("time", BigInteger, nullable=False),
    Index("ix_trades_market_id", "market", "id"),
    Index("ix_trades_maker_user", "maker_user_id", "id"),
    Index("ix_trades_taker_user", "taker_user_id", "id"),
)

#: Operator controls in force: a halted market (kind "halt", key the pair) or a frozen
#: account (kind "freeze", key the user id); ``active`` false once lifted. Written by the
#: engine in the batch that applies the operator's command.
controls = Table(
    "controls",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("active", Boolean, nullable=False),
    Column("updated", BigInteger, nullable=False),
)

engine_inbox = Table(
    "engine_inbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("payload", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("result", Text, nullable=True),
    Column("created", BigInteger, nullable=False),
    Column("done", BigInteger, nullable=True),
    Index("ix_engine_inbox_status", "status", "id"),
)

admin_audit = Table(
    "admin_audit",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("actor", String(128), nullable=False),
    Column("action", String(32), nullable=False),
    Column("details", Text, nullable=False),
    Column("time", BigInteger, nullable=False),
)

#: Operator accounts of the console (``/admin``), apart from users: an argon2id password,
#: a TOTP secret sealed with the server key (``totp_confirmed`` once its first code was
#: entered), the last TOTP time step used (a code is never accepted twice) and a lockout.
operators = Table(
    "operators",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("email", String(254), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("totp_secret", String(255), nullable=True),
    Column("totp_confirmed", Boolean, nullable=False),
    Column("totp_last_step", BigInteger, nullable=False),
    Column("failures", Integer, nullable=False),
    Column("locked_until", BigInteger, nullable=False),
    Column("created", BigInteger, nullable=False),
    Column("last_login", BigInteger, nullable=True),
)

#: Console sessions, by SHA-256 of their token; ``stage`` is ``enroll`` (password
#: right, TOTP not yet set up: only the enrolment page) or ``full``.
operator_sessions = Table(
    "operator_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("operator_id", BigInteger, nullable=False, index=True),
    Column("stage", String(8), nullable=False),
    Column("created", BigInteger, nullable=False),
    Column("last_seen", BigInteger, nullable=False),
)

withdraw_addresses = Table(
    "withdraw_addresses",
    metadata,
    Column("user_id", BigInteger, primary_key=True, autoincrement=False),
    Column("coin", String(16), primary_key=True),
    Column("address", String(128), nullable=False),
    Column("usable_from", BigInteger, nullable=False),
    Column("updated", BigInteger, nullable=False),
)

withdrawals = Table(
    "withdrawals",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("user_id", BigInteger, nullable=False),
    Column("coin", String(16), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("fee", BigInteger, nullable=False),
    Column("address", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("txid", String(128), nullable=True),
    Column("reason", Text, nullable=True),
    Column("created", BigInteger, nullable=False),
    Column("updated", BigInteger, nullable=False),
    Index("ix_withdrawals_user_id", "user_id", "id"),
    Index("ix_withdrawals_status", "status", "id"),
)

# Candles are a cache derived from ``trades`` (the source of truth): market data
# keeps them in memory and writes changed ones here in the background, so a
# restart loads them instead of replaying every trade. ``trade_id`` is the last
# trade folded into the candle; trades after the newest one are replayed.
candles = Table(
    "candles",
    metadata,
    Column("market", String(32), primary_key=True),
    Column("period", String(8), primary_key=True),
    Column("time", BigInteger, primary_key=True, autoincrement=False),
    Column("open", BigInteger, nullable=False),
    Column("high", BigInteger, nullable=False),
    Column("low", BigInteger, nullable=False),
    Column("close", BigInteger, nullable=False),
    Column("volume", BigInteger, nullable=False),
    Column("trade_id", BigInteger, nullable=False),
    # Binance's kline and 24 h ticker figures (migration 0005).
    Column("quote_volume", BigInteger, nullable=False, default=0),
    Column("trades", BigInteger, nullable=False, default=0),
    Column("buy_volume", BigInteger, nullable=False, default=0),
    Column("buy_quote", BigInteger, nullable=False, default=0),
    Column("first_trade_id", BigInteger, nullable=False, default=0),
)

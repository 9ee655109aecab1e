"""The migrations build exactly the schema ``tables.py`` declares, and upgrade with data."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import insert, select

from exchange.adapters.db import database
from exchange.adapters.db.tables import metadata, orders


def test_migrated_schema_is_the_declared_one(database_url: str) -> None:
    database.migrate(database_url)
    engine = database.make_sync_engine(database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            differences = compare_metadata(context, metadata)
    finally:
        engine.dispose()
    assert differences == []


def test_upgrade_keeps_orders_and_lets_an_expired_client_id_be_used_again(
    database_url: str,
) -> None:
    config = Config()
    config.set_main_option("script_location", str(database.MIGRATIONS))
    config.attributes["configure_logger"] = False
    path = database.sqlite_path(database_url)
    if path is not None:
        database.create_private(path)
    engine = database.make_sync_engine(database_url)
    row = {
        "id": 1,
        "user_id": 5,
        "market": "BTC/USDT",
        "side": "buy",
        "type": "limit",
        "tif": "GTC",
        "post_only": False,
        "price": 1,
        "amount": 1,
        "filled": 0,
        "quote_filled": 0,
        "frozen": 0,
        "status": "canceled",
        "client_order_id": "k",
        "created": 1,
        "updated": 1,
    }
    try:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0002")
            conn.execute(insert(orders).values(row))
        database.migrate(database_url)
        with engine.begin() as conn:
            conn.execute(insert(orders).values({**row, "id": 2, "created": 10**12}))
            found = conn.execute(select(orders.c.id).where(orders.c.client_order_id == "k"))
            assert sorted(found.scalars()) == [1, 2]
    finally:
        engine.dispose()

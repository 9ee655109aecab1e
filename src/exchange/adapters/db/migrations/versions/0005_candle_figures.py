"""candles: quote volume, trade count, taker-buy volumes, first trade id

The Binance-compatible API shows these in klines and 24 h tickers. Existing
candles are deleted: market data rebuilds every candle from the trades table
(the source of truth) at the next start, with the new figures filled in.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

COLUMNS = ("quote_volume", "trades", "buy_volume", "buy_quote", "first_trade_id")


def upgrade() -> None:
    op.execute("DELETE FROM candles")
    with op.batch_alter_table("candles") as batch:
        for name in COLUMNS:
            batch.add_column(
                sa.Column(name, sa.BigInteger(), nullable=False, server_default=sa.text("0"))
            )


def downgrade() -> None:
    with op.batch_alter_table("candles") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)

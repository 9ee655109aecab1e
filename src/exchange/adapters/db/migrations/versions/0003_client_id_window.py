"""orders: a client_order_id names one order for a window, not forever

The idempotency window (EXCHANGE_CLIENT_ORDER_ID_TTL) lets an id be used again
once it expired, so (user_id, client_order_id) is no longer unique; it stays
indexed for lookups, and a partial index on ``created`` serves the start-up
load of the ids still inside the window.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

WITH_CLIENT_ID = sa.text("client_order_id IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_constraint("uq_orders_user_client_order_id", type_="unique")
        batch_op.create_index(
            "ix_orders_user_client_order_id", ["user_id", "client_order_id"], unique=False
        )
        batch_op.create_index(
            "ix_orders_client_id_created",
            ["created"],
            unique=False,
            sqlite_where=WITH_CLIENT_ID,
            postgresql_where=WITH_CLIENT_ID,
        )


def downgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index("ix_orders_client_id_created")
        batch_op.drop_index("ix_orders_user_client_order_id")
        batch_op.create_unique_constraint(
            "uq_orders_user_client_order_id", ["user_id", "client_order_id"]
        )

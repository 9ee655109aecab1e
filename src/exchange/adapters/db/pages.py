"""One page of rows by id and time bounds, as the history endpoints of the Binance API ask.

With a lower bound (``from_id`` or ``start``) a page is the first ``limit`` rows
from it; with none, the last ``limit`` rows (up to ``end``). The query is ordered
so the database reads only that page; the caller puts newest-first rows back in
ascending order (``ascending`` says which it got).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select

__all__ = ["bounded"]


def bounded(
    query: Select[Any],
    id_column: ColumnElement[int],
    time_column: ColumnElement[int],
    from_id: int | None,
    start: int | None,
    end: int | None,
    limit: int,
) -> tuple[Select[Any], bool]:
    if from_id is not None:
        query = query.where(id_column >= from_id)
    if start is not None:
        query = query.where(time_column >= start)
    if end is not None:
        query = query.where(time_column <= end)
    ascending = from_id is not None or start is not None
    return query.order_by(id_column if ascending else id_column.desc()).limit(limit), ascending

"""``Order.snapshot``: the copy an answer is built from."""

from __future__ import annotations

import dataclasses

from exchange.domain.orders import Order


def test_a_snapshot_copies_every_field_and_is_not_the_order() -> None:
    # Every field a distinct value, so a field copied from the wrong place shows.
    values = {}
    for number, field in enumerate(dataclasses.fields(Order), start=1):
        # The annotations are text here (``from __future__ import annotations``).
        kinds = {"bool": True, "str": f"text{number}", "str | None": f"id{number}"}
        values[field.name] = kinds.get(str(field.type), number)
    order = Order(**values)  # type: ignore[arg-type]
    copy = order.snapshot()
    assert copy is not order
    assert dataclasses.astuple(copy) == dataclasses.astuple(order)
    order.filled = 12345
    order.status = "filled"
    assert copy.filled == values["filled"]
    assert copy.status == values["status"]

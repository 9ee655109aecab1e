"""How every process of the exchange logs: the server, its workers and the CLI.

One place, so that a worker process logs exactly like the parent that started it.
"""

from __future__ import annotations

import logging

from exchange.config import Settings

__all__ = ["configure_logging"]


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

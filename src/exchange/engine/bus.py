"""The writer and its gateways on NATS: the subjects, the stream, and how to connect.

* ``<prefix>.cmd.<kind>`` — a gateway's command (``place``, ``cancel``,
  ``withdraw``), a NATS request answered by the writer after the commit; the
  writer subscribes in the queue group ``writer``, so a standby writer could
  take over the subjects.
* ``<prefix>.bal`` — a user's committed balances; ``<prefix>.snapshot`` — the
  full depth of every book, the batch number it holds and the writer's epoch.
* ``<prefix>.events`` — one message per committed batch, in the JetStream
  stream ``<PREFIX>_EVENTS`` (message id ``<epoch>.<batch>``: a repeated
  publish is stored once). Retention is bounded by age and size; a gateway that
  falls behind it takes a new snapshot.
* ``<prefix>.revoke`` — a session ended: every gateway forgets its cached copy.
* ``<prefix>.alive`` — the writer's heartbeat, every ``HEARTBEAT_SECONDS``, with its
  epoch and last batch: a gateway that hears none for ``SILENT_SECONDS`` answers
  503 (the writer is gone); one that hears a new epoch follows the new writer.

The gateway account may publish only the requests and ``revoke`` (see
``adapters/nats_server.gateway_permissions``): batches come from the writer alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError

__all__ = ["COMMAND_KINDS", "NatsAuth", "Subjects", "connect"]

log = logging.getLogger("exchange.bus")

#: Command class -> the last token of its subject.
COMMAND_KINDS = {"PlaceOrder": "place", "CancelOrder": "cancel", "RequestWithdrawal": "withdraw"}
HEARTBEAT_SECONDS = 0.5  # float-ok: seconds between the writer's heartbeats
SILENT_SECONDS = 2.0  # float-ok: seconds without one before gateways refuse commands
RECONNECT_SECONDS = 0.2  # float-ok: seconds between reconnection attempts
FIRST_CONNECT_SECONDS = 10  # a process that cannot connect at start says why and stops
REPEAT_SECONDS = 10  # the same NATS error is logged again at most this often
#: What a connection buffers while NATS is away (then new messages are refused).
PENDING_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Subjects:
    prefix: str = "exchange"

    @property
    def stream(self) -> str:
        return self.prefix.upper().replace(".", "_").replace("-", "_") + "_EVENTS"

    @property
    def events(self) -> str:
        return f"{self.prefix}.events"

    def command(self, class_name: str) -> str:
        return f"{self.prefix}.cmd.{COMMAND_KINDS[class_name]}"

    @property
    def commands(self) -> str:
        return f"{self.prefix}.cmd.*"

    @property
    def balances(self) -> str:
        return f"{self.prefix}.bal"

    @property
    def snapshot(self) -> str:
        return f"{self.prefix}.snapshot"

    @property
    def revoke(self) -> str:
        return f"{self.prefix}.revoke"

    @property
    def alive(self) -> str:
        return f"{self.prefix}.alive"


@dataclass(frozen=True, slots=True)
class NatsAuth:
    """Who this process is to a NATS server of one's own, beyond a URL's user:password:
    a ``.creds`` file (decentralised JWT auth, as ``nsc`` writes it) or a file holding
    an NKey seed (the server lists the public key). Paths only: the secrets stay in
    their files (0600), never in settings dumps or logs."""

    credentials: str = ""
    nkey_seed: str = ""

    def options(self) -> dict[str, str]:
        """nats-py's ``connect`` keywords for these; ConnectionError (never showing the
        value: it may be the secret itself, pasted by mistake) if one is not a file."""
        if self.credentials and self.nkey_seed:
            raise ConnectionError(
                "set EXCHANGE_NATS_CREDENTIALS or EXCHANGE_NATS_NKEY_SEED, not both"
            )
        for name, path in (
            ("EXCHANGE_NATS_CREDENTIALS", self.credentials),
            ("EXCHANGE_NATS_NKEY_SEED", self.nkey_seed),
        ):
            if path and not os.path.isfile(path):
                raise ConnectionError(f"{name} must name a readable file (its value is not shown)")
        options: dict[str, str] = {}
        if self.credentials:
            options["user_credentials"] = self.credentials
        if self.nkey_seed:
            options["nkeys_seed"] = self.nkey_seed
        return options


async def connect(url: str, name: str, auth: NatsAuth | None = None, **callbacks: Any) -> Client:
    """A connection that reconnects forever (every ``RECONNECT_SECONDS``) and buffers
    what is published meanwhile. ``url`` may carry a user and password; it is never
    logged. ``callbacks``: nats-py's ``disconnected_cb``, ``reconnected_cb``..."""

    last, last_at = "no answer", 0.0  # float-ok: monotonic seconds

    async def error(failure: Exception) -> None:
        nonlocal last, last_at
        # nats-py's own errors carry the server's words ("authorization violation"),
        # never the URL; anything else is named by its type only.
        what = str(failure) if isinstance(failure, NatsError) else type(failure).__name__
        now = time.monotonic()
        if what != last or now - last_at >= REPEAT_SECONDS:  # no flood
            log.warning("%s: NATS: %s", name, what)
            last, last_at = what, now

    try:
        async with asyncio.timeout(FIRST_CONNECT_SECONDS):
            return await _connect(url, name, auth, error, callbacks)
    except TimeoutError:
        raise ConnectionError(f"cannot reach NATS: {last}") from None


async def _connect(
    url: str,
    name: str,
    auth: NatsAuth | None,
    error: Callable[[Exception], Awaitable[None]],
    callbacks: dict[str, Any],
) -> Client:
    return await nats.connect(
        url,
        name=name,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=RECONNECT_SECONDS,
        connect_timeout=2,
        pending_size=PENDING_BYTES,
        error_cb=error,
        **(auth or NatsAuth()).options(),
        **callbacks,
    )

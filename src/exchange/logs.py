"""How every process of the exchange logs: the server, its workers and the CLI.

One place, so that a worker process logs exactly like the parent that started it,
and uvicorn's own lines go through the same handler (``server_config`` passes
``log_config=None``): with ``EXCHANGE_LOG_FORMAT=json`` every line of a run is
one JSON object.

Fields of a JSON line: ``time`` (UTC, ISO 8601 with milliseconds), ``level``,
``logger``, ``event`` (the message), and — for lines written while a request
is handled — ``request_id`` and ``client``; access lines (``EXCHANGE_ACCESS_LOG``)
add ``method``, ``path`` (never the query string: it may carry a session or a
signature), ``status`` and ``duration_ms``. A logged exception adds ``exc_type``
and ``traceback``.

What never reaches a log line: passwords, codes, session tokens, API secrets,
signatures, listen keys (the development mailer's e-mails are the one
exception: without SMTP the code is the log's, loudly). WebSocket frame
tracing (``websockets`` through uvicorn's ``uvicorn.error`` logger) is held at
INFO even at debug level, since a frame may be an auth message.
``tests/e2e/test_logs.py`` greps a whole run's log for every secret the run used.
"""

from __future__ import annotations

import contextvars
import datetime
import itertools
import logging
import re
import secrets
from collections.abc import MutableMapping
from typing import Any

import orjson

from exchange.config import Settings

__all__ = ["REQUEST", "JsonFormatter", "configure_logging", "request_id"]

#: The ASGI scope of the request being handled (its ``request_id`` and ``client``, read when
#: a line is written: a trusted proxy's middleware fixes the client in place).
REQUEST: contextvars.ContextVar[MutableMapping[str, Any] | None] = contextvars.ContextVar(
    "request", default=None
)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Loggers that would write a secret at debug level (WebSocket frames carry auth messages).
QUIET_AT_DEBUG = ("websockets", "uvicorn.error")
#: Attributes an access line sets with ``extra=`` (copied into the JSON object).
ACCESS_FIELDS = ("method", "path", "status", "duration_ms")


class _RequestContext(logging.Filter):
    """Adds the request's id and client address to the lines logged while it is handled."""

    def filter(self, record: logging.LogRecord) -> bool:
        scope = REQUEST.get()
        if scope is not None and not hasattr(record, "request_id"):
            record.request_id = request_id(scope)
            client = scope.get("client")
            record.client = client[0] if client else None
        return True


def redacted_path(path: str) -> str:
    """A path fit for a log line: no query string, no segment long enough to be a key."""
    path = path.split("?", 1)[0]
    return "/".join("<redacted>" if len(part) >= 32 else part for part in path.split("/"))


class _WebSocketPaths(logging.Filter):
    """uvicorn logs every WebSocket handshake with its path and query string, which may
    carry a listen key (``/ws/<listenKey>``, ``/stream?streams=<listenKey>``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (
            isinstance(record.msg, str)
            and '"WebSocket %s"' in record.msg
            and isinstance(args, tuple)
            and len(args) >= 2
        ):
            record.args = (args[0], redacted_path(str(args[1])), *args[2:])
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line (orjson: strings are escaped, a newline cannot split it)."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line: dict[str, Any] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            line["request_id"] = request_id
            line["client"] = getattr(record, "client", None)
        for name in ACCESS_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info and record.exc_info[0] is not None:
            line["exc_type"] = record.exc_info[0].__name__
            line["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


_ID_PREFIX = secrets.token_hex(4)  # per process: ids stay unique across workers
_ids = itertools.count(1)
_SAFE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")


def request_id(scope: MutableMapping[str, Any]) -> str:
    """The request's id: its ``X-Request-Id`` when that is a plain token, else a new one.

    Made when first asked for (a log line, the access line) and kept in the scope:
    requests that log nothing pay nothing for it."""
    found = scope.get("request_id")
    if found is None:
        for key, value in scope.get("headers", ()):
            if key == b"x-request-id":
                if _SAFE_ID.fullmatch(value):
                    found = value.decode("latin-1")
                break
        if found is None:
            found = f"{_ID_PREFIX}-{next(_ids):x}"
        scope["request_id"] = found
    return str(found)


def configure_logging(settings: Settings) -> None:
    """The root handler every logger of the process writes through (uvicorn's too)."""
    level = settings.log_level.upper()
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.addFilter(_RequestContext())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    handshakes = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _WebSocketPaths) for f in handshakes.filters):
        handshakes.addFilter(_WebSocketPaths())
    for name in QUIET_AT_DEBUG:
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))

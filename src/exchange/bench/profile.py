"""Where a durable order's time goes: py-spy's samples of the server, by stage.

``exchange bench profile`` runs ``bench orders``' load while py-spy samples the
server's processes (``--gil``: only the thread holding the GIL, which is what
one Python process spends; a commit's fsync releases it and is the commit
histogram's business) into collapsed stacks, then gives each sample to the
stage of the frame nearest its leaf that a pattern below names. The table goes
into docs/performance.md; the same file opens as a flame graph in speedscope or
``flamegraph.pl``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

__all__ = ["STAGES", "stage_shares"]

#: (stage, substrings of a frame ``function (file)``), looked for from the leaf up.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("HTTP write", ("RequestResponseCycle.send", "on_response_complete")),
    ("NATS link", ("nats/", "engine/bus", "engine/gateway.py", "engine/wire.py")),
    ("database (driver, SQL)", ("sqlalchemy/", "aiosqlite/", "psycopg", "sqlite3", "_transaction")),
    ("journal rows", ("engine/journal.py", "engine/rows.py")),
    (
        "matching and ledger",
        (
            "domain/matching.py",
            "domain/book.py",
            "domain/ledger.py",
            "domain/orders.py",
            "Engine._apply",
        ),
    ),
    ("market data", ("services/marketdata.py", "domain/candles.py", "services/candles")),
    (
        "streams",
        (
            "api/fanout.py",
            "api/subscribers.py",
            "api/ws.py",
            "binance/stream",
            "services/stream",
            "user_stream",
        ),
    ),
    (
        "answer formatting",
        ("api/views.py", "send_json", "api/envelope.py", "format_units", "binance/views"),
    ),
    (
        "params",
        (
            "api/params.py",
            "domain/money.py",
            "parse_amount",
            "parse_price",
            "request_params",
            "read_body",
            "parse_form",
            "urllib/parse",
        ),
    ),
    ("session", ("services/sessions.py", "services/api_keys", "signatures.py")),
    ("rate limit", ("api/limits.py",)),
    ("metrics", ("exchange/metrics.py", "prometheus_client")),
    (
        "queue hand-off, engine loop",
        ("engine/engine.py", "engine/queue", "Future.set_result", "_invoke_callbacks"),
    ),
    (
        "dispatch (router, methods)",
        ("api/router.py", "exchange/app.py", "_methods.py", "front_door.py", "api/binance/"),
    ),
    ("HTTP parse", ("exchange/server.py", "uvicorn/protocols")),
)
OTHER = "event loop (uvloop: sockets, task switches) and the rest"


def stage_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for stage, patterns in STAGES:
            if any(pattern in frame for pattern in patterns):
                return stage
    return OTHER


def role_of(first: str) -> str:
    """``process writer 123`` (as ``bench.orders.sampled`` names each process) → writer."""
    parts = first.split()
    return parts[1] if len(parts) == 3 and parts[0] == "process" else "server"


def stage_shares(collapsed: Path) -> dict[str, dict[str, float]]:
    """role → stage → share of that role's samples (0..1), from py-spy's raw output."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for line in collapsed.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not number.isdigit():
            continue
        frames = stack.split(";")
        counts[role_of(frames[0])][stage_of(frames[1:])] += int(number)
    return {
        role: {stage: n / sum(found.values()) for stage, n in found.most_common()}
        for role, found in counts.items()
    }

"""The profile's stage table: each sample goes to the stage of the frame nearest its leaf."""

from __future__ import annotations

from pathlib import Path

import pytest

from exchange.bench.profile import OTHER, stage_of, stage_shares

WRITER = "process writer 10"
GATEWAY = "process gateway 11"
APP = "Runner.run (asyncio/runners.py);ExchangeApp.__call__ (exchange/app.py)"


@pytest.mark.parametrize(
    ("leaf", "stage"),
    [
        (
            "Dispatcher._dispatch (exchange/api/router.py);"
            "parse_decimal (exchange/domain/money.py)",
            "params",
        ),
        (
            "Dispatcher._dispatch (exchange/api/router.py);send_json (exchange/api/router.py);"
            "RequestResponseCycle.send (uvicorn/protocols/http/httptools_impl.py)",
            "HTTP write",
        ),
        (
            "Engine._run (exchange/engine/engine.py);"
            "MatchingEngine.place (exchange/domain/matching.py)",
            "matching and ledger",
        ),
        (
            "Journal.commit (exchange/engine/journal.py);"
            "Connection.execute (sqlalchemy/engine/base.py)",
            "database (driver, SQL)",
        ),
        ("Dispatcher._dispatch (exchange/api/router.py)", "dispatch (router, methods)"),
    ],
)
def test_a_sample_belongs_to_the_stage_nearest_its_leaf(leaf: str, stage: str) -> None:
    assert stage_of(f"{APP};{leaf}".split(";")) == stage


def test_the_loop_itself_is_not_counted_as_http() -> None:
    frames = "Server.run (uvicorn/server.py);asyncio_run (uvicorn/_compat.py);Runner.run (x)"
    assert stage_of(frames.split(";")) == OTHER


def test_shares_are_per_process_and_add_up(tmp_path: Path) -> None:
    collapsed = tmp_path / "profile.txt"
    collapsed.write_text(
        f"{WRITER};{APP};Engine._apply (exchange/engine/engine.py) 30\n"
        f"{WRITER};{APP};TableWriter.run (exchange/engine/journal.py) 10\n"
        f"{GATEWAY};{APP};Sessions.resolve (exchange/services/sessions.py) 5\n"
    )
    shares = stage_shares(collapsed)
    assert shares["writer"] == {"matching and ledger": 0.75, "journal rows": 0.25}
    assert shares["gateway"] == {"session": 1.0}

"""``exchange serve | demo | admin … | bench …`` — every command reads the same settings."""

from __future__ import annotations

import sys
from typing import Annotated, Any, NoReturn

import typer

from exchange.config import Settings, get_settings
from exchange.domain.errors import ExchangeError
from exchange.logs import configure_logging


def _settings_help() -> str:
    lines = ["Settings (environment variables or a .env file):", ""]
    for name, field in Settings.model_fields.items():
        lines.append(f"  EXCHANGE_{name.upper()}  {field.description or ''} [{field.default}]")
    return "\n\n".join(["", *lines[:1]]) + "\n\n" + "\n\n".join(lines[2:])


app = typer.Typer(
    help="A spot cryptocurrency exchange.",
    epilog=_settings_help(),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
admin = typer.Typer(help="Operator commands: credit deposits, review withdrawals.")
app.add_typer(admin, name="admin")
bench = typer.Typer(
    help="Benchmarks: print figures (name value unit), never pass/fail.",
    invoke_without_command=True,
)
app.add_typer(bench, name="bench")

JSON_OPTION = typer.Option("--json", help="print a JSON summary too")
WORKERS_OPTION = typer.Option(min=1, max=64, help="the server's HTTP workers (serve --workers)")


def _serve(settings: Settings, host: str | None, port: int | None, *, demo: bool) -> None:
    import uvicorn

    from exchange.app import create_app
    from exchange.server import server_config

    configure_logging(settings)
    settings = settings.model_copy(
        update={"host": host or settings.host, "port": port or settings.port}
    )
    application: Any = create_app(settings)
    if demo:
        from exchange.demo.bots import attach_demo

        attach_demo(application.runtime, f"http://{settings.host}:{settings.port}")
    config = server_config(application, settings, host=settings.host, port=settings.port)
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise SystemExit(3)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address [EXCHANGE_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="port [EXCHANGE_PORT]")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="HTTP worker processes in front of the one writer process; 1 = a single "
            "process [EXCHANGE_WORKERS]",
        ),
    ] = None,
    role: Annotated[
        str,
        typer.Option(
            help="'all' (the writer and its HTTP workers here) or 'writer' (no HTTP: "
            "gateways on other hosts reach it through EXCHANGE_NATS_URL)"
        ),
    ] = "all",
) -> None:
    """Run the exchange server."""
    settings = get_settings()
    count = workers or settings.workers
    if role not in ("all", "writer"):
        typer.echo(f"error: --role must be 'all' or 'writer', not {role!r}", err=True)
        raise SystemExit(2)
    if role == "writer":
        count = 0
    if count > 1 or role == "writer":
        from exchange.workers import run_workers

        configure_logging(settings)
        settings = settings.model_copy(
            update={"host": host or settings.host, "port": port or settings.port}
        )
        code = run_workers(settings, settings.host, settings.port, count)
        if code:
            raise SystemExit(code)
        return
    _serve(settings, host, port, demo=False)


@app.command()
def gateway(
    nats: Annotated[
        str | None, typer.Option(help="the writer's NATS server, nats://… [EXCHANGE_NATS_URL]")
    ] = None,
    host: Annotated[str | None, typer.Option(help="bind address [EXCHANGE_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="port [EXCHANGE_PORT]")] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="gateway processes")] = 1,
) -> None:
    """An API gateway on any host: the whole API, pages and streams, the engine behind NATS
    (the writer runs `exchange serve --role writer` or `--workers N` elsewhere)."""
    from exchange.workers import run_gateways  # the app only later: metrics choose first

    settings = get_settings()
    configure_logging(settings)
    settings = settings.model_copy(
        update={
            "host": host or settings.host,
            "port": port or settings.port,
            "nats_url": nats or settings.nats_url,
        }
    )
    if not settings.nats_url:
        typer.echo(
            "error: a gateway needs the writer's NATS server: --nats or EXCHANGE_NATS_URL", err=True
        )
        raise SystemExit(2)
    if workers > 1:
        code = run_gateways(settings, settings.host, settings.port, workers)
        if code:
            raise SystemExit(code)
        return
    import uvicorn

    from exchange.app import create_app
    from exchange.server import server_config

    application: Any = create_app(settings, gateway_url=settings.nats_url)
    config = server_config(application, settings, host=settings.host, port=settings.port)
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise SystemExit(3)


@app.command()
def demo(
    host: Annotated[str | None, typer.Option(help="bind address [EXCHANGE_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="port [EXCHANGE_PORT]")] = None,
) -> None:
    """Run the server with market-making bots and a funded demo user."""
    _serve(get_settings(), host, port, demo=True)


@app.command()
def audit() -> None:
    """Check the books from the database (read-only; safe while the server runs): balances
    against the ledger, zero sums, trades, orders, frozen amounts. Exit 1 with one line per
    difference."""
    from exchange.adapters.db.database import make_sync_engine, sqlite_path
    from exchange.audit import audit as find_differences

    settings = get_settings()
    path = sqlite_path(settings.database_url)
    if path is not None and not path.exists():
        typer.echo(f"error: there is no database at {path}", err=True)
        raise SystemExit(2)
    db = make_sync_engine(settings.database_url)
    try:
        differences = find_differences(db)
    except Exception as error:  # no schema, no server, no permission: say so, no trace
        typer.echo(f"error: cannot read the database ({type(error).__name__})", err=True)
        raise SystemExit(2) from None
    finally:
        db.dispose()
    for line in differences:
        typer.echo(line)
    if differences:
        typer.echo(f"{len(differences)} differences found", err=True)
        raise SystemExit(1)
    typer.echo("the books balance: every balance, trade, order and hold agrees with the ledger")


@app.command()
def backup(
    file: Annotated[str, typer.Argument(help="the new backup file (must not exist)")],
) -> None:
    """A consistent copy of the database, taken while the server runs (SQLite's online
    backup; pg_dump for PostgreSQL)."""
    from pathlib import Path

    from exchange.backup import BackupError
    from exchange.backup import backup as take

    try:
        copied = take(get_settings().database_url, Path(file))
    except BackupError as error:
        typer.echo(f"error: {error}", err=True)
        raise SystemExit(1) from None
    typer.echo(f"backed up the {copied.kind} database to {copied.path} ({copied.size} bytes)")


@app.command()
def restore(
    file: Annotated[str, typer.Argument(help="a file made by exchange backup")],
    replace: Annotated[
        bool, typer.Option("--replace", help="overwrite a database that holds an exchange")
    ] = False,
) -> None:
    """Put a backup into the configured database; refuses while a server uses it."""
    from pathlib import Path

    from exchange.backup import BackupError
    from exchange.backup import restore as put_back

    try:
        copied = put_back(get_settings().database_url, Path(file), replace=replace)
    except BackupError as error:
        typer.echo(f"error: {error}", err=True)
        raise SystemExit(1) from None
    typer.echo(f"restored {copied.path} into the {copied.kind} database; start the server")


def _admin() -> Any:
    from exchange.adapters.db.database import make_sync_engine, migrate
    from exchange.admin import Admin
    from exchange.runtime import configured_markets

    settings = get_settings()
    migrate(settings.database_url)
    db = make_sync_engine(settings.database_url, synchronous=settings.sqlite_synchronous)
    return Admin(db, settings.database_url, configured_markets(settings))


def _fail(error: ExchangeError) -> NoReturn:
    typer.echo(f"error: {error.message}", err=True)
    raise SystemExit(1)


@admin.command()
def credit(
    email: str,
    coin: str,
    amount: str,
    note: Annotated[str, typer.Option(help="why (kept in the audit log)")] = "",
) -> None:
    """Credit a deposit to a user (a ledger entry from the deposit account)."""
    try:
        result = _admin().credit(email, coin, amount, note)
    except ExchangeError as error:
        _fail(error)
    typer.echo(f"credited {amount} {result['asset']} to {email}")


@admin.command("withdrawals")
def list_withdrawals(
    status: Annotated[str | None, typer.Option(help="pending, sent or rejected")] = None,
) -> None:
    """List withdrawals (all, or one status)."""
    from exchange.domain.money import format_units

    tool = _admin()
    try:
        rows = tool.withdrawals(status)
    except ExchangeError as error:
        _fail(error)
    for row in rows:
        scale = tool.assets[row["coin"]].scale
        typer.echo(
            f"{row['id']}\t{row['status']}\t{row['email']}\t{row['coin']}\t"
            f"{format_units(row['amount'], scale)}\tfee {format_units(row['fee'], scale)}\t"
            f"{row['address']}\t{row['txid'] or row['reason'] or ''}"
        )


@admin.command()
def approve(
    withdrawal_id: int,
    txid: Annotated[str, typer.Option(help="the blockchain transaction id")],
) -> None:
    """Mark a pending withdrawal sent; its funds leave through the withdrawal account."""
    try:
        _admin().approve(withdrawal_id, txid)
    except ExchangeError as error:
        _fail(error)
    typer.echo(f"withdrawal {withdrawal_id} sent")


@admin.command()
def reject(
    withdrawal_id: int,
    reason: Annotated[str, typer.Option(help="shown to the user")],
) -> None:
    """Reject a pending withdrawal; its amount returns to the user's balance."""
    try:
        _admin().reject(withdrawal_id, reason)
    except ExchangeError as error:
        _fail(error)
    typer.echo(f"withdrawal {withdrawal_id} rejected")


NOTE_OPTION = typer.Option(help="why (kept in the audit log)")


@admin.command()
def halt(pair: str, note: Annotated[str, NOTE_OPTION] = "") -> None:
    """Halt a market: new orders are refused (market_halted), cancels still work."""
    try:
        result = _admin().halt(pair, note)
    except ExchangeError as error:
        _fail(error)
    state = "halted" if result["changed"] else "was already halted"
    typer.echo(f"market {result['key']} {state}: new orders are refused, cancels work")


@admin.command()
def resume(pair: str, note: Annotated[str, NOTE_OPTION] = "") -> None:
    """Resume trading on a halted market."""
    try:
        result = _admin().halt(pair, note, active=False)
    except ExchangeError as error:
        _fail(error)
    state = "trades again" if result["changed"] else "was not halted"
    typer.echo(f"market {result['key']} {state}")


@admin.command()
def freeze(email: str, note: Annotated[str, NOTE_OPTION] = "") -> None:
    """Freeze an account: it cannot trade, withdraw or create API keys (it can log in, look
    and cancel). Its open orders stay; cancel them with cancel-orders."""
    try:
        result = _admin().freeze(email, note)
    except ExchangeError as error:
        _fail(error)
    typer.echo(f"{email} {'frozen' if result['changed'] else 'was already frozen'}")


@admin.command()
def unfreeze(email: str, note: Annotated[str, NOTE_OPTION] = "") -> None:
    """Lift an account's freeze."""
    try:
        result = _admin().freeze(email, note, active=False)
    except ExchangeError as error:
        _fail(error)
    typer.echo(f"{email} {'unfrozen' if result['changed'] else 'was not frozen'}")


@admin.command("cancel-orders")
def cancel_orders(
    email: str,
    pair: Annotated[str | None, typer.Argument(help="one market (default: all)")] = None,
    note: Annotated[str, NOTE_OPTION] = "",
) -> None:
    """Cancel every open order of a user (on one market, or on all)."""
    try:
        result = _admin().cancel_orders(email, pair, note)
    except ExchangeError as error:
        _fail(error)
    ids = result["order_ids"]
    where = f" on {result['market']}" if result["market"] else ""
    typer.echo(f"canceled {len(ids)} open orders of {email}{where}: {' '.join(map(str, ids))}")


@admin.command("create-operator")
def create_operator(
    email: str,
    reset: Annotated[
        bool, typer.Option("--reset", help="a new password; TOTP is set up again, sessions end")
    ] = False,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from standard input")
    ] = False,
) -> None:
    """Make an operator of the console at /admin (password now, TOTP app at the first login)."""
    import asyncio

    from exchange.runtime import build_runtime

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    tool = _admin()  # migrated
    runtime = build_runtime()

    async def create() -> int:
        try:
            return await runtime.operators.create(email, password, reset=reset)
        finally:
            await runtime.database.dispose()

    action = "reset_operator" if reset else "create_operator"
    try:
        operator_id = asyncio.run(create())
    except ExchangeError as error:
        tool.audit(action, {"email": email, "outcome": "refused", "error": error.description})
        _fail(error)
    tool.audit(action, {"email": email, "operator_id": operator_id, "outcome": "done"})
    settings = get_settings()
    typer.echo(
        f"operator {email} {'reset' if reset else 'created'}: log in at "
        f"http://{settings.host}:{settings.port}/admin/login with the password (no code the "
        "first time), then scan the QR code with an authenticator app"
    )


@admin.command("users")
def find_users(search: Annotated[str, typer.Argument(help="part of the e-mail address")]) -> None:
    """Users by e-mail: balances, open orders, last login, frozen or not."""
    from datetime import UTC, datetime

    from exchange.domain.money import format_units

    tool = _admin()

    def when(ms: int | None) -> str:
        return "never" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat()

    found = tool.users(search)
    if not found:
        typer.echo(f"no user's e-mail contains {search!r}")
    for user in found:
        frozen = "  FROZEN" if user["frozen"] else ""
        typer.echo(
            f"{user['id']}\t{user['email']}{frozen}\tregistered {when(user['created'])}\t"
            f"last login {when(user['last_login'])}"
        )
        for asset, (available, held) in sorted(user["balances"].items()):
            scale = tool.assets[asset].scale
            typer.echo(
                f"\t{asset}\tavailable {format_units(available, scale)}\t"
                f"frozen {format_units(held, scale)}"
            )
        for order in user["open_orders"]:
            market = tool.market(order["market"])
            typer.echo(
                f"\torder {order['id']}\t{order['market']}\t{order['side']}\t"
                f"{market.format_amount(order['amount'] - order['filled'])} left at "
                f"{market.format_price(order['price'])}"
            )


@bench.callback()
def bench_all(ctx: typer.Context, as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """Without a subcommand: run every benchmark."""
    if ctx.invoked_subcommand is not None:
        return
    from exchange.bench import report

    report.run_all(as_json=as_json)


@bench.command("engine")
def bench_engine(
    orders: Annotated[int, typer.Option(help="orders to place")] = 200_000,
    as_json: Annotated[bool, JSON_OPTION] = False,
) -> None:
    """In-memory matching throughput with balance checks."""
    from exchange.bench import report

    report.engine(orders, as_json=as_json)


@bench.command("memory")
def bench_memory(
    orders: Annotated[int, typer.Option(help="resting orders to hold")] = 1_000_000,
    as_json: Annotated[bool, JSON_OPTION] = False,
) -> None:
    """Resident memory with this many resting orders."""
    from exchange.bench import report

    report.memory(orders, as_json=as_json)


@bench.command("orders")
def bench_orders(
    seconds: Annotated[float, typer.Option(help="load duration per database")] = 10.0,
    clients: Annotated[
        str, typer.Option(help="concurrent HTTP connections; several (1,4,16,64,256): a curve")
    ] = "64",
    database: Annotated[str, typer.Option(help="sqlite, postgres or both")] = "both",
    workers: Annotated[int, WORKERS_OPTION] = 1,
    api: Annotated[
        str, typer.Option(help="seed (/api/buy), binance (signed /api/v3/order) or both")
    ] = "seed",
    as_json: Annotated[bool, JSON_OPTION] = False,
) -> None:
    """Durable HTTP order placement against a real server: orders/s, p50/p99."""
    from exchange.bench import report

    if api not in ("seed", "binance", "both"):
        raise typer.BadParameter("--api is seed, binance or both")
    try:
        counts = [int(part) for part in clients.split(",")]
    except ValueError:
        raise typer.BadParameter("--clients is a count or counts: 64, or 1,4,16,64,256") from None
    if not counts or min(counts) < 1:
        raise typer.BadParameter("--clients counts are at least 1")
    report.orders(seconds, counts, database, workers, as_json=as_json, api=api)


@bench.command("servers")
def bench_servers(
    seconds: Annotated[float, typer.Option(help="load duration per measurement")] = 8.0,
    rounds: Annotated[int, typer.Option(help="alternations of the two servers", min=1)] = 2,
    as_json: Annotated[bool, JSON_OPTION] = False,
) -> None:
    """uvicorn against granian: the bare app and durable SQLite orders, alternated."""
    from exchange.bench import report

    report.print_figures(report.server_figures(seconds, rounds), as_json)


@bench.command("profile")
def bench_profile(
    seconds: Annotated[float, typer.Option(help="load duration")] = 10.0,
    clients: Annotated[int, typer.Option(help="concurrent HTTP connections")] = 64,
    database: Annotated[str, typer.Option(help="sqlite or postgres")] = "sqlite",
    workers: Annotated[int, WORKERS_OPTION] = 1,
    out: Annotated[str, typer.Option(help="py-spy's collapsed stacks")] = "profile.txt",
    as_json: Annotated[bool, JSON_OPTION] = False,
) -> None:
    """Durable orders under py-spy: each stage's share of the server's time, per process."""
    from exchange.bench import report

    if database not in ("sqlite", "postgres"):
        raise typer.BadParameter("--database is sqlite or postgres")
    from pathlib import Path

    report.profile(seconds, clients, database, workers, Path(out).resolve(), as_json=as_json)


@bench.command("market")
def bench_market(
    seconds: Annotated[float, typer.Option(help="load duration per method")] = 5.0,
    processes: Annotated[int, typer.Option(help="client processes")] = 1,
    connections: Annotated[int, typer.Option(help="connections per client process")] = 64,
    minutes: Annotated[int, typer.Option(help="minutes of seeded trades (1 per minute)")] = 720,
    workers: Annotated[int, WORKERS_OPTION] = 1,
    as_json: Annotated[bool, JSON_OPTION] = False,
) -> None:
    """Public market data: get_depth and get_coin req/s, 500-candle k-line server time."""
    from exchange.bench import market as bench_market_module

    bench_market_module.main(
        seconds=seconds,
        processes=processes,
        connections=connections,
        minutes=minutes,
        workers=workers,
        as_json=as_json,
    )


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)

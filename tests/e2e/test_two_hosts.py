"""Two hosts for real: the gateways in a network namespace of their own.

Host A (this machine's namespace) runs the writer, PostgreSQL (reached by the
other host through a TCP forwarder: it listens on loopback only) and NATS on
the link's address; host B (``ip netns``, joined by a veth pair) runs two
``exchange gateway`` processes, which reach A only over that link. Orders
placed through both gateways trade with each other; then the link is cut for
10 s: the gateways answer 503 (seen from inside B), and once it is back they
recover by themselves, with nothing acknowledged lost and the money adding up.

Skipped, with the reason, where network namespaces cannot be made (not root,
no ``ip``, no kernel support).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest
from load_support import FUNDS, check_money, credit
from test_gateways import Writer, market, nats_server, order

from exchange.bench.server import BIN, exchange_env, scratch_key_file
from support import postgres_database, register_over_http, smtp_server, until

PAIR = "BTC/USDT"
TAG = f"{os.getpid() % 100000}"
NS = f"exg{TAG}"
HOST_SIDE, GATEWAY_SIDE = f"vxa{TAG}", f"vxb{TAG}"
HOST_IP, GATEWAY_IP = "10.231.7.1", "10.231.7.2"
CUT_SECONDS = 10


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def two_hosts() -> Iterator[None]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (`ip netns`)")
    try:
        ip("netns", "add", NS)
    except subprocess.CalledProcessError as error:
        pytest.skip(f"cannot create a network namespace: {error.stderr.decode().strip()}")
    try:
        ip("link", "add", HOST_SIDE, "type", "veth", "peer", "name", GATEWAY_SIDE)
        ip("link", "set", GATEWAY_SIDE, "netns", NS)
        ip("addr", "add", f"{HOST_IP}/30", "dev", HOST_SIDE)
        ip("link", "set", HOST_SIDE, "up")
        ip("netns", "exec", NS, "ip", "addr", "add", f"{GATEWAY_IP}/30", "dev", GATEWAY_SIDE)
        ip("netns", "exec", NS, "ip", "link", "set", GATEWAY_SIDE, "up")
        ip("netns", "exec", NS, "ip", "link", "set", "lo", "up")
        yield
    finally:
        with suppress(subprocess.CalledProcessError):
            ip("link", "del", HOST_SIDE)
        with suppress(subprocess.CalledProcessError):
            ip("netns", "del", NS)


@contextmanager
def forwarder(listen: tuple[str, int], target: tuple[str, int]) -> Iterator[None]:
    """A plain TCP forwarder (PostgreSQL listens on loopback only)."""
    server = socket.create_server(listen)
    server.settimeout(0.2)
    stop = threading.Event()

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        server.close()
        thread.join(5)


class Gateway:
    """``exchange gateway`` inside the other host's namespace."""

    def __init__(self, port: int, env: dict[str, str], log: Path, nats_url: str) -> None:
        self.port, self.env, self.log, self.nats_url = port, env, log, nats_url
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{GATEWAY_IP}:{self.port}"

    def start(self) -> None:
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                NS,
                str(BIN / "exchange"),
                "gateway",
                "--nats",
                self.nats_url,
                "--host",
                GATEWAY_IP,
                "--port",
                str(self.port),
            ],
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        handle.close()
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, self.log.read_text()[-3000:]
            with suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)


def inside(url: str) -> int:
    """``/readyz`` as seen from the gateways' own host (the link may be cut)."""
    probe = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            NS,
            str(BIN / "python"),
            "-c",
            f"import httpx; print(httpx.get('{url}/readyz', timeout=2).status_code)",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    return int(probe.stdout.strip() or 0)


def test_gateways_on_another_host_trade_and_survive_a_cut_link(
    two_hosts: None, tmp_path: Path
) -> None:
    with postgres_database() as db_url, smtp_server(HOST_IP) as (mailbox, smtp_port):
        probe = socket.create_server((HOST_IP, 0))
        pg_port = probe.getsockname()[1]
        probe.close()
        with (
            forwarder((HOST_IP, pg_port), ("127.0.0.1", 5432)),
            nats_server(tmp_path, HOST_IP) as nats,
        ):
            accounts = nats.accounts
            assert accounts is not None
            key = {"EXCHANGE_SECRET_KEY_FILE": scratch_key_file(db_url)}
            writer = Writer(
                exchange_env(db_url, EXCHANGE_NATS_URL=accounts.writer_url, **key),
                tmp_path / "writer.log",
            )
            remote_db = db_url.replace("127.0.0.1:5432", f"{HOST_IP}:{pg_port}")
            env = exchange_env(remote_db, smtp_port, EXCHANGE_SMTP_HOST=HOST_IP, **key)
            writer.start()
            gateways = [
                Gateway(port, env, tmp_path / f"gateway{i}.log", accounts.gateway_url)
                for i, port in enumerate((18081, 18082))
            ]
            try:
                for gateway in gateways:
                    gateway.start()
                a, b = gateways
                seller = register_over_http(a.url, mailbox, "seller@example.com")
                buyer = register_over_http(b.url, mailbox, "buyer@example.com")
                credit(
                    db_url,
                    *(
                        (email, coin, amount)
                        for email in ("seller@example.com", "buyer@example.com")
                        for coin, amount in FUNDS
                    ),
                )
                sold = order(a.url, seller, "sell", "20000", "0.5").json()
                assert sold["data"]["status"] == "open", sold
                bought = order(b.url, buyer, "buy", "20000", "0.2").json()
                assert bought["data"]["status"] == "filled", bought

                async def same() -> bool:
                    return await asyncio.to_thread(lambda: market(a.url) == market(b.url))

                asyncio.run(until(same, 10, "the same market on both gateways"))

                ip("link", "set", HOST_SIDE, "down")  # the link between the hosts is cut
                cut = time.monotonic()

                async def refusing() -> bool:
                    return await asyncio.to_thread(lambda: inside(a.url) == 503)

                asyncio.run(until(refusing, 10, "503 seen from host B"))
                while time.monotonic() - cut < CUT_SECONDS:
                    time.sleep(0.5)  # the fault lasts 10 s: nothing to wait for but time
                ip("link", "set", HOST_SIDE, "up")

                async def back() -> bool:
                    return await asyncio.to_thread(
                        lambda: all(inside(g.url) == 200 for g in gateways)
                    )

                asyncio.run(until(back, 60, "both gateways to recover by themselves"))
                again = order(b.url, buyer, "buy", "20000", "0.1").json()
                assert again["data"]["status"] == "filled", again
                asyncio.run(until(same, 10, "one market again"))
                depth, deals = market(a.url)
                assert len(deals) == 2 and depth["asks"] == [["20000.00", "0.20000000"]]
            finally:
                for gateway in gateways:
                    gateway.stop()
                writer.stop()
        check_money(db_url)

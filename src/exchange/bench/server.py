"""The real ``exchange serve`` process on a free port, for benchmarks and end-to-end tests."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
_TICKS = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The processes ``pid`` started, over all its threads (none if it has ended)."""
    found = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                found += [int(child) for child in (task / "children").read_text().split()]
    return found


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) ``pid`` and every process under it have used so far.

    The server's own cost per order, apart from the load generator's on the same
    cores. When the server is the whole core it moves with the rate (docs/performance.md);
    it tells the cost of a batch at low loads, where the rate is the clients' pace.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0  # ended meanwhile
    own = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
    return own + sum(cpu_seconds(child) for child in children(pid))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scratch_key_file(database_url: str) -> str:
    """A secret key file for a throwaway database, outside the working directory."""
    digest = hashlib.sha256(database_url.encode()).hexdigest()[:16]
    return str(Path(tempfile.gettempdir()) / f"exchange-{digest}.secret-key")


def exchange_env(database_url: str, smtp_port: int | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_")}
    env.update(
        {
            "EXCHANGE_DATABASE_URL": database_url,
            "EXCHANGE_RATE_LIMITS": "off",
            "EXCHANGE_LOG_LEVEL": "warning",
            "EXCHANGE_SECRET_KEY_FILE": scratch_key_file(database_url),
            # Metrics on, as an operator runs it, on a port of its own (never a clash).
            "EXCHANGE_METRICS_ADDRESS": "127.0.0.1:0",
        }
    )
    if smtp_port:
        env.update({"EXCHANGE_SMTP_HOST": "127.0.0.1", "EXCHANGE_SMTP_PORT": str(smtp_port)})
    env.update(extra)
    return env


#: The HTTP servers ``exchange bench servers`` compares; the exchange runs on uvicorn.
HTTP_SERVERS = ("uvicorn", "granian")


def granian_command(target: str, port: int, *, factory: bool = False) -> list[str]:
    """granian serving the ASGI ``target`` on uvloop, as its own benchmarks run it (only
    ``exchange bench servers`` does: without ``server.py``'s limits, never in production)."""
    binary = BIN / "granian"
    if not binary.exists():
        raise RuntimeError("granian is not installed here: make .venv/.dev-installed")
    return [
        str(binary),
        "--interface",
        "asgi",
        "--loop",
        "uvloop",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "error",
        *(["--factory"] if factory else []),
        target,
    ]


class Server:
    def __init__(
        self,
        port: int,
        env: dict[str, str],
        log: Path,
        args: tuple[str, ...] = (),
        http: str = "uvicorn",
    ) -> None:
        self.port = port
        self.env = env
        self.log = log
        self.args = args  # more options, e.g. ("--workers", "2")
        #: ``uvicorn`` (``exchange serve``) or ``granian`` (the same app, for the comparison).
        self.http = http
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, command: str = "serve", timeout: float = 30.0) -> None:
        handle = self.log.open("ab")
        if self.http == "granian":
            assert command == "serve" and not self.args, "granian serves one plain process"
            argv = granian_command("exchange.app:create_app", self.port, factory=True)
        else:
            argv = [str(BIN / "exchange"), command, "--port", str(self.port), *self.args]
        self.process = subprocess.Popen(
            argv,
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not start: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@contextmanager
def running_server(
    port: int,
    env: dict[str, str],
    log: Path,
    command: str = "serve",
    args: tuple[str, ...] = (),
    http: str = "uvicorn",
) -> Iterator[Server]:
    server = Server(port, env, log, args, http)
    server.start(command)
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.stop()


def admin(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``exchange admin ARGS`` (``stdin``: what it reads, a password say)."""
    return subprocess.run(
        [str(BIN / "exchange"), "admin", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )

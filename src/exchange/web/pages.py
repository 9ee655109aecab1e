"""HTML pages of the web UI and the vendored static assets.

The pages are thin shells: the browser fills them by calling ``/api/<method>``
and the ``/ws`` stream (SPEC §1, §8). This module only renders templates, maps
``/trade/<BASE>_<QUOTE>`` to a known market and serves ``static/``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jinja2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from exchange.domain.errors import ExchangeError
from exchange.domain.markets import normalize_pair

WEB_DIR = Path(__file__).resolve().parent
TEMPLATES_DIR = WEB_DIR / "templates"
STATIC_DIR = WEB_DIR / "static"
DEFAULT_PAIRS: tuple[str, ...] = ("BTC/USDT", "ETH/USDT", "ETH/BTC")

# Pages run only our own scripts and talk only to our own origin (HTTP and /ws).
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src {connect}; frame-ancestors 'none'; base-uri 'self'; "
    "form-action 'self'; object-src 'none'"
)
PAGE_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CSP.format(connect="'self'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
#: A Host header that can go into a CSP source expression as it is.
_HOST = re.compile(r"[A-Za-z0-9.-]+(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?")


def page_headers(host: str) -> dict[str, str]:
    """The page headers, the stream allowed only to this page's own origin.

    ``'self'`` covers ``ws:``/``wss:`` of the same host in CSP Level 3 browsers
    only, so the page's own WebSocket origin is named too — never any host.
    """
    if not _HOST.fullmatch(host):
        return PAGE_HEADERS
    connect = f"'self' ws://{host} wss://{host}"
    return {**PAGE_HEADERS, "Content-Security-Policy": CSP.format(connect=connect)}


DEFAULT_TAKER_FEE = Decimal("0.002")


def canonical_pair(text: str) -> str | None:
    """``btc-usdt``, ``BTC_USDT`` or ``btc/usdt`` -> ``BTC/USDT``; None if not a pair at all."""
    try:
        return normalize_pair(text)
    except ExchangeError:
        return None


#: What a browser drops from a URL before parsing it (WHATWG URL: tab and newlines
#: anywhere; C0 controls and space at either end): "/\t/evil.example" is "//evil.example".
_URL_DROPPED = re.compile(r"[\t\n\r]")
_ENCODED_DOT = re.compile(r"%2e", re.IGNORECASE)


def safe_next(target: str | None) -> str:
    """A path on this origin to go to after login; anything else becomes ``/account``.

    The target is read the way a browser will read it — tabs and newlines
    dropped, ``%2e`` taken as a dot — then resolved against a placeholder origin:
    only a path that stays on that origin and does not begin with ``//`` (which a
    browser follows to another host) is kept, already normalised. So
    ``//evil.example``, ``/\\evil.example``, ``/\t/evil.example``,
    ``/%2e//evil.example`` or ``https:evil.example`` never leave the site.
    """
    if not target:
        return "/account"
    cleaned = _URL_DROPPED.sub("", target).strip("".join(map(chr, range(0x21))))
    cleaned = _ENCODED_DOT.sub(".", cleaned)
    if not cleaned.startswith("/") or "\\" in cleaned or cleaned.startswith("//"):
        return "/account"
    parts = urlsplit(cleaned)
    path = _browser_path(parts.path)
    if parts.scheme or parts.netloc or path.startswith("//"):
        return "/account"
    return urlunsplit(("", "", path, parts.query, parts.fragment))


def _browser_path(path: str) -> str:
    """``path`` with its dot segments resolved as the WHATWG URL parser does.

    (``urljoin`` differs: it turns ``/..//x`` into ``/x`` where a browser makes ``//x``.)
    """
    segments = path.split("/")[1:]
    kept: list[str] = []
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "..":
            if kept:
                kept.pop()
            if last:
                kept.append("")
        elif segment == ".":
            if last:
                kept.append("")
        else:
            kept.append(segment)
    return "/" + "/".join(kept)


def asset_version(static_dir: Path) -> str:
    """A short digest of the static files, appended to their URLs to bust caches."""
    digest = hashlib.sha256()
    for path in sorted(p for p in static_dir.rglob("*") if p.is_file()):
        digest.update(path.relative_to(static_dir).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def page_templates(templates_dir: Path = TEMPLATES_DIR) -> Jinja2Templates:
    """The pages' Jinja environment (HTML autoescaped), for the user pages and the console."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        autoescape=jinja2.select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return Jinja2Templates(env=env)


def page_routes(
    templates_dir: Path | None = None,
    pairs: Iterable[str] | None = None,
    static_dir: Path | None = None,
    taker_fees: Mapping[str, Decimal] | None = None,
) -> list[BaseRoute]:
    """Routes for ``/``, ``/trade/{pair}``, ``/register``, ``/login``, ``/account``
    and the ``/static`` mount.

    ``pairs`` are the known market symbols (any accepted spelling, e.g. ``BTC/USDT``);
    ``/trade/<pair>`` answers a 404 page for any other pair. ``taker_fees`` (per
    pair, as configured) feed the order form's fee estimate, so the page never
    shows a rate the engine does not charge.
    """
    sdir = static_dir or STATIC_DIR
    known = [normalize_pair(p) for p in (pairs if pairs is not None else DEFAULT_PAIRS)]
    templates = page_templates(templates_dir or TEMPLATES_DIR)
    version = asset_version(sdir)
    fees = {normalize_pair(p): fee for p, fee in (taker_fees or {}).items()}

    def render(
        request: Request, name: str, context: dict[str, Any] | None = None, status: int = 200
    ) -> Response:
        ctx: dict[str, Any] = {
            "root": request.scope.get("root_path", "").rstrip("/"),
            "v": version,
            "pairs": known,
            "has_session": "session" in request.cookies,
            "page": name.removesuffix(".html"),
        }
        ctx.update(context or {})
        return templates.TemplateResponse(
            request,
            name,
            ctx,
            status_code=status,
            headers=page_headers(request.headers.get("host", "")),
        )

    async def home(request: Request) -> Response:
        return render(request, "home.html", {"title": "Markets"})

    async def trade(request: Request) -> Response:
        pair = canonical_pair(str(request.path_params["pair"]))
        if pair is None or pair not in known:
            return render(request, "404.html", {"title": "Not found", "what": "market"}, 404)
        base, quote = pair.split("/", 1)
        fee = fees.get(pair, DEFAULT_TAKER_FEE)
        return render(
            request,
            "trade.html",
            {
                "title": pair,
                "pair": pair,
                "base": base,
                "quote": quote,
                "fee_rate": format(fee.normalize(), "f"),
                "fee_percent": format((fee * 100).normalize(), "f"),
            },
        )

    async def register(request: Request) -> Response:
        return render(request, "register.html", {"title": "Register"})

    async def login(request: Request) -> Response:
        return render(
            request,
            "login.html",
            {"title": "Log in", "next": safe_next(request.query_params.get("next"))},
        )

    async def account(request: Request) -> Response:
        return render(request, "account.html", {"title": "Account"})

    return [
        Route("/", home, methods=["GET"], name="home"),
        Route("/trade/{pair}", trade, methods=["GET"], name="trade"),
        Route("/register", register, methods=["GET"], name="register"),
        Route("/login", login, methods=["GET"], name="login"),
        Route("/account", account, methods=["GET"], name="account"),
        Mount("/static", StaticFiles(directory=str(sdir)), name="static"),
    ]

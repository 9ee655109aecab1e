"""The operator console at ``/admin``: server-rendered forms over the operator's commands.

Every action is one of ``exchange admin``'s commands (``OperatorActions``, which
``exchange.admin.Admin`` is), run as the logged-in operator so the audit log
names them: ``<e-mail> (console)``. The console only adds the web around them:

* **login** with password and TOTP code (``services/operators.py``); enrolment of
  the TOTP app shows its secret once, as a QR code drawn here (``segno``, an SVG
  data URI: no script, no request to anyone else);
* **its own cookie**, ``exchange_operator``: ``Path=/admin; HttpOnly;
  SameSite=Strict`` (and ``Secure`` where the user cookie is), never the users';
* **CSRF**: every POST must come from this origin (the ``Origin`` rule of the
  user API) *and* carry the session's form token; a page of another site has
  neither;
* the user pages' CSP, plus ``Cache-Control: no-store`` (balances and e-mails
  stay out of caches); no JavaScript at all: every form posts and redirects
  (post/redirect/get) to a page that says what happened.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode

import segno
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from exchange.clock import Clock
from exchange.domain.errors import ExchangeError
from exchange.domain.markets import Asset, Market
from exchange.domain.money import format_units
from exchange.services.marketdata import MarketData
from exchange.services.operators import ENROLL, FULL, Operator, Operators
from exchange.web.pages import (
    STATIC_DIR,
    TEMPLATES_DIR,
    asset_version,
    page_headers,
    page_templates,
)

COOKIE = "exchange_operator"
#: A console form is a few short fields; anything larger is not one of ours.
MAX_FORM = 16 * 1024
#: What ``?what=`` may carry into a "done" message (an id, a pair, an e-mail).
_WHAT = re.compile(r"[A-Za-z0-9/@._+-]{1,80}")
#: The fixed messages a redirect may ask for (nothing else a link can make us say).
DONE = {
    "enrolled": "Two-factor login is set up. Welcome.",
    "approved": "Withdrawal {what} marked sent.",
    "rejected": "Withdrawal {what} rejected; its amount is back in the user's balance.",
    "credited": "Deposit credited to {what}.",
    "halted": "Market {what} halted: new orders are refused, cancels work.",
    "resumed": "Market {what} trades again.",
    "frozen": "{what} frozen: no trading, withdrawals or new API keys.",
    "unfrozen": "{what} unfrozen.",
    "canceled": "Open orders of {what} canceled.",
}
#: Refusals that mean "the thing changed under you", not "your input is wrong".
CONFLICTS = frozenset({"wrong_state", "timeout"})


class OperatorActions(Protocol):
    """The operator's commands (``exchange.admin.Admin``): one way to do each thing."""

    assets: dict[str, Asset]

    @property
    def markets(self) -> dict[str, Market]: ...

    def acting_as(self, name: str) -> OperatorActions: ...
    def audit(self, action: str, details: dict[str, Any]) -> None: ...
    def audit_log(
        self, limit: int = 50, before: int | None = None, search: str = ""
    ) -> list[dict[str, Any]]: ...
    def credit(self, email: str, coin: str, amount: str, note: str) -> dict[str, Any]: ...
    def approve(self, withdrawal_id: int, txid: str) -> dict[str, Any]: ...
    def reject(self, withdrawal_id: int, reason: str) -> dict[str, Any]: ...
    def withdrawals(
        self, status: str | None, *, limit: int | None = None, newest_first: bool = False
    ) -> list[dict[str, Any]]: ...
    def halt(self, pair: str, note: str = "", *, active: bool = True) -> dict[str, Any]: ...
    def freeze(self, email: str, note: str = "", *, active: bool = True) -> dict[str, Any]: ...
    def cancel_orders(self, email: str, pair: str | None, note: str = "") -> dict[str, Any]: ...
    def users(self, search: str, limit: int = 20) -> list[dict[str, Any]]: ...
    def controls_active(self, kind: str) -> set[str]: ...


def actor_of(operator: Operator) -> str:
    """How the audit log names an operator of the console."""
    return f"{operator.email} (console)"


def when(ms: int | None) -> str:
    """A time in milliseconds as UTC, to the second (``never`` for None)."""
    if ms is None:
        return "never"
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


async def read_form(request: Request) -> dict[str, str]:
    """The urlencoded form of a console POST, at most ``MAX_FORM`` bytes (400 beyond)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise ExchangeError("payload_too_large", "the form is larger than any of ours")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ExchangeError("invalid_argument", "the form is not UTF-8") from None
    return dict(parse_qsl(text, keep_blank_values=True))


Page = Callable[[Request, Operator, str], Awaitable[Response]]


def console_routes(
    operators: Operators,
    actions: OperatorActions,
    market: MarketData,
    clock: Clock,
    origin_ok: Callable[[str | None, str], bool],
    *,
    cookie_secure: bool,
) -> list[BaseRoute]:
    """The ``/admin`` routes. ``origin_ok(origin, host)`` is the user API's Origin rule."""
    templates = page_templates(TEMPLATES_DIR)
    templates.env.filters["when"] = when
    version = asset_version(STATIC_DIR)
    secure = "; Secure" if cookie_secure else ""
    markets = actions.markets

    def render(
        request: Request,
        name: str,
        context: Mapping[str, Any],
        *,
        status: int = 200,
        operator: Operator | None = None,
        token: str = "",
    ) -> Response:
        done = DONE.get(request.query_params.get("done", ""))
        what = request.query_params.get("what", "")
        ctx: dict[str, Any] = {
            "root": request.scope.get("root_path", "").rstrip("/"),
            "v": version,
            "page": name.removesuffix(".html"),
            "operator": operator,
            "csrf": operators.csrf_token(token) if token else "",
            "done": done.format(what=what if _WHAT.fullmatch(what) else "") if done else None,
            **context,
        }
        headers = {
            **page_headers(request.headers.get("host", "")),
            "Cache-Control": "no-store",
        }
        return templates.TemplateResponse(
            request, f"admin/{name}", ctx, status_code=status, headers=headers
        )

    def go(path: str, done: str | None = None, what: str = "", **query: str) -> Response:
        """303 to ``path`` (post/redirect/get), whose page says ``done`` happened to ``what``."""
        if done is not None:
            query.update(done=done, what=what)
        return RedirectResponse(path + ("?" + urlencode(query) if query else ""), status_code=303)

    def forbidden(request: Request) -> Response:
        return render(
            request,
            "forbidden.html",
            {"title": "Refused"},
            status=403,
        )

    async def posted(request: Request, token: str | None) -> dict[str, str] | None:
        """The form of a POST from this origin carrying ``token``'s CSRF field (None: refuse).

        The login form (``token`` None) has no session yet: its origin is checked."""
        if not origin_ok(request.headers.get("origin"), request.headers.get("host", "")):
            return None
        try:
            form = await read_form(request)
        except ExchangeError:
            return None
        if token is not None and not operators.csrf_ok(token, form.get("csrf", "")):
            return None
        return form

    async def session(request: Request) -> tuple[str, Operator | None]:
        token = request.cookies.get(COOKIE, "")
        return token, await operators.resolve(token)

    def guarded(page: Page, *, post: bool, stage: str = FULL) -> Callable[..., Awaitable[Response]]:
        """``page`` for a logged-in operator (of ``stage``); a POST also passes CSRF."""

        async def endpoint(request: Request) -> Response:
            token, operator = await session(request)
            if operator is None:
                return go("/admin/login")
            if operator.stage != stage:
                return go("/admin/enroll" if operator.stage == ENROLL else "/admin/withdrawals")
            if post:
                form = await posted(request, token)
                if form is None:
                    return forbidden(request)
                request.state.form = form
            return await page(request, operator, token)

        return endpoint

    def acting(operator: Operator) -> OperatorActions:
        return actions.acting_as(actor_of(operator))

    # -- login, enrolment, logout ----------------------------------------------

    async def login_page(request: Request) -> Response:
        _token, operator = await session(request)
        if operator is not None:
            return go("/admin/enroll" if operator.stage == ENROLL else "/admin/withdrawals")
        return render(request, "login.html", {"title": "Operator login"})

    async def login(request: Request) -> Response:
        form = await posted(request, None)
        if form is None:
            return forbidden(request)
        email = form.get("email", "").strip()[:254]
        try:
            token, operator = await operators.login(
                email, form.get("password", ""), form.get("code", "")
            )
        except ExchangeError as error:
            await asyncio.to_thread(
                actions.acting_as("console").audit,
                "console_login",
                {"email": email, "outcome": "refused", "error": error.code},
            )
            headers = {"Retry-After": str(error.retry_after)} if error.retry_after else {}
            answer = render(
                request,
                "login.html",
                {"title": "Operator login", "error": error.message, "email": email},
                status=429 if error.code == "too_many_attempts" else 400,
            )
            answer.headers.update(headers)
            return answer
        await asyncio.to_thread(
            acting(operator).audit, "console_login", {"stage": operator.stage, "outcome": "done"}
        )
        answer = go("/admin/enroll" if operator.stage == ENROLL else "/admin/withdrawals")
        answer.headers["Set-Cookie"] = (
            f"{COOKIE}={token}; Path=/admin; HttpOnly; SameSite=Strict{secure}"
        )
        return answer

    async def enroll_page(request: Request, operator: Operator, token: str) -> Response:
        uri = await operators.enrolment_uri(operator)
        secret = dict(parse_qsl(uri.partition("?")[2])).get("secret", "")
        return render(
            request,
            "enroll.html",
            {
                "title": "Set up two-factor login",
                "qr": segno.make(uri, error="m").svg_data_uri(scale=5, border=2),
                "secret": " ".join(secret[i : i + 4] for i in range(0, len(secret), 4)),
                "error": request.state.error if hasattr(request.state, "error") else None,
            },
            operator=operator,
            token=token,
        )

    async def enroll(request: Request, operator: Operator, token: str) -> Response:
        try:
            confirmed = await operators.confirm(token, operator, request.state.form.get("code", ""))
        except ExchangeError as error:
            request.state.error = error.message
            answer = await enroll_page(request, operator, token)
            answer.status_code = 400
            return answer
        await asyncio.to_thread(acting(confirmed).audit, "console_enroll", {"outcome": "done"})
        return go("/admin/withdrawals", "enrolled")

    async def logout(request: Request) -> Response:
        token, operator = await session(request)
        if operator is not None:
            if await posted(request, token) is None:
                return forbidden(request)
            await operators.logout(token)
        answer = go("/admin/login")
        answer.headers["Set-Cookie"] = (
            f'{COOKIE}=""; expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/admin; '
            f"HttpOnly; SameSite=Strict{secure}"
        )
        return answer

    # -- pages -----------------------------------------------------------------

    async def refused(
        request: Request, operator: Operator, token: str, page: Page, error: ExchangeError
    ) -> Response:
        """``page`` again, saying why the command was refused (400, or 409 for a conflict)."""
        request.state.error = error.message
        answer = await page(request, operator, token)
        answer.status_code = 409 if error.code in CONFLICTS else 400
        return answer

    def error_of(request: Request) -> str | None:
        return request.state.error if hasattr(request.state, "error") else None

    def amount(asset: str, units: int) -> str:
        return format_units(units, actions.assets[asset].scale)

    async def withdrawals_page(request: Request, operator: Operator, token: str) -> Response:
        pending = await asyncio.to_thread(actions.withdrawals, "pending", limit=500)
        recent = [
            row
            for row in await asyncio.to_thread(
                actions.withdrawals, None, limit=100, newest_first=True
            )
            if row["status"] != "pending"
        ][:50]
        for row in (*pending, *recent):
            row["amount_text"] = amount(row["coin"], row["amount"])
            row["fee_text"] = amount(row["coin"], row["fee"])
        return render(
            request,
            "withdrawals.html",
            {
                "title": "Withdrawals",
                "pending": pending,
                "recent": recent,
                "error": error_of(request),
            },
            operator=operator,
            token=token,
        )

    def form_id(request: Request) -> int:
        text = str(request.path_params["withdrawal_id"])
        if not text.isdigit() or len(text) > 19:
            raise ExchangeError("invalid_argument", "that is not a withdrawal id")
        return int(text)

    async def approve(request: Request, operator: Operator, token: str) -> Response:
        try:
            withdrawal_id = form_id(request)
            txid = request.state.form.get("txid", "")
            await asyncio.to_thread(acting(operator).approve, withdrawal_id, txid)
        except ExchangeError as error:
            return await refused(request, operator, token, withdrawals_page, error)
        return go("/admin/withdrawals", "approved", str(withdrawal_id))

    async def reject(request: Request, operator: Operator, token: str) -> Response:
        try:
            withdrawal_id = form_id(request)
            reason = request.state.form.get("reason", "")
            await asyncio.to_thread(acting(operator).reject, withdrawal_id, reason)
        except ExchangeError as error:
            return await refused(request, operator, token, withdrawals_page, error)
        return go("/admin/withdrawals", "rejected", str(withdrawal_id))

    async def deposits_page(request: Request, operator: Operator, token: str) -> Response:
        form = getattr(request.state, "form", {})
        return render(
            request,
            "deposits.html",
            {
                "title": "Credit a deposit",
                "coins": sorted(actions.assets),
                "form": form,
                "error": error_of(request),
            },
            operator=operator,
            token=token,
        )

    async def credit(request: Request, operator: Operator, token: str) -> Response:
        form = request.state.form
        email = form.get("email", "")
        try:
            await asyncio.to_thread(
                acting(operator).credit,
                email,
                form.get("coin", ""),
                form.get("amount", ""),
                form.get("note", ""),
            )
        except ExchangeError as error:
            return await refused(request, operator, token, deposits_page, error)
        return go("/admin/deposits", "credited", email.strip().lower())

    async def markets_page(request: Request, operator: Operator, token: str) -> Response:
        halted = await asyncio.to_thread(actions.controls_active, "halt")
        tickers = {item["pair"]: item for item in market.rank(clock())}
        rows = [
            {
                "pair": symbol,
                "halted": symbol in halted,
                "price": tickers[symbol]["price"],
                "volume_24h": tickers[symbol]["volume_24h"],
                "change_percent": tickers[symbol]["change_percent"],
            }
            for symbol in markets
        ]
        return render(
            request,
            "markets.html",
            {"title": "Markets", "markets": rows, "error": error_of(request)},
            operator=operator,
            token=token,
        )

    async def halt(request: Request, operator: Operator, token: str) -> Response:
        form = request.state.form
        active = form.get("action") != "resume"
        try:
            done = await asyncio.to_thread(
                acting(operator).halt, form.get("pair", ""), form.get("note", ""), active=active
            )
        except ExchangeError as error:
            return await refused(request, operator, token, markets_page, error)
        return go("/admin/markets", "halted" if active else "resumed", str(done["key"]))

    async def users_page(request: Request, operator: Operator, token: str) -> Response:
        typed = getattr(request.state, "form", {}).get("email", "")  # a refused POST
        search = (request.query_params.get("q") or typed).strip()[:254]
        found = await asyncio.to_thread(actions.users, search, 50) if search else []
        for user in found:
            user["balance_rows"] = [
                (asset, amount(asset, available), amount(asset, held))
                for asset, (available, held) in sorted(user["balances"].items())
            ]
            user["order_rows"] = [
                {
                    "id": order["id"],
                    "market": order["market"],
                    "side": order["side"],
                    "left": markets[order["market"]].format_amount(
                        order["amount"] - order["filled"]
                    ),
                    "price": markets[order["market"]].format_price(order["price"]),
                }
                for order in user["open_orders"]
            ]
        return render(
            request,
            "users.html",
            {"title": "Users", "q": search, "users": found, "error": error_of(request)},
            operator=operator,
            token=token,
        )

    async def freeze(request: Request, operator: Operator, token: str) -> Response:
        form = request.state.form
        email = form.get("email", "")
        active = form.get("action") != "unfreeze"
        try:
            await asyncio.to_thread(
                acting(operator).freeze, email, form.get("note", ""), active=active
            )
        except ExchangeError as error:
            return await refused(request, operator, token, users_page, error)
        return go("/admin/users", "frozen" if active else "unfrozen", email, q=email)

    async def cancel_orders(request: Request, operator: Operator, token: str) -> Response:
        form = request.state.form
        email = form.get("email", "")
        try:
            await asyncio.to_thread(
                acting(operator).cancel_orders, email, None, form.get("note", "")
            )
        except ExchangeError as error:
            return await refused(request, operator, token, users_page, error)
        return go("/admin/users", "canceled", email, q=email)

    async def audit_page(request: Request, operator: Operator, token: str) -> Response:
        search = request.query_params.get("q", "").strip()[:128]
        before_text = request.query_params.get("before", "")
        before = int(before_text) if before_text.isdigit() and len(before_text) < 19 else None
        rows = await asyncio.to_thread(actions.audit_log, 100, before, search)
        return render(
            request,
            "audit.html",
            {
                "title": "Audit log",
                "rows": rows,
                "q": search,
                "older": rows[-1]["id"] if len(rows) == 100 else None,
            },
            operator=operator,
            token=token,
        )

    async def home(_request: Request) -> Response:
        return go("/admin/withdrawals")

    return [
        Route("/admin", home, methods=["GET"]),
        Route("/admin/login", login_page, methods=["GET"]),
        Route("/admin/login", login, methods=["POST"]),
        Route("/admin/logout", logout, methods=["POST"]),
        Route("/admin/enroll", guarded(enroll_page, post=False, stage=ENROLL), methods=["GET"]),
        Route("/admin/enroll", guarded(enroll, post=True, stage=ENROLL), methods=["POST"]),
        Route("/admin/withdrawals", guarded(withdrawals_page, post=False), methods=["GET"]),
        Route(
            "/admin/withdrawals/{withdrawal_id}/approve",
            guarded(approve, post=True),
            methods=["POST"],
        ),
        Route(
            "/admin/withdrawals/{withdrawal_id}/reject",
            guarded(reject, post=True),
            methods=["POST"],
        ),
        Route("/admin/deposits", guarded(deposits_page, post=False), methods=["GET"]),
        Route("/admin/deposits", guarded(credit, post=True), methods=["POST"]),
        Route("/admin/markets", guarded(markets_page, post=False), methods=["GET"]),
        Route("/admin/markets/halt", guarded(halt, post=True), methods=["POST"]),
        Route("/admin/users", guarded(users_page, post=False), methods=["GET"]),
        Route("/admin/users/freeze", guarded(freeze, post=True), methods=["POST"]),
        Route("/admin/users/cancel-orders", guarded(cancel_orders, post=True), methods=["POST"]),
        Route("/admin/audit", guarded(audit_page, post=False), methods=["GET"]),
    ]

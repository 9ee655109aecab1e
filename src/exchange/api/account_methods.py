"""Account methods of SPEC §4: names, codes, registration, login, balances."""

from __future__ import annotations

from exchange.api import schemas
from exchange.api.context import Call, Method, text
from exchange.api.router import Answer
from exchange.api.views import balances_view
from exchange.services.accounts import CODE_TTL_MS

#: Generous limits on what is read; the accounts service refuses an address or a
#: password that breaks its rules with its own error (invalid_email, weak_password).
USER = text("user", "e-mail address", max_length=1024)
PASSWORD = text("pass", "password, 8-128 characters", max_length=1024)
CODE = text("valid_code", "the 6-digit code", max_length=16)


async def check_exist_name(call: Call) -> Answer:
    exists = await call.services.accounts.exists(USER.of(call))
    return Answer({"exists": exists}, exists)


async def make_valid_code(call: Call) -> object:
    await call.services.accounts.send_code(USER.of(call))
    return {"sent": True, "expires_in": CODE_TTL_MS // 1000}


async def regeist_user(call: Call) -> object:
    email = await call.services.accounts.register(
        USER.of(call),
        PASSWORD.of(call),
        CODE.of(call),
    )
    return {"user": email}


async def login(call: Call) -> object:
    user_id, email = await call.services.accounts.login(USER.of(call), PASSWORD.of(call))
    for carried in call.carried:  # SPEC §4: login ends any session the request carried
        await call.services.sessions.delete(carried)
    token = await call.services.sessions.create(user_id)
    call.set_session = token
    return {"user": email, "session": token}


async def logout(call: Call) -> object:
    if call.token:
        await call.services.sessions.delete(call.token)
    call.clear_session = True
    return None


async def get_user_coin(call: Call) -> object:
    engine = call.services.engine
    return balances_view(await engine.read_balances(call.user_id), engine.assets)


METHODS = (
    Method(
        "check_exist_name",
        "POST",
        check_exist_name,
        "Is this e-mail address registered? `status` is the answer.",
        schemas.Exists,
        (USER,),
        limit="exists",
    ),
    Method(
        "make_valid_code",
        "POST",
        make_valid_code,
        "E-mail a 6-digit registration code (valid 10 min, one use, 5 tries).",
        schemas.CodeSent,
        (USER,),
        limit="code",
    ),
    Method(
        "regeist_user",
        "POST",
        regeist_user,
        "Register with the e-mailed code (the seed's spelling).",
        schemas.Registered,
        (USER, PASSWORD, CODE),
        limit="register",
    ),
    Method(
        "login",
        "POST",
        login,
        "Log in; sets the HttpOnly `session` cookie.",
        schemas.LoggedIn,
        (USER, PASSWORD),
        limit="login",
    ),
    Method("logout", "POST", logout, "End the session.", None, auth=True),
    Method(
        "get_user_coin",
        "POST",
        get_user_coin,
        "Balances of every asset, zeros included.",
        schemas.Balances,
        auth=True,
    ),
)

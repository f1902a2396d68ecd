"""Sign in, sign out, and each role's landing page."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import select

from api import guards
from api.console import PREFIX
from api.console.web import CONSOLE_ROLES, ConsoleUser, check_csrf, console_user, page, safe_next
from api.deps import SessionDep
from core.security import burn_password_check, verify_password
from warehouses.models import User

router = APIRouter()
MAX_CREDENTIAL = 1024
Anyone = Annotated[ConsoleUser, console_user(*CONSOLE_ROLES)]


@router.get("", response_class=HTMLResponse)
def landing(user: Anyone) -> RedirectResponse:
    """The console's front door: each role to its own page."""
    return RedirectResponse(user.landing, status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_form(
    request: Request, next_: Annotated[str | None, Query(alias="next", max_length=2000)] = None
) -> HTMLResponse:
    return page(request, "login.html", None, next=safe_next(next_, ""), error=None, username="")


@router.post("/login", response_class=HTMLResponse, dependencies=[Depends(check_csrf)])
def login(
    request: Request,
    session: SessionDep,
    username: Annotated[str, Form(max_length=MAX_CREDENTIAL)],
    password: Annotated[str, Form(max_length=MAX_CREDENTIAL)],
    next_: Annotated[str, Form(alias="next", max_length=2000)] = "",
) -> HTMLResponse:
    """Check the password (limited per username and address like the API's token route), then start a fresh
    session with a new CSRF token: a session id planted before login is worth nothing after it."""
    address = guards.client_address(request.scope)
    wait = guards.login_blocked(username, address)
    if wait is not None:
        return _refused(request, username, next_, f"Too many failed logins; try again in {wait} s.", 429)
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        burn_password_check(password)
    if user is None or not user.active or not verify_password(password, user.password_hash):
        guards.login_failed(username, address)
        return _refused(request, username, next_, "Wrong username or password.", 401)
    if user.role not in CONSOLE_ROLES:
        return _refused(
            request,
            username,
            next_,
            f"The consoles are for dispatchers and quality staff; "
            f"{user.username} is a {user.role} (use the driver app).",
            403,
        )
    guards.login_succeeded(username)
    request.session.clear()
    request.session.update({"uid": user.id, "user": user.username, "csrf": secrets.token_urlsafe(32)})
    landing = ConsoleUser(user.id, user.username, user.role).landing
    return RedirectResponse(safe_next(next_, landing), status_code=303)


def _refused(request: Request, username: str, next_: str, error: str, status: int) -> HTMLResponse:
    response = page(request, "login.html", None, next=safe_next(next_, ""), error=error, username=username)
    response.status_code = status
    return response


@router.post("/logout", response_class=HTMLResponse, dependencies=[Depends(check_csrf)])
def logout(request: Request) -> RedirectResponse:
    request.session.clear()
    return RedirectResponse(f"{PREFIX}/login", status_code=303)

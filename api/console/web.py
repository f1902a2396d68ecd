"""What every console page shares: the templates, the signed-in user, CSRF tokens and the role check.

The session (a signed cookie, api.console.install) holds the user's id and a CSRF token made at
login. Every POST must send that token back, as the form field ``csrf_token`` or the header
``X-CSRF-Token``; a page's forms and its script read it from the page. The user is looked up
again on every request, so a disabled user or a changed role takes effect at once.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from api.console import HERE, PREFIX
from api.deps import SessionDep
from core.db import session_scope
from core.errors import Forbidden
from core.settings import get_settings

templates = Jinja2Templates(directory=HERE / "templates")
LANDING = {"dispatcher": f"{PREFIX}/dispatch", "quality": f"{PREFIX}/quality", "admin": f"{PREFIX}/dispatch"}
CONSOLE_ROLES = ("dispatcher", "quality", "admin")


@dataclass(frozen=True)
class ConsoleUser:
    id: int
    username: str
    role: str

    @property
    def landing(self) -> str:
        return LANDING.get(self.role, PREFIX)


def csrf_token(request: Request) -> str:
    """The session's CSRF token, made on first use (the login form needs one before anyone is signed in)."""
    token = request.session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


async def check_csrf(request: Request) -> None:
    """Refuse (403) a POST whose token is missing or is not this session's: another site cannot post for you."""
    expected = request.session.get("csrf")
    sent = request.headers.get("x-csrf-token")
    if sent is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        value = form.get("csrf_token")
        sent = value if isinstance(value, str) else None
    if not expected or not sent or not secrets.compare_digest(expected.encode(), sent.encode()):
        raise Forbidden("the form's security token is missing or has expired: reload the page and try again")


def _signed_in(request: Request, session: Session) -> ConsoleUser | None:
    from api.console.errors import LoginRequired
    from warehouses.models import User

    uid = request.session.get("uid")
    if uid is None:
        return None
    user = session.get(User, uid)
    if user is None or not user.active or user.username != request.session.get("user"):
        request.session.clear()
        raise LoginRequired()
    return ConsoleUser(user.id, user.username, user.role)


def signed_in_quietly(request: Request) -> ConsoleUser | None:
    """The signed-in user for an error page's nav, or None (never raises: the page is already an error)."""
    from api.console.errors import LoginRequired

    try:
        with session_scope(write=False) as session:
            return _signed_in(request, session)
    except (LoginRequired, Exception):  # noqa: BLE001 - the database may be why we are here
        return None


def console_user(*roles: str) -> Any:
    """A dependency: the signed-in user when their role is one of ``roles`` (admin always passes).
    Nobody signed in: a redirect to the login page. Another role: a plain 403 page."""
    from api.console.errors import LoginRequired

    def _check(request: Request, session: SessionDep) -> ConsoleUser:
        user = _signed_in(request, session)
        if user is None:
            raise LoginRequired()
        request.state.console_user = user
        if roles and user.role not in roles and user.role != "admin":
            raise Forbidden(
                f"this page is for the role {' or '.join(roles)}; you are signed in as {user.username} ({user.role})"
            )
        return user

    return Depends(_check)


def safe_next(target: str | None, default: str) -> str:
    """Only a path inside the console may be a redirect target after login (no open redirect)."""
    if not target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not (parts.path == PREFIX or parts.path.startswith(PREFIX + "/")):
        return default
    return target


def page(request: Request, name: str, user: ConsoleUser | None, **context: Any) -> Any:
    """Render a console page with what base.html needs: the user, the CSRF token, the nav."""
    settings = get_settings()
    return templates.TemplateResponse(
        request,
        name,
        {
            "user": user,
            "csrf": csrf_token(request),
            "prefix": PREFIX,
            "tile_url": settings.tile_url,
            "tile_attribution": settings.tile_attribution,
            **context,
        },
    )

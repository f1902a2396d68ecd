"""OAuth2 password flow: short-lived access tokens, refresh tokens rotated at each use, logout.

Failed logins are limited per username and per client address (api.guards); the limit is
checked before the password is, so a locked-out guesser costs no password hashing. An unknown
username costs the same hashing as a wrong password, so timing does not tell which exist.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, Response
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, Field
from sqlalchemy import select

from api import guards
from api.deps import Caller, SessionDep, require
from api.problems import problem
from api.schemas import PUBLIC, Me, TokenOut, problems
from core.errors import Unauthorized
from core.security import (
    RefreshReused,
    burn_password_check,
    issue_refresh_token,
    issue_token,
    revoke_refresh_tokens,
    use_refresh_token,
    verify_password,
)
from core.settings import get_settings
from warehouses.models import User

router = APIRouter(tags=["auth"])
Anyone = Annotated[Caller, Depends(require("dispatcher", "driver", "quality"))]
MAX_CREDENTIAL = 1024
BEARER = {"WWW-Authenticate": "Bearer"}


def _pair(session: SessionDep, user: User, family: str | None = None) -> TokenOut:
    settings = get_settings()
    return TokenOut(access_token=issue_token(user.username, user.role), token_type="bearer",
                    expires_in=settings.token_minutes * 60,
                    refresh_token=issue_refresh_token(session, user.id, user.username, family),
                    refresh_expires_in=settings.refresh_token_days * 86400, role=user.role)


@router.post("/auth/token", response_model=TokenOut, responses={**PUBLIC, **problems(401)})
def token(request: Request, form: Annotated[OAuth2PasswordRequestForm, Depends()], session: SessionDep) -> TokenOut:
    """Log in with a form (`username`, `password`): an access token and a refresh token.
    After COLDCHAIN_LOGIN_LIMIT_PER_USER failures for a username, or COLDCHAIN_LOGIN_LIMIT_PER_ADDRESS
    from one address, it answers 429 with Retry-After until the window has passed."""
    address = guards.client_address(request.scope)
    wait = guards.login_blocked(form.username, address)
    if wait is not None:
        raise guards.TooManyRequests(f"too many failed logins; retry in {wait} s", headers={"Retry-After": str(wait)})
    user = None
    if len(form.username) <= MAX_CREDENTIAL and len(form.password) <= MAX_CREDENTIAL:
        user = session.scalar(select(User).where(User.username == form.username))
    if user is None:
        burn_password_check(form.password[:MAX_CREDENTIAL])
    if user is None or not user.active or not verify_password(form.password, user.password_hash):
        guards.login_failed(form.username, address)
        raise Unauthorized("wrong username or password", headers=BEARER)
    guards.login_succeeded(form.username)
    return _pair(session, user)


class RefreshIn(BaseModel):
    refresh_token: str = Field(max_length=4096)


@router.post("/auth/refresh", response_model=TokenOut, responses={**PUBLIC, **problems(401)})
def refresh(body: RefreshIn, session: SessionDep) -> Any:
    """Spend a refresh token for a new access token and the next refresh token (the one sent is used up).
    A token used a second time answers 401 and revokes every token of that login: it has leaked."""
    try:
        rotated = use_refresh_token(session, body.refresh_token)
    except RefreshReused as exc:  # answered, not raised: the revocation must be committed with the request
        return problem(401, exc.detail, title=exc.title, headers=BEARER)
    user = session.get(User, rotated.user_id)
    if user is None or not user.active:
        raise Unauthorized("unknown or disabled user", headers=BEARER)
    return _pair(session, user, rotated.family)


class LogoutIn(BaseModel):
    refresh_token: str | None = Field(None, max_length=4096,
                                      description="the login to end; omitted: every login of the caller")


@router.post("/auth/logout", status_code=204, response_class=Response,
             responses={204: {"description": "logged out"}, **problems(400, 401, 403, 413, 422, 429)})
def logout(session: SessionDep, caller: Anyone, body: Annotated[LogoutIn | None, Body()] = None) -> Response:
    """Revoke the refresh tokens of one login (the refresh token given) or of every login of the caller.
    Access tokens already issued run out by themselves within COLDCHAIN_TOKEN_MINUTES."""
    revoke_refresh_tokens(session, caller.id, body.refresh_token if body else None)
    return Response(status_code=204)


@router.get("/auth/me", response_model=Me, responses=problems(401, 403, 429))
def me(caller: Anyone) -> Me:
    return Me(username=caller.username, role=caller.role)

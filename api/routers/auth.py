"""OAuth2 password flow issuing short-lived JWTs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.security import OAuth2PasswordRequestForm
from sqlalchemy import select

from api.deps import Caller, SessionDep, current_caller
from core.errors import Unauthorized
from core.security import issue_token, verify_password
from core.settings import get_settings
from warehouses.models import User

router = APIRouter(tags=["auth"])


@router.post("/auth/token")
def token(form: Annotated[OAuth2PasswordRequestForm, Depends()], session: SessionDep) -> dict:
    user = session.scalar(select(User).where(User.username == form.username))
    if user is None or not user.active or not verify_password(form.password, user.password_hash):
        raise Unauthorized("wrong username or password", headers={"WWW-Authenticate": "Bearer"})
    return {
        "access_token": issue_token(user.username, user.role),
        "token_type": "bearer",
        "expires_in": get_settings().token_minutes * 60,
        "role": user.role,
    }


@router.get("/auth/me")
def me(caller: Annotated[Caller, Depends(current_caller)]) -> dict:
    return {"username": caller.username, "role": caller.role}

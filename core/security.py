"""Password hashing (argon2 through pwdlib) and short-lived JWT access tokens."""

from __future__ import annotations

from datetime import timedelta

import jwt
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from core.errors import Unauthorized
from core.settings import get_settings
from core.timeutil import utcnow

_hasher = PasswordHash((Argon2Hasher(),))
ALGORITHM = "HS256"
ROLES = ("dispatcher", "driver", "quality", "admin")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password: str, hashed: str) -> bool:
    try:
        return _hasher.verify(password, hashed)
    except Exception:  # a corrupt stored hash must read as "wrong password", not a 500
        return False


def issue_token(username: str, role: str, minutes: int | None = None) -> str:
    settings = get_settings()
    now = utcnow()
    claims = {
        "sub": username,
        "role": role,
        "iat": now,
        "exp": now + timedelta(minutes=minutes or settings.token_minutes),
    }
    return jwt.encode(claims, settings.secret_key, algorithm=ALGORITHM)


def read_token(token: str) -> dict:
    try:
        return jwt.decode(token, get_settings().secret_key, algorithms=[ALGORITHM], options={"require": ["exp", "sub"]})
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("token expired") from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized("invalid token") from exc

"""Password hashing (argon2 through pwdlib), short-lived JWT access tokens and rotated refresh tokens.

Two kinds of token, told apart by their `typ` claim so neither is accepted in place of the
other: an access token (`typ` "access", minutes) is checked by signature alone on every
request; a refresh token (`typ` "refresh", days) is also a row in `refresh_tokens`, stored as
its SHA-256 only, used once: each refresh marks it used and issues the next one of the same
family. A used token presented again means it leaked (the OAuth 2.0 security BCP's reuse
detection): the whole family is revoked, so the thief's copy and the user's both stop working.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

import jwt
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy import ForeignKey, String, delete, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.db import Base, UTCDateTime
from core.errors import Unauthorized
from core.settings import get_settings
from core.timeutil import utcnow

_hasher = PasswordHash((Argon2Hasher(),))
ALGORITHM = "HS256"
ROLES = ("dispatcher", "driver", "quality", "admin")
ACCESS, REFRESH = "access", "refresh"


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password: str, hashed: str) -> bool:
    try:
        return _hasher.verify(password, hashed)
    except Exception:  # a corrupt stored hash must read as "wrong password", not a 500
        return False


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return _hasher.hash(secrets.token_urlsafe(16))


def burn_password_check(password: str) -> None:
    """Spend the time of one verification for an unknown username, so the answer's timing does not
    tell which usernames exist (OWASP API2)."""
    verify_password(password, _dummy_hash())


def issue_token(username: str, role: str, minutes: int | None = None) -> str:
    """An access token; `minutes` overrides the configured lifetime (tests pass a negative one)."""
    settings = get_settings()
    now = utcnow()
    claims = {
        "sub": username,
        "role": role,
        "typ": ACCESS,
        "iat": now,
        "exp": now + timedelta(minutes=settings.token_minutes if minutes is None else minutes),
    }
    return jwt.encode(claims, settings.secret_key, algorithm=ALGORITHM)


@lru_cache(maxsize=4096)
def _verified(token: str, secret: str) -> dict:
    """The claims of a token whose signature checks out, expiry not looked at (the caller does, on every use).
    Cached: a phone sends the same access token with every request for its 15 minutes, and the rate limiter
    and the route both read it; the HMAC, base64 and JSON work is done once. Only a token that verified is
    cached (an exception is not), and the key includes the secret."""
    return jwt.decode(token, secret, algorithms=[ALGORITHM],
                      options={"require": ["exp", "sub", "typ"], "verify_exp": False, "verify_iat": False})


def read_token(token: str, typ: str = ACCESS, verify_exp: bool = True) -> dict:
    """The claims of a valid token of the given type; anything else is Unauthorized."""
    try:
        claims = dict(_verified(token, get_settings().secret_key))
    except jwt.PyJWTError as exc:
        raise Unauthorized("invalid token") from exc
    exp = claims.get("exp")
    if not isinstance(exp, int | float):
        raise Unauthorized("invalid token")
    # times are checked against the process's clock (core.timeutil), which may be a simulated one
    if verify_exp and exp <= utcnow().timestamp():
        raise Unauthorized("token expired")
    if claims.get("typ") != typ:
        raise Unauthorized(f"not an {typ} token" if typ == ACCESS else f"not a {typ} token")
    return claims


class RefreshToken(Base):
    """One refresh token, by its SHA-256; a family is one login's chain of rotated tokens."""

    __tablename__ = "refresh_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    family: Mapped[str] = mapped_column(String(36), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_refresh_token(session: Session, user_id: int, username: str, family: str | None = None,
                        now: datetime | None = None) -> str:
    """A new refresh token (a new family unless rotating one); the user's expired rows are pruned."""
    now = now or utcnow()
    settings = get_settings()
    family = family or str(uuid.uuid4())
    expires = now + timedelta(days=settings.refresh_token_days)
    claims = {"sub": username, "typ": REFRESH, "fam": family, "jti": secrets.token_urlsafe(32), "iat": now,
              "exp": expires}
    token = jwt.encode(claims, settings.secret_key, algorithm=ALGORITHM)
    session.execute(delete(RefreshToken).where(RefreshToken.user_id == user_id, RefreshToken.expires_at < now))
    session.add(RefreshToken(family=family, user_id=user_id, token_hash=_digest(token), issued_at=now,
                             expires_at=expires))
    session.flush()
    return token


class RefreshReused(Unauthorized):
    """A refresh token presented a second time. Its family has been revoked in the caller's session, which
    must still commit (the API answers 401 without raising, so the revocation is kept)."""


@dataclass(frozen=True)
class Rotated:
    user_id: int
    family: str


def use_refresh_token(session: Session, token: str, now: datetime | None = None) -> Rotated:
    """Spend a refresh token once. Unknown, expired, revoked or already used tokens are Unauthorized;
    a second use also revokes the family (RefreshReused). The caller issues the next token."""
    read_token(token, REFRESH)
    now = now or utcnow()
    row = session.scalar(select(RefreshToken).where(RefreshToken.token_hash == _digest(token)))
    if row is None:
        raise Unauthorized("unknown refresh token")
    if row.revoked_at is not None:
        raise Unauthorized("refresh token revoked (logged out)")
    # One conditional UPDATE, so two concurrent refreshes with the same token cannot both succeed.
    spent = session.execute(update(RefreshToken)
                            .where(RefreshToken.id == row.id, RefreshToken.used_at.is_(None),
                                   RefreshToken.revoked_at.is_(None))
                            .values(used_at=now).execution_options(synchronize_session=False)).rowcount
    if spent != 1:
        revoke_family(session, row.family, now)
        raise RefreshReused("refresh token already used: every token of this login is revoked; log in again")
    return Rotated(row.user_id, row.family)


def revoke_family(session: Session, family: str, now: datetime | None = None) -> int:
    return session.execute(update(RefreshToken)
                           .where(RefreshToken.family == family, RefreshToken.revoked_at.is_(None))
                           .values(revoked_at=now or utcnow()).execution_options(synchronize_session=False)).rowcount


def revoke_refresh_tokens(session: Session, user_id: int, token: str | None = None) -> int:
    """Logout: revoke the family of `token` if it is this user's, else (no token) every family of the user.
    A token that is not the user's, or not a refresh token at all, revokes nothing (and says nothing)."""
    now = utcnow()
    if token is None:
        return session.execute(update(RefreshToken)
                               .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
                               .values(revoked_at=now).execution_options(synchronize_session=False)).rowcount
    try:
        read_token(token, REFRESH, verify_exp=False)
    except Unauthorized:
        return 0
    row = session.scalar(select(RefreshToken).where(RefreshToken.token_hash == _digest(token),
                                                    RefreshToken.user_id == user_id))
    return revoke_family(session, row.family, now) if row is not None else 0

"""`coldchain user add` creates or updates a login whose password works at the token route."""

from __future__ import annotations

import subprocess
from pathlib import Path

from sqlalchemy import select

from core.db import make_engine
from core.security import verify_password
from tests.support import coldchain_in_process
from warehouses.models import User


def run(env: dict, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    """The command in this process (tests.support.coldchain_in_process): its exit code and messages are tested."""
    return coldchain_in_process(env, *args, stdin=stdin)


def test_user_add_hashes_with_argon2_and_updates(databases, tmp_path: Path) -> None:  # noqa: ANN001
    url = databases.new("users")
    env = {"COLDCHAIN_DATABASE_URL": url, "COLDCHAIN_DATA_DIR": str(tmp_path)}
    first = run(env, "user", "add", "mei", "--role", "quality", "--password-stdin", stdin="first-password\n")
    assert first.returncode == 0, first.stderr
    assert "created user mei (quality)" in first.stderr
    second = run(env, "user", "add", "mei", "--role", "dispatcher", "--password-stdin", stdin="second-password\n")
    assert second.returncode == 0 and "updated user mei" in second.stderr
    engine = make_engine(url)
    with engine.connect() as conn:
        user = conn.execute(select(User.role, User.password_hash).where(User.username == "mei")).one()
    engine.dispose()
    assert user.role == "dispatcher" and user.password_hash.startswith("$argon2id$")
    assert verify_password("second-password", user.password_hash)
    assert not verify_password("first-password", user.password_hash)


def test_user_add_refuses_unknown_role_and_short_password(databases, tmp_path: Path) -> None:  # noqa: ANN001
    env = {"COLDCHAIN_DATABASE_URL": databases.new("users2"), "COLDCHAIN_DATA_DIR": str(tmp_path)}
    bad_role = run(env, "user", "add", "x", "--role", "boss", "--password-stdin", stdin="long-enough-pw\n")
    assert bad_role.returncode == 2 and "unknown role 'boss'" in bad_role.stderr
    short = run(env, "user", "add", "x", "--role", "driver", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "at least 8 characters" in short.stderr

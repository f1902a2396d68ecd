"""Security across the API (SECURITY.md): tokens and their rotation, rate limits, body limits, CORS, job errors.

Real HTTP against uvicorn. Rate-limit tests use client addresses of their own (uvicorn takes
X-Forwarded-For from a loopback peer, as it would from a trusted proxy) and usernames of their
own, so their counts meet no other test's, in memory or in a shared Redis alike.
"""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import httpx
import jwt
import pytest

from api import guards
from core.settings import get_settings
from tests.api.test_foundation_api import assert_problem
from tests.conftest import LiveServer, free_port

TOKEN = "/api/v1/auth/token"
REFRESH = "/api/v1/auth/refresh"
LOGOUT = "/api/v1/auth/logout"


def unique_address() -> str:
    n = uuid.uuid4().int
    return f"10.{n % 250 + 1}.{n // 250 % 250 + 1}.{n // 62500 % 250 + 1}"


def login(api, username: str, password: str, address: str | None = None) -> httpx.Response:  # noqa: ANN001
    headers = {"X-Forwarded-For": address} if address else {}
    return api.post(TOKEN, data={"username": username, "password": password}, headers=headers)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ------------------------------------------------------------------------------------------------- tokens


def test_token_pair_refresh_rotation_and_reuse(api, make_user) -> None:  # noqa: ANN001
    password = make_user("rot-user", "dispatcher")
    first = login(api, "rot-user", password)
    assert first.status_code == 200, first.text
    pair = first.json()
    assert pair["token_type"] == "bearer" and pair["expires_in"] == get_settings().token_minutes * 60
    assert pair["refresh_expires_in"] == get_settings().refresh_token_days * 86400
    claims = jwt.decode(pair["refresh_token"], get_settings().secret_key, algorithms=["HS256"])
    assert claims["typ"] == "refresh" and claims["sub"] == "rot-user"

    second = api.post(REFRESH, json={"refresh_token": pair["refresh_token"]})
    assert second.status_code == 200, second.text
    rotated = second.json()
    assert rotated["refresh_token"] != pair["refresh_token"] and rotated["role"] == "dispatcher"
    assert api.get("/api/v1/auth/me", headers=bearer(rotated["access_token"])).json()["username"] == "rot-user"

    # the spent token again: refused, and the whole login with it (its successor too)
    reused = assert_problem(api.post(REFRESH, json={"refresh_token": pair["refresh_token"]}), 401)
    assert "already used" in reused["detail"]
    assert_problem(api.post(REFRESH, json={"refresh_token": rotated["refresh_token"]}), 401)
    # another login of the same user is another family, untouched
    other = login(api, "rot-user", password).json()
    assert api.post(REFRESH, json={"refresh_token": other["refresh_token"]}).status_code == 200


def test_access_and_refresh_tokens_are_not_interchangeable(api, make_user) -> None:  # noqa: ANN001
    password = make_user("typ-user", "quality")
    pair = login(api, "typ-user", password).json()
    body = assert_problem(api.get("/api/v1/network/nodes", headers=bearer(pair["refresh_token"])), 401)
    assert body["detail"] == "not an access token"
    body = assert_problem(api.post(REFRESH, json={"refresh_token": pair["access_token"]}), 401)
    assert body["detail"] == "not a refresh token"
    # a token without a type (as issued before refresh tokens) is no access token either
    untyped = jwt.encode({"sub": "typ-user", "role": "quality", "exp": int(time.time()) + 600},
                         get_settings().secret_key, algorithm="HS256")
    assert_problem(api.get("/api/v1/network/nodes", headers=bearer(untyped)), 401)
    assert_problem(api.post(REFRESH, json={"refresh_token": "not-a-token"}), 401)
    forged = jwt.encode({"sub": "typ-user", "typ": "refresh", "exp": int(time.time()) + 600, "fam": "x"},
                        get_settings().secret_key, algorithm="HS256")
    assert assert_problem(api.post(REFRESH, json={"refresh_token": forged}), 401)["detail"] == "unknown refresh token"


def test_logout_revokes_one_login_or_all(api, make_user) -> None:  # noqa: ANN001
    password = make_user("out-user", "driver")
    one, two, three = (login(api, "out-user", password).json() for _ in range(3))
    assert_problem(api.post(LOGOUT, json={"refresh_token": one["refresh_token"]}), 401)  # needs an access token
    done = api.post(LOGOUT, json={"refresh_token": one["refresh_token"]}, headers=bearer(one["access_token"]))
    assert done.status_code == 204 and done.content == b""
    assert "revoked" in assert_problem(api.post(REFRESH, json={"refresh_token": one["refresh_token"]}), 401)["detail"]
    # another user cannot log this user out by presenting their refresh token
    stranger = login(api, "out-stranger", make_user("out-stranger", "driver")).json()
    assert api.post(LOGOUT, json={"refresh_token": two["refresh_token"]},
                    headers=bearer(stranger["access_token"])).status_code == 204
    two = api.post(REFRESH, json={"refresh_token": two["refresh_token"]})
    assert two.status_code == 200
    # no refresh token: every login of the caller ends
    assert api.post(LOGOUT, headers=bearer(three["access_token"])).status_code == 204
    for token in (two.json()["refresh_token"], three["refresh_token"]):
        assert_problem(api.post(REFRESH, json={"refresh_token": token}), 401)
    assert api.post(REFRESH, json={"refresh_token": stranger["refresh_token"]}).status_code == 200


def test_a_disabled_user_cannot_refresh(api, make_user, session) -> None:  # noqa: ANN001
    from sqlalchemy import update

    from warehouses.models import User

    pair = login(api, "gone-user", make_user("gone-user", "quality")).json()
    session.execute(update(User).where(User.username == "gone-user").values(active=False))
    assert_problem(api.post(REFRESH, json={"refresh_token": pair["refresh_token"]}), 401)


def test_no_answer_or_schema_carries_a_password_hash(api, token) -> None:  # noqa: ANN001
    doc = api.get("/openapi.json").json()
    fields = {name for schema in doc["components"]["schemas"].values() for name in schema.get("properties", {})}
    assert "password" in fields  # the login form's field: the walk does see property names
    assert not {f for f in fields if "hash" in f or (f.startswith("password") and f != "password")}
    me = api.get("/api/v1/auth/me", headers=token("dispatcher"))
    assert set(me.json()) == {"username", "role"}


@pytest.mark.slow
def test_reuse_revocation_is_committed_with_the_401(databases, tmp_path: Path) -> None:  # noqa: ANN001
    """At the real request boundary a raised error rolls the request back: the reuse answer must still keep the
    revocation (the in-thread fixture never commits, so this runs `coldchain serve`)."""
    from tests.stack import Stack

    with Stack(databases, tmp_path, "refresh") as stack:
        stack.start(workers=0)
        stack.cli("user", "add", "ref-user", "--role", "dispatcher", "--password-stdin", stdin="ref-password\n")
        base = stack.base
        pair = httpx.post(f"{base}{TOKEN}", data={"username": "ref-user", "password": "ref-password"}).json()
        nxt = httpx.post(f"{base}{REFRESH}", json={"refresh_token": pair["refresh_token"]})
        assert nxt.status_code == 200, nxt.text + stack.log()
        assert httpx.post(f"{base}{REFRESH}", json={"refresh_token": pair["refresh_token"]}).status_code == 401
        stolen = httpx.post(f"{base}{REFRESH}", json={"refresh_token": nxt.json()["refresh_token"]})
        assert stolen.status_code == 401, "the successor of a reused token still works: the revocation was lost"
        # and logout, committed, holds across processes of the same database
        fresh = httpx.post(f"{base}{TOKEN}", data={"username": "ref-user", "password": "ref-password"}).json()
        assert httpx.post(f"{base}{LOGOUT}", headers=bearer(fresh["access_token"]),
                          json={"refresh_token": fresh["refresh_token"]}).status_code == 204
        assert httpx.post(f"{base}{REFRESH}", json={"refresh_token": fresh["refresh_token"]}).status_code == 401


# ------------------------------------------------------------------------------------------------- rate limits


def assert_429(resp: httpx.Response) -> int:
    body = assert_problem(resp, 429)
    wait = int(resp.headers["retry-after"])
    assert 1 <= wait <= 60, wait
    assert body["detail"]
    return wait


def test_login_limit_per_username(api, make_user, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(get_settings(), "login_limit_per_user", "3/minute")
    password = make_user("locked-user", "dispatcher")
    for _ in range(3):
        assert_problem(login(api, "locked-user", "wrong password", unique_address()), 401)
    # from yet another address, and with the right password: the username is locked for the window
    assert_429(login(api, "locked-user", password, unique_address()))
    assert_429(login(api, "LOCKED-USER", password, unique_address()))
    # other users are not
    assert login(api, "other-user", make_user("other-user", "dispatcher"), unique_address()).status_code == 200


def test_a_right_password_clears_the_username_failures(api, make_user, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(get_settings(), "login_limit_per_user", "3/minute")
    password = make_user("typo-user", "quality")
    for _ in range(2):
        assert_problem(login(api, "typo-user", "typo", unique_address()), 401)
    assert login(api, "typo-user", password).status_code == 200
    for _ in range(2):
        assert_problem(login(api, "typo-user", "typo", unique_address()), 401)
    assert login(api, "typo-user", password).status_code == 200


def test_login_limit_per_address(api, make_user, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(get_settings(), "login_limit_per_address", "4/minute")
    password = make_user("sprayed-user", "dispatcher")
    address = unique_address()
    for i in range(4):
        assert_problem(login(api, f"spray-{i}", "guess-password", address), 401)
    assert_429(login(api, "sprayed-user", password, address))  # even a real account, from this address
    assert login(api, "sprayed-user", password, unique_address()).status_code == 200


def test_general_limit_per_address_and_per_user(api, token, monkeypatch) -> None:  # noqa: ANN001
    first, second = token("dispatcher"), token("dispatcher")
    monkeypatch.setattr(get_settings(), "rate_limit_per_address", "5/minute")
    monkeypatch.setattr(get_settings(), "rate_limit_per_caller", "6/minute")
    address = unique_address()
    for _ in range(5):
        assert api.get("/api/v1/health", headers={"X-Forwarded-For": address}).status_code == 200
    wait = assert_429(api.get("/api/v1/health", headers={"X-Forwarded-For": address}))
    assert api.get("/api/v1/health", headers={"X-Forwarded-For": unique_address()}).status_code == 200
    # a forged token counts against its address, not against a user
    assert_429(api.get("/api/v1/network/nodes", headers={"X-Forwarded-For": address,
                                                         "Authorization": "Bearer forged"}))
    # a user's requests count against the user, whatever the address
    for _ in range(6):
        assert api.get("/api/v1/network/nodes", headers={**first, "X-Forwarded-For": unique_address()}
                       ).status_code == 200
    body = assert_problem(api.get("/api/v1/network/nodes", headers=first), 429)
    assert "this user" in body["detail"]
    assert api.get("/api/v1/network/nodes", headers=second).status_code == 200
    assert wait <= 60


def test_rate_limit_storage_follows_the_settings(monkeypatch) -> None:  # noqa: ANN001
    settings = get_settings()
    monkeypatch.setattr(settings, "rate_limit_url", None)
    monkeypatch.setattr(settings, "broker_url", None)
    assert settings.rate_limit_storage == "memory://"
    monkeypatch.setattr(settings, "broker_url", "redis://127.0.0.1:6379/0")
    assert settings.rate_limit_storage == "redis://127.0.0.1:6379/0"
    monkeypatch.setattr(settings, "rate_limit_url", "redis://127.0.0.1:6379/5")
    assert settings.rate_limit_storage == "redis://127.0.0.1:6379/5"


def test_counts_are_shared_through_redis(monkeypatch) -> None:  # noqa: ANN001
    """Two limiters on one Redis (two API workers) see one count; another namespace (deployment) does not."""
    import redis

    url = "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    monkeypatch.setattr(get_settings(), "rate_limit_url", url)
    key = uuid.uuid4().hex
    assert [guards.hit("3/minute", "test", key) for _ in range(3)] == [None, None, None]
    guards._limiter.cache_clear()  # a second worker: its own connection, the same counts
    assert guards.hit("3/minute", "test", key) is not None
    guards._namespace.cache_clear()
    monkeypatch.setattr(get_settings(), "database_url", "postgresql://elsewhere/other")
    assert guards.hit("3/minute", "test", key) is None
    guards._limiter.cache_clear()
    guards._namespace.cache_clear()


def test_a_broken_limiter_lets_requests_through(api, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(get_settings(), "rate_limit_url", "redis://127.0.0.1:9/0")  # nothing listens there
    guards._limiter.cache_clear()
    try:
        assert api.get("/api/v1/health").status_code == 200
    finally:
        monkeypatch.undo()
        guards._limiter.cache_clear()


# ------------------------------------------------------------------------------------------------- body limits


def raw_exchange(base: str, head: str, body_chunks: list[bytes] | None = None, timeout: float = 5) -> tuple[
        bytes, int]:
    """Send a request head (and chunks, stopping as soon as an answer arrives); the answer and the bytes sent."""
    url = urlparse(base)
    sent = 0
    with socket.create_connection((url.hostname, url.port), timeout=timeout) as sock:
        sock.sendall(head.encode())
        sock.setblocking(False)
        answer = b""
        for chunk in body_chunks or []:
            with contextlib.suppress(BlockingIOError):
                answer += sock.recv(65536)
            if answer:
                break
            try:
                sock.sendall(chunk)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
            time.sleep(0.005)
        sock.setblocking(True)
        sock.settimeout(timeout)
        try:
            while b"\r\n\r\n" not in answer:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except (TimeoutError, ConnectionResetError):
            pass
    return answer, sent


def test_oversized_content_length_is_refused_before_the_body_is_sent(live_app) -> None:  # noqa: ANN001
    limit = get_settings().max_body_bytes
    head = (f"POST /api/v1/auth/refresh HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"Content-Length: {limit + 1}\r\n\r\n")
    t0 = time.monotonic()
    answer, _sent = raw_exchange(live_app.url, head)  # not a byte of the body
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"application/problem+json" in answer and time.monotonic() - t0 < 3
    # at the limit it is not refused: the server waits for the body (no answer before the timeout)
    head = head.replace(f"Content-Length: {limit + 1}", f"Content-Length: {limit}")
    answer, _sent = raw_exchange(live_app.url, head, timeout=1)
    assert answer == b""


def test_a_chunked_body_is_counted_while_it_streams(live_app) -> None:  # noqa: ANN001
    limit = get_settings().max_body_bytes
    head = ("POST /api/v1/auth/refresh HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n")
    piece = b"x" * 65536
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    answer, sent = raw_exchange(live_app.url, head, [chunk] * (3 * limit // len(piece)))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert sent < 2 * limit, f"the server read {sent} bytes before refusing"


def test_uploads_have_a_larger_allowance_than_other_routes(api, token, monkeypatch) -> None:  # noqa: ANN001
    headers = token("dispatcher")
    monkeypatch.setattr(get_settings(), "max_body_bytes", 4096)
    csv = "order_ref,delivery_date,mode,lat,lon,window_start,window_end,sku,qty,pickup_node\n" + "".join(
        f"Z{i},2030-01-10,delivery,30.65,104.07,09:00,11:00,NOPE,1,\n" for i in range(150))
    assert len(csv) > 4096
    upload = api.post("/api/v1/orders/import", files={"file": ("big.csv", csv.encode(), "text/csv")}, headers=headers)
    assert upload.status_code == 200, upload.text
    assert len(upload.json()["rejected"]) == 150
    body = assert_problem(api.post("/api/v1/alerts/1/ack", json={"note": "x" * 5000}, headers=headers), 413)
    assert body["limit"] == 4096
    monkeypatch.setattr(get_settings(), "upload_max_bytes", 4096)
    assert_problem(api.post("/api/v1/orders/import", files={"file": ("big.csv", csv.encode(), "text/csv")},
                            headers=headers), 413)


def test_the_allowance_table_takes_path_templates(monkeypatch) -> None:  # noqa: ANN001
    settings = get_settings()
    assert guards.body_limit("POST", "/api/v1/orders") == settings.upload_max_bytes
    assert guards.body_limit("POST", "/api/v1/orders/A1/cancel") == settings.max_body_bytes
    assert guards.body_limit("GET", "/api/v1/orders") == settings.max_body_bytes
    monkeypatch.setitem(guards.BODY_LIMITS, ("POST", "/api/v1/driver/stops/{stop_id}/proof"), 5 * 1024 * 1024)
    assert guards.body_limit("POST", "/api/v1/driver/stops/s-8f2c/proof") == 5 * 1024 * 1024
    assert guards.body_limit("POST", "/api/v1/driver/stops/s-8f2c/x/proof") == settings.max_body_bytes


# ------------------------------------------------------------------------------------------------- CORS, hosts


def test_cors_is_closed_by_default(api) -> None:  # noqa: ANN001
    assert get_settings().cors_origins == []
    preflight = api.options("/api/v1/network/nodes", headers={"Origin": "https://evil.example",
                                                              "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in preflight.headers
    plain = api.get("/api/v1/health", headers={"Origin": "https://evil.example"})
    assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers


def test_cors_opens_for_configured_origins_only(monkeypatch) -> None:  # noqa: ANN001
    from api.app import create_app

    monkeypatch.setattr(get_settings(), "cors_origins", ["https://dispatch.example"])
    with LiveServer(create_app(), free_port()) as server, httpx.Client(base_url=server.url) as client:
        ok = client.options("/api/v1/network/nodes", headers={"Origin": "https://dispatch.example",
                                                              "Access-Control-Request-Method": "GET",
                                                              "Access-Control-Request-Headers": "authorization"})
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "https://dispatch.example"
        assert "authorization" in ok.headers["access-control-allow-headers"].lower()
        got = client.get("/api/v1/health", headers={"Origin": "https://dispatch.example"})
        assert got.headers["access-control-allow-origin"] == "https://dispatch.example"
        other = client.options("/api/v1/network/nodes", headers={"Origin": "https://evil.example",
                                                                  "Access-Control-Request-Method": "GET"})
        assert "access-control-allow-origin" not in other.headers
        assert "access-control-allow-origin" not in client.get(
            "/api/v1/health", headers={"Origin": "https://evil.example"}).headers


def test_allowed_hosts_when_configured(monkeypatch) -> None:  # noqa: ANN001
    from api.app import create_app

    monkeypatch.setattr(get_settings(), "allowed_hosts", ["api.coldchain.example"])
    with LiveServer(create_app(), free_port()) as server, httpx.Client(base_url=server.url) as client:
        assert_problem(client.get("/api/v1/health"), 400)  # Host: 127.0.0.1:port
        assert client.get("/api/v1/health", headers={"Host": "api.coldchain.example"}).status_code == 200


# ------------------------------------------------------------------------------------------------- jobs


def test_a_failed_job_shows_domain_errors_but_not_internals() -> None:
    from api.routers.jobs import _error_text
    from core.errors import Invalid

    assert _error_text(Invalid("no orders on 2026-11-24")) == "Invalid: no orders on 2026-11-24"
    leaked = _error_text(RuntimeError('connection to server at "10.0.0.5", port 5432 failed: password'))
    assert leaked.startswith("RuntimeError:") and "10.0.0.5" not in leaked and "password" not in leaked

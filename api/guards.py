"""Request guards in front of every route: rate limits and request body size limits (OWASP API4).

Both are pure ASGI middleware, so they apply to every router, present and future (the driver
routes included), without a line in the routers:

- a general rate limit per caller: per user for a valid access token, else per client address;
- the login limit (failed logins per username and per address), called by the token route;
- a body size limit per method and path (`BODY_LIMITS`), refused with 413 from the
  Content-Length header before a byte of the body is read, and counted while a body without
  one (chunked) streams in.

Counts live in the `limits` package's storage: each process's memory by default, Redis when
COLDCHAIN_RATE_LIMIT_URL (or a Redis broker URL) is set, so that several API workers share
them. Keys carry a namespace derived from the database URL: deployments (and test runs) that
share a Redis do not share counts. A storage that fails is logged and lets requests through:
an outage of the limiter must not take the API down with it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import anyio
from limits import RateLimitItem, parse
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

from api.problems import problem
from core.errors import PayloadTooLarge, TooManyRequests, Unauthorized
from core.security import read_token
from core.settings import get_settings

log = logging.getLogger("coldchain.api.guards")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Routes allowed a larger body than COLDCHAIN_MAX_BODY_BYTES: (method, path template) -> a Settings
# field name or a number of bytes. Templates use the routers' {param} syntax. Extend it here.
BODY_LIMITS: dict[tuple[str, str], str | int] = {
    ("POST", "/api/v1/orders"): "upload_max_bytes",
    ("POST", "/api/v1/orders/import"): "upload_max_bytes",
    ("POST", "/api/v1/scenarios/load"): "upload_max_bytes",
    ("POST", "/console/dispatch/import"): "upload_max_bytes",
    # the route itself refuses a photo over 5 MB while streaming (delivery.proofs); room for the multipart framing
    ("POST", "/api/v1/driver/stops/{stop_id}/proof"): 5 * 1024 * 1024 + 64 * 1024,
}




# ---------------------------------------------------------------------------------------------- rate limits


@dataclass
class Limiter:
    storage: Storage
    moving: MovingWindowRateLimiter
    sliding: SlidingWindowCounterRateLimiter
    in_memory: bool


@lru_cache(maxsize=4)
def _limiter(uri: str) -> Limiter:
    storage = storage_from_string(uri)
    return Limiter(storage, MovingWindowRateLimiter(storage), SlidingWindowCounterRateLimiter(storage),
                   isinstance(storage, MemoryStorage))


def limiter() -> Limiter:
    return _limiter(get_settings().rate_limit_storage)


@lru_cache(maxsize=8)
def _namespace(database_url: str) -> str:
    return "coldchain-" + hashlib.sha256(database_url.encode()).hexdigest()[:12]


def namespace() -> str:
    return _namespace(get_settings().sqlalchemy_url)


@lru_cache(maxsize=64)
def rate(text: str) -> RateLimitItem:
    return parse(text)


def reset_counts() -> None:
    """Forget every count of this process's storage (tests; an operator lifting a lockout)."""
    limiter().storage.reset()


def _retry_after(limiter_: MovingWindowRateLimiter | SlidingWindowCounterRateLimiter, item: RateLimitItem,
                 *keys: str) -> int:
    reset_at = limiter_.get_window_stats(item, *keys).reset_time
    return max(1, math.ceil(reset_at - time.time()))


def _guarded(action: Callable[[], int | None]) -> int | None:
    try:
        return action()
    except Exception:  # noqa: BLE001 - a limiter outage lets requests through, loudly
        log.warning("rate-limit storage failed; request let through", exc_info=True)
        return None


def hit(limit: str, kind: str, key: str) -> int | None:
    """Count one request against `limit`; the seconds to wait when it is exhausted, else None."""
    item = rate(limit)

    def act() -> int | None:
        lim = limiter()
        if lim.sliding.hit(item, namespace(), kind, key):
            return None
        return _retry_after(lim.sliding, item, namespace(), kind, key)

    return _guarded(act)


def login_blocked(username: str, address: str) -> int | None:
    """Seconds to wait when this username or this address has used up its failed logins, else None."""
    settings = get_settings()

    def act() -> int | None:
        lim = limiter()
        waits = []
        for limit, kind, key in ((settings.login_limit_per_user, "login-user", username.casefold()),
                                 (settings.login_limit_per_address, "login-addr", address)):
            item = rate(limit)
            if not lim.moving.test(item, namespace(), kind, key):
                waits.append(_retry_after(lim.moving, item, namespace(), kind, key))
        return max(waits) if waits else None

    return _guarded(act)


def login_failed(username: str, address: str) -> None:
    settings = get_settings()

    def act() -> None:
        lim = limiter()
        lim.moving.hit(rate(settings.login_limit_per_user), namespace(), "login-user", username.casefold())
        lim.moving.hit(rate(settings.login_limit_per_address), namespace(), "login-addr", address)

    _guarded(act)


def login_succeeded(username: str) -> None:
    """A right password clears the username's failures (not the address's: one good account must not
    reset an address that is guessing at others)."""
    settings = get_settings()
    _guarded(lambda: limiter().moving.clear(rate(settings.login_limit_per_user), namespace(), "login-user",
                                            username.casefold()))


def client_address(scope: Scope) -> str:
    """The peer address; behind a proxy, uvicorn puts the forwarded client here when the proxy is trusted
    (--forwarded-allow-ips, default 127.0.0.1)."""
    client = scope.get("client")
    return client[0] if client else "unknown"


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def caller_key(scope: Scope) -> tuple[str, str, str]:
    """(limit, kind, key): a valid access token counts against its user, anything else against the address."""
    settings = get_settings()
    token = _bearer(scope)
    if token:
        try:
            return settings.rate_limit_per_caller, "user", read_token(token)["sub"]
        except Unauthorized:
            pass
    console_user = (scope.get("session") or {}).get("user")  # a signed console session (api.console)
    if console_user:
        return settings.rate_limit_per_caller, "user", str(console_user)
    return settings.rate_limit_per_address, "addr", client_address(scope)


def too_many(retry_after: int, detail: str, instance: str) -> Any:
    return problem(429, detail, title=TooManyRequests.title, instance=instance,
                   headers={"Retry-After": str(retry_after)})


class RateLimitMiddleware:
    """The general limit per caller, in front of everything (the OpenAPI document and docs included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        limit, kind, key = caller_key(scope)
        in_memory = _guarded(lambda: int(limiter().in_memory))
        if in_memory is None:  # the storage cannot even be set up: let the request through (logged)
            wait = None
        elif in_memory:
            wait = hit(limit, kind, key)
        else:  # a network round trip: keep it off the event loop
            wait = await anyio.to_thread.run_sync(hit, limit, kind, key)
        if wait is not None:
            who = "this user" if kind == "user" else "this address"
            response = too_many(wait, f"more than {limit} requests from {who}; retry in {wait} s", scope["path"])
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


# ---------------------------------------------------------------------------------------------- hosts


class AllowedHostsMiddleware:
    """Answer only to the Host names of COLDCHAIN_ALLOWED_HOSTS (when set), so that links built from the
    request (pagination's next, job hrefs) cannot be pointed at another host by a forged Host header."""

    def __init__(self, app: ASGIApp, hosts: list[str]) -> None:
        self.app = app
        self.hosts = {h.lower() for h in hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "*" not in self.hosts:
            host = ""
            for name, value in scope.get("headers", ()):
                if name == b"host":
                    host = value.decode("latin-1").lower()
            host = host.split("]")[0] + "]" if host.startswith("[") else host.split(":")[0]
            if host not in self.hosts:
                await problem(400, "this server does not answer to that Host", instance=scope["path"])(
                    scope, receive, send)
                return
        await self.app(scope, receive, send)


# ---------------------------------------------------------------------------------------------- body limits


def _compile(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}/]+\})", template)
    return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts) + "$")


@lru_cache(maxsize=1)
def _compiled(table: tuple[tuple[tuple[str, str], str | int], ...]) -> list[tuple[str, re.Pattern[str], str | int]]:
    return [(method, _compile(path), allowance) for (method, path), allowance in table]


def body_limit(method: str, path: str) -> int:
    """The largest body, in bytes, this method and path may carry."""
    settings = get_settings()
    for m, pattern, allowance in _compiled(tuple(BODY_LIMITS.items())):
        if m == method and pattern.match(path):
            return int(getattr(settings, allowance) if isinstance(allowance, str) else allowance)
    return settings.max_body_bytes


class _BodyTooLarge(Exception):
    pass


def _too_large(limit: int, instance: str) -> Any:
    return problem(413, f"request body larger than {limit} bytes", title=PayloadTooLarge.title, instance=instance,
                   headers={"Connection": "close"}, limit=limit)


class BodyLimitMiddleware:
    """413 before reading when Content-Length says too much; otherwise count the body as it streams and
    answer 413 the moment it passes the limit (whatever the route was doing with it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(scope["method"], scope["path"])
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await problem(400, "Content-Length is not a number", instance=scope["path"],
                                  headers={"Connection": "close"})(scope, receive, send)
                    return
        if declared is not None and declared > limit:
            await _too_large(limit, scope["path"])(scope, receive, send)
            return

        received = 0
        overflow = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, overflow
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    overflow = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if overflow and not started:
                return  # whatever the route answers to the cut-off body, the answer is 413
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not overflow or started:
                raise
        if overflow and not started:
            await _too_large(limit, scope["path"])(scope, receive, send)


# ---------------------------------------------------------------------------------------------- concurrency


class ConcurrencyLimitMiddleware:
    """At most as many requests inside the app at once as the database pool keeps connections (per process).

    Sync routes and dependencies run in a thread pool (40 threads) and hold their session's connection across
    several hops to it (the session dependency, the caller, the route, the commit). With more requests
    inside than connections, the threads can all be taken by requests waiting for a connection while the
    requests holding one wait for a thread to finish: everything stalls until the pool's 30 s timeout
    (benchmarks/api_load.py at 100 requests/s: 10 served, the rest timed out). And a connection opened beyond
    the pool (its overflow) is closed when it is given back, so every request beyond the pool's size started a
    PostgreSQL backend and ended it: 2-2.4 times the database's CPU per route read at 8 requests in flight
    (5 kept, 10 allowed beyond), and the overload fed itself. Requests beyond the limit wait here, on the event
    loop, holding nothing. COLDCHAIN_DB_POOL_SIZE sets it; the overflow stays for what runs beside them.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.slots: anyio.Semaphore | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.slots is None:
            self.slots = anyio.Semaphore(get_settings().db_pool_size)
        async with self.slots:
            await self.app(scope, receive, send)

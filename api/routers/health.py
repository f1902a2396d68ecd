"""Liveness and readiness: is the process up; can it reach the database and the MQTT broker."""

from __future__ import annotations

import logging
import socket
from urllib.parse import urlparse

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.schemas import Health, Ready, problems
from core.db import get_engine
from core.settings import get_settings

router = APIRouter(tags=["health"], responses=problems(429))
log = logging.getLogger("coldchain.api.health")


@router.get("/health", response_model=Health)
def health() -> dict:
    return {"status": "ok"}


def _mqtt_reachable(url: str, timeout: float = 2.0) -> tuple[bool, str]:
    """An MQTT CONNECT/CONNACK round trip, not only a TCP handshake."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 1883
    connect = bytes([0x10, 0x0E, 0x00, 0x04]) + b"MQTT" + bytes([0x04, 0x02, 0x00, 0x0A, 0x00, 0x02]) + b"rd"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(connect)
            reply = sock.recv(4)
            sock.sendall(bytes([0xE0, 0x00]))
    except OSError as exc:
        return False, f"{host}:{port} unreachable ({exc.strerror or exc})"
    if len(reply) >= 4 and reply[0] == 0x20 and reply[3] == 0:
        return True, f"{host}:{port}"
    return False, f"{host}:{port} refused the connection"


@router.get("/ready", response_model=Ready, responses=problems(503))
def ready() -> JSONResponse:
    checks: dict[str, dict] = {}
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = {"ok": True, "dialect": get_engine().dialect.name}
    except Exception as exc:  # any driver error means "not ready", never a 500
        # anyone may ask: the driver's message (host, user, database) goes to the log, not the answer
        log.warning("readiness: database unreachable: %s", str(exc).splitlines()[0] if str(exc) else exc)
        checks["database"] = {"ok": False, "detail": f"unreachable ({type(exc).__name__})"}
    url = get_settings().mqtt_url
    if url:
        ok, detail = _mqtt_reachable(url)
        checks["mqtt"] = {"ok": ok, "detail": detail}
    else:
        checks["mqtt"] = {"ok": True, "detail": "embedded broker (started by coldchain ingest / demo)"}
    if all(c["ok"] for c in checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    return JSONResponse({"type": "about:blank", "title": "Service Unavailable", "status": 503,
                         "detail": "; ".join(f"{k}: {v.get('detail')}" for k, v in checks.items() if not v["ok"]),
                         "checks": checks}, status_code=503, media_type="application/problem+json")

"""Errors on console paths answer a plain HTML page (never a stack trace); elsewhere the API's problem+json."""

from __future__ import annotations

import logging
from http import HTTPStatus
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.console import PREFIX
from api.console.web import page
from core.errors import DomainError

log = logging.getLogger("coldchain.console")


class LoginRequired(Exception):
    """Raised by console_user when nobody is signed in: the browser is sent to the login page."""


def is_console(request: Request) -> bool:
    path = request.url.path
    return path == PREFIX or path.startswith(PREFIX + "/")


def error_page(request: Request, status: int, detail: str | None = None) -> HTMLResponse:
    """A plain page saying what went wrong and where to go next."""
    user = getattr(request.state, "console_user", None)
    if user is None and "session" in request.scope:
        from api.console.web import signed_in_quietly

        user = signed_in_quietly(request)
    response = page(request, "error.html", user, status=status, title=HTTPStatus(status).phrase, detail=detail)
    response.status_code = status
    return response


def install(app: FastAPI) -> None:
    """Wrap the API's exception handlers: console paths get pages, every other path what it got before."""
    before = dict(app.exception_handlers)

    def wrap(kind: type[Exception]) -> None:
        fallback = before.get(kind)

        async def handle(request: Request, exc: Exception) -> Response:
            if not is_console(request):
                if fallback is None:
                    raise exc
                return await fallback(request, exc)
            if isinstance(exc, DomainError):
                return error_page(request, exc.status_code, exc.detail)
            if isinstance(exc, StarletteHTTPException):
                return error_page(request, exc.status_code, exc.detail if isinstance(exc.detail, str) else None)
            if isinstance(exc, RequestValidationError):
                fields = "; ".join(
                    f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg')}" for e in exc.errors()[:5]
                )
                return error_page(request, 422, f"the form is not valid: {fields}")
            log.exception("unhandled error on %s", request.url.path)
            return error_page(request, 500, "something went wrong on our side; it has been logged")

        app.add_exception_handler(kind, handle)

    for kind in (DomainError, StarletteHTTPException, RequestValidationError, Exception):
        wrap(kind)

    async def login_required(request: Request, exc: Exception) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method != "GET" or request.headers.get("accept", "").startswith("text/event-stream"):
            target = PREFIX
        return RedirectResponse(f"{PREFIX}/login?next={quote(target, safe='')}", status_code=303)

    app.add_exception_handler(LoginRequired, login_required)

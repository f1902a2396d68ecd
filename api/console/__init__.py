"""The browser consoles under /console: server-rendered pages for dispatchers and quality staff.

Pages are Jinja2 templates with a little plain JavaScript; Leaflet comes from the PyPI package
xstatic-leaflet and is served from that package's folder, so nothing is fetched at run time. The day's
map is drawn by routing's script (routing/static/daymap.js, served from there: the demo's page uses it too).
A login is a signed session cookie (Starlette's SessionMiddleware, itsdangerous); every POST
carries a CSRF token bound to that session. Errors on console paths are plain HTML pages.
"""

from __future__ import annotations

from pathlib import Path

import xstatic.pkg.leaflet as xleaflet
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.middleware.sessions import SessionMiddleware

from core.settings import get_settings
from routing import daymap

HERE = Path(__file__).resolve().parent
PREFIX = "/console"
SESSION_COOKIE = "coldchain_console"


def install(app: FastAPI) -> None:
    """Mount the console's routes, its static files and Leaflet's, and the HTML error pages.

    Call after the API's guards are installed: the session middleware then wraps them, so the rate
    limit sees the signed-in console user (api.guards.caller_key) rather than only the address."""
    from api.console import dispatch, errors, pages, quality

    settings = get_settings()
    app.add_middleware(
        SessionMiddleware,
        secret_key=settings.secret_key,
        session_cookie=SESSION_COOKIE,
        max_age=int(settings.console_session_hours * 3600),
        path=PREFIX,
        same_site="lax",
        https_only=settings.console_secure_cookie,
    )
    app.mount(f"{PREFIX}/static/leaflet", StaticFiles(directory=xleaflet.BASE_DIR), name="console-leaflet")
    app.mount(f"{PREFIX}/static/daymap", StaticFiles(directory=daymap.STATIC), name="console-daymap")
    app.mount(f"{PREFIX}/static/own", StaticFiles(directory=HERE / "static"), name="console-static")
    for router in (pages.router, dispatch.router, quality.router):
        app.include_router(router, prefix=PREFIX, include_in_schema=False)
    errors.install(app)

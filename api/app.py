"""The FastAPI application: routers per audience under /api/v1, problem+json errors, request guards."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api import console, guards, problems
from api.routers import auth, driver, health, jobs, network, orders, plans, telemetry, trace
from core.settings import Settings, get_settings

log = logging.getLogger("coldchain.api")


def create_app() -> FastAPI:
    app = FastAPI(
        title="coldchain",
        version="0.1.0",
        description="Cold-chain fulfillment: orders, allocation, routes, telemetry, traceability.",
        openapi_url="/openapi.json",
    )
    problems.install(app)
    # the driver's routes first: a request is matched against the included routers in turn, route by route (11 µs
    # a route here), and the driver's phones send most of the API's requests; no other router has /driver paths
    for router in (driver.router, health.router, auth.router, network.router, jobs.router, orders.router,
                   plans.router, telemetry.router, driver.staff, trace.router):
        app.include_router(router, prefix="/api/v1")
    install_guards(app)
    console.install(app)  # after the guards: its session middleware wraps them (api.guards.caller_key)
    _document_extra_schemas(app)
    if get_settings().secret_key == Settings.model_fields["secret_key"].default:
        log.warning("COLDCHAIN_SECRET_KEY is the development default: anyone can sign tokens; set your own")
    return app


def install_guards(app: FastAPI) -> None:
    """Middleware, innermost first (Starlette wraps each added one around the previous): the concurrency limit
    (no more requests inside than database connections), body limit, rate limit, allowed hosts, CORS. CORS
    is outermost so that a browser can read a 413 or 429 too; it is added only when COLDCHAIN_CORS_ORIGINS
    names origins (closed by default: no CORS headers at all)."""
    settings = get_settings()
    app.add_middleware(guards.ConcurrencyLimitMiddleware)
    app.add_middleware(guards.BodyLimitMiddleware)
    app.add_middleware(guards.RateLimitMiddleware)
    if settings.allowed_hosts:
        app.add_middleware(guards.AllowedHostsMiddleware, hosts=settings.allowed_hosts)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=False,
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
                           expose_headers=["Retry-After"], max_age=600)


def _document_extra_schemas(app: FastAPI) -> None:
    """Routes that read their body themselves (JSON or a multipart upload: POST /orders, POST /scenarios/load)
    hide their models from FastAPI, and problem answers refer to Problem: put these, and what they refer to,
    into the document's components."""
    from fastapi.openapi.utils import get_openapi

    from api.routers.network import ScenarioLoadRequest
    from api.schemas import Problem
    from fulfillment.schemas import OrderIn

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = doc.setdefault("components", {}).setdefault("schemas", {})
            for model in (OrderIn, ScenarioLoadRequest, Problem):
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(schema.pop("$defs", {}))
                components[model.__name__] = schema
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi


app = create_app()

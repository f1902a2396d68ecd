"""The FastAPI application: routers per audience under /api/v1, problem+json errors."""

from __future__ import annotations

from fastapi import FastAPI

from api import problems
from api.routers import auth, health, jobs, network, orders, plans, telemetry


def create_app() -> FastAPI:
    app = FastAPI(
        title="coldchain",
        version="0.1.0",
        description="Cold-chain fulfillment: orders, allocation, routes, telemetry, traceability.",
        openapi_url="/openapi.json",
    )
    problems.install(app)
    for router in (health.router, auth.router, network.router, jobs.router, orders.router, plans.router,
                   telemetry.router):
        app.include_router(router, prefix="/api/v1")
    return app


app = create_app()

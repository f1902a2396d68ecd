"""The FastAPI application: routers per audience under /api/v1, problem+json errors."""

from __future__ import annotations

from fastapi import FastAPI

from api import problems
from api.routers import auth, driver, health, jobs, network, orders, plans, telemetry


def create_app() -> FastAPI:
    app = FastAPI(
        title="coldchain",
        version="0.1.0",
        description="Cold-chain fulfillment: orders, allocation, routes, telemetry, traceability.",
        openapi_url="/openapi.json",
    )
    problems.install(app)
    for router in (health.router, auth.router, network.router, jobs.router, orders.router, plans.router,
                   telemetry.router, driver.router, driver.staff):
        app.include_router(router, prefix="/api/v1")
    _document_extra_schemas(app)
    return app


def _document_extra_schemas(app: FastAPI) -> None:
    """POST /orders reads its JSON body itself (it also takes a CSV upload), so FastAPI does not see
    OrderIn: put it, and what it refers to, into the document's components."""
    from fastapi.openapi.utils import get_openapi

    from fulfillment.schemas import OrderIn

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema = OrderIn.model_json_schema(ref_template="#/components/schemas/{model}")
            components = doc.setdefault("components", {}).setdefault("schemas", {})
            components.update(schema.pop("$defs", {}))
            components["OrderIn"] = schema
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi


app = create_app()

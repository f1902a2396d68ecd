"""Import every room's models so Base.metadata knows all tables (Alembic, tests).

This is the one place core names the domains, and only by module path, for
metadata; nothing in core calls into them.
"""

import importlib

MODEL_MODULES = ("core.jobs", "core.audit", "core.security", "warehouses.models", "fulfillment.models",
                 "routing.models", "telemetry.models", "traceability.models", "delivery.models")

for _module in MODEL_MODULES:
    try:
        importlib.import_module(_module)
    except ModuleNotFoundError as exc:  # a room without tables yet
        if exc.name != _module:
            raise

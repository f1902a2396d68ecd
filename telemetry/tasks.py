"""Periodic telemetry jobs for Celery beat: rules evaluated against the clock.

The ingestor ticks on its own timer too; beat is the clock that keeps ticking when no
ingestor is running (a van on an active route whose sensor died still gets its silence
alert), and several ticks are harmless because rule state lives in the database.
"""

from __future__ import annotations

import json

from core.celery_app import celery_app
from core.db import session_scope
from core.settings import get_settings
from telemetry.service import default_engine, tick_all


@celery_app.task(name="telemetry.tick", ignore_result=True)
def tick_rules() -> int:
    with session_scope() as session:
        alerts = tick_all(session, default_engine())
    url = get_settings().mqtt_url
    if alerts and url:
        from urllib.parse import urlparse

        import paho.mqtt.publish as publish
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: F401  (paho 2 is what we pin)

        u = urlparse(url)
        publish.multiple([{"topic": f"coldchain/v1/alerts/{a['vehicle']}", "payload": json.dumps(a), "qos": 1}
                          for a in alerts], hostname=u.hostname, port=u.port or 1883)
    return len(alerts)

"""A broker for the telemetry tests: the configured one (CI's Mosquitto run) or the embedded one."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def mqtt_url() -> Iterator[str]:
    url = os.environ.get("COLDCHAIN_MQTT_URL")
    if url:
        yield url
        return
    from telemetry.broker import start_embedded_broker

    with start_embedded_broker() as broker:
        yield broker.url

"""docker-compose.yml's shape, and that every service runs a command the installed `coldchain` really
has. Running the stack needs a Docker engine, which CI does not: deploy/compose-smoke.sh does that
(docs/operations.md, "Smoke test of the stack")."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.support import ROOT, coldchain_cmd

APP_SERVICES = {"migrate": "db", "api": "serve", "worker-a": "worker", "worker-b": "worker", "beat": "beat",
                "ingestor-a": "ingest", "ingestor-b": "ingest"}
ONE_SHOT = {"migrate"}


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_service_is_there_with_a_health_check() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "redis", "mosquitto", *APP_SERVICES}
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service["restart"] == "no", name
            continue
        assert "healthcheck" in service and service["healthcheck"]["test"], name
    images = {services[n].get("image") for n in APP_SERVICES}
    assert images == {"coldchain:latest"} and all(services[n]["build"]["context"] == "." for n in APP_SERVICES)
    assert (ROOT / "Dockerfile").exists()
    for name in set(APP_SERVICES) - ONE_SHOT:  # nothing starts on a schema that is not at head yet
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name


def test_two_ingestors_share_one_subscription_with_their_own_sessions() -> None:
    services = compose()["services"]
    commands = [services[n]["command"] for n in ("ingestor-a", "ingestor-b")]
    groups = {c[c.index("--shared-group") + 1] for c in commands}
    client_ids = {c[c.index("--client-id") + 1] for c in commands}
    assert len(groups) == 1 and len(client_ids) == 2
    workers = [services[n]["command"] for n in ("worker-a", "worker-b")]
    assert all(c[:2] == ["coldchain", "worker"] for c in workers)


def test_app_services_run_real_coldchain_commands() -> None:
    services = compose()["services"]
    help_text = subprocess.run([*coldchain_cmd(), "--help"], capture_output=True, text=True, timeout=60).stdout
    for name, sub in APP_SERVICES.items():
        command = services[name]["command"]
        assert command[:2] == ["coldchain", sub], name
        assert f" {sub} " in help_text or f"│ {sub}" in help_text, f"{sub} missing from coldchain --help"
        env = services[name]["environment"]
        assert env["COLDCHAIN_DATABASE_URL"].startswith("postgresql://")
        assert env["COLDCHAIN_MQTT_URL"] == "mqtt://mosquitto:1883"
        assert env["COLDCHAIN_BROKER_URL"].startswith("redis://")


def test_mosquitto_is_configured_not_to_drop_a_burst() -> None:
    mosquitto = compose()["services"]["mosquitto"]
    assert any("deploy/mosquitto.conf" in v for v in mosquitto["volumes"])
    conf = dict(line.split(None, 1) for line in (ROOT / "deploy" / "mosquitto.conf").read_text().splitlines()
                if line.strip() and not line.startswith("#"))
    assert int(conf["max_queued_messages"]) >= 100_000
    assert int(conf["max_inflight_messages"]) >= 100
    assert Path(ROOT / "deploy" / "mosquitto.conf").read_text().count("persistence true") == 1


OFFICIAL = {"postgres": ("COLDCHAIN_POSTGRES_IMAGE", "postgres:15"), "redis": ("COLDCHAIN_REDIS_IMAGE", "redis:7"),
            "mosquitto": ("COLDCHAIN_MOSQUITTO_IMAGE", "eclipse-mosquitto:2")}


def test_images_are_the_official_ones_unless_overridden() -> None:
    """A user with Docker Hub gets the official images; the smoke script may point them at local stand-ins."""
    services = compose()["services"]
    for name, (var, official) in OFFICIAL.items():
        assert services[name]["image"] == f"${{{var}:-{official}}}", name
    args = {services[n]["build"]["args"]["PYTHON_IMAGE"] for n in APP_SERVICES}
    assert args == {"${COLDCHAIN_PYTHON_IMAGE:-python:3.11-slim}"}
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim\nFROM ${PYTHON_IMAGE}" in dockerfile
    for name in OFFICIAL:
        assert (ROOT / "deploy" / "local-images" / name / "Dockerfile").exists(), name
    assert (ROOT / "deploy" / "local-images" / "python" / "Dockerfile").exists()


def test_the_api_and_the_workers_share_the_data_folder() -> None:
    """The API stages a scenario upload in the data folder and a worker, in another container, loads it:
    without one volume under both, every uploaded load reports its files as not found."""
    services = compose()["services"]
    data_dir = services["api"]["environment"]["COLDCHAIN_DATA_DIR"]
    for name in ("api", "worker-a", "worker-b"):
        mounts = {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"]}
        assert mounts.get(data_dir) == "data", name
    assert "data" in compose()["volumes"]


def test_health_checks_use_nothing_the_image_lacks() -> None:
    """python:3.11-slim has no procps: a pgrep health check is never healthy there."""
    services = compose()["services"]
    for name in APP_SERVICES:
        test = " ".join(services[name].get("healthcheck", {}).get("test", []))
        assert not re.search(r"\b(pgrep|pidof|ps|curl|wget|nc)\b", test), (name, test)
    worker = " ".join(services["worker-a"]["healthcheck"]["test"])
    assert "-d celery@$$HOSTNAME" in worker  # this worker answers, not any worker

"""The API skeleton over real HTTP: health, readiness, tokens, roles, problem+json, paging."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest

from core.settings import get_settings
from fulfillment.scenario import load_scenario
from tests import scenario_files
from tests.support import assert_problem


def test_health_and_ready(api) -> None:  # noqa: ANN001
    assert api.get("/api/v1/health").json() == {"status": "ok"}
    ready = api.get("/api/v1/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["database"]["ok"] is True


def test_ready_says_503_when_the_broker_is_unreachable(api, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(get_settings(), "mqtt_url", "mqtt://127.0.0.1:9")
    body = assert_problem(api.get("/api/v1/ready"), 503)
    assert body["checks"]["mqtt"]["ok"] is False and "127.0.0.1:9" in body["detail"]


def test_ready_checks_a_real_broker_when_configured(api, monkeypatch) -> None:  # noqa: ANN001
    import os

    url = os.environ.get("COLDCHAIN_MQTT_URL")
    if not url:
        pytest.skip("no MQTT broker configured for this run")
    monkeypatch.setattr(get_settings(), "mqtt_url", url)
    assert api.get("/api/v1/ready").json()["checks"]["mqtt"]["ok"] is True


def test_token_issue_and_refusal(api, make_user) -> None:  # noqa: ANN001
    password = make_user("disp1", "dispatcher")
    bad = api.post("/api/v1/auth/token", data={"username": "disp1", "password": "wrong password"})
    assert assert_problem(bad, 401)["detail"] == "wrong username or password"
    assert bad.headers["www-authenticate"] == "Bearer"
    assert_problem(api.post("/api/v1/auth/token", data={"username": "nobody", "password": "x" * 10}), 401)
    good = api.post("/api/v1/auth/token", data={"username": "disp1", "password": password})
    assert good.status_code == 200
    body = good.json()
    assert body["token_type"] == "bearer"
    claims = jwt.decode(body["access_token"], get_settings().secret_key, algorithms=["HS256"])
    assert claims["sub"] == "disp1" and claims["role"] == "dispatcher"
    assert claims["exp"] - claims["iat"] == get_settings().token_minutes * 60
    me = api.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.json() == {"username": "disp1", "role": "dispatcher"}


def test_missing_expired_and_forged_tokens_are_401(api, make_user) -> None:  # noqa: ANN001
    from core.security import issue_token

    make_user("q1", "quality")
    assert_problem(api.get("/api/v1/network/nodes"), 401)
    expired = issue_token("q1", "quality", minutes=-1)
    assert assert_problem(api.get("/api/v1/network/nodes", headers={"Authorization": f"Bearer {expired}"}),
                          401)["detail"] == "token expired"
    forged = jwt.encode({"sub": "q1", "role": "admin", "exp": 9999999999},
                        "another-secret-key-that-is-long-enough-xx", algorithm="HS256")
    assert_problem(api.get("/api/v1/network/nodes", headers={"Authorization": f"Bearer {forged}"}), 401)


def test_roles_are_enforced(api, token) -> None:  # noqa: ANN001
    body = assert_problem(api.get("/api/v1/network/nodes", headers=token("driver")), 403)
    assert "dispatcher or quality" in body["detail"]
    assert api.get("/api/v1/network/nodes", headers=token("quality")).status_code == 200
    assert api.get("/api/v1/network/nodes", headers=token("admin")).status_code == 200
    assert_problem(api.post("/api/v1/scenarios/load", json={"directory": "/nope"}, headers=token("quality")), 403)


def test_paging_walks_every_node(api, token, session, tmp_path: Path) -> None:  # noqa: ANN001
    load_scenario(session, scenario_files.write(tmp_path))
    headers = token("dispatcher")
    first = api.get("/api/v1/network/nodes", params={"limit": 1}, headers=headers).json()
    assert [n["code"] for n in first["items"]] == ["FS-01"] and first["next"]
    second = api.get(first["next"], headers=headers).json()
    assert [n["code"] for n in second["items"]] == ["HUB-01"] and second["items"][0]["parent"] == "FS-01"
    assert second["next"] is None
    assert_problem(api.get("/api/v1/network/nodes/NOPE", headers=headers), 404)


def test_malformed_requests_are_problems_with_pointers(api, token) -> None:  # noqa: ANN001
    headers = token("dispatcher")
    body = assert_problem(api.get("/api/v1/network/nodes", params={"limit": 5000}, headers=headers), 422)
    assert body["errors"][0]["pointer"] == "query:limit"
    body = assert_problem(api.post("/api/v1/scenarios/load", content=b"{not json", headers={
        **headers, "content-type": "application/json"}), 422)
    assert body["errors"]
    # a folder the server will not read is refused outright (tests/api/test_scenario_load_api.py has the rest)
    assert_problem(api.post("/api/v1/scenarios/load", json={"directory": "/definitely/not/here"}, headers=headers),
                   400)
    assert_problem(api.get("/api/v1/no-such-route"), 404)
    assert_problem(api.delete("/api/v1/health"), 405)


def test_openapi_document_is_served(api) -> None:  # noqa: ANN001
    doc = api.get("/openapi.json").json()
    assert "/api/v1/auth/token" in doc["paths"] and "/api/v1/ready" in doc["paths"]

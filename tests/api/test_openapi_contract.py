"""The OpenAPI document as a checklist: every route has a response schema, a security requirement unless it is
public, paged lists with a bounded limit; and the server enforces what the document says about tokens and roles."""

from __future__ import annotations

import re

import pytest

from tests.api.test_foundation_api import assert_problem

PUBLIC = {("get", "/api/v1/health"), ("get", "/api/v1/ready"), ("post", "/api/v1/auth/token"),
          ("post", "/api/v1/auth/refresh")}
EVERY_ROLE = {("post", "/api/v1/auth/logout"), ("get", "/api/v1/auth/me"),
              ("get", "/api/v1/proofs"), ("get", "/api/v1/proofs/{proof_id}")}  # drivers: their own proofs
METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture(scope="module")
def doc(live_app) -> dict:  # noqa: ANN001
    import httpx

    return httpx.get(f"{live_app.url}/openapi.json").json()


def operations(doc: dict) -> list[tuple[str, str, dict]]:
    ops = [(m, p, op) for p, item in doc["paths"].items() for m, op in item.items() if m in METHODS]
    assert len(ops) >= 25, "the walk found too few operations"
    return ops


def resolve(doc: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_every_route_declares_its_answer(doc) -> None:  # noqa: ANN001
    for method, path, op in operations(doc):
        ok = {code: r for code, r in op["responses"].items() if code.startswith("2")}
        assert ok, f"{method} {path}: no success response"
        for code, response in ok.items():
            if code == "204":
                assert not response.get("content"), f"{method} {path}: 204 with content"
                continue
            content = response.get("content") or {}
            assert content, f"{method} {path}: {code} has no content type"
            for kind, body in content.items():
                schema = body.get("schema") or {}
                if kind == "application/json":
                    resolved = resolve(doc, schema)
                    assert resolved.get("properties") or resolved.get("anyOf"), f"{method} {path}: {code} is untyped"
                else:
                    assert schema, f"{method} {path}: {kind} without a schema"
        for code, response in op["responses"].items():
            if code.startswith(("4", "5")):  # every error is problem+json (FastAPI's own 422 schema is replaced)
                assert set(response.get("content") or {}) == {"application/problem+json"}, (method, path, code)
        assert "429" in op["responses"], f"{method} {path}: the rate limit's 429 is not declared"


def test_every_route_but_the_public_ones_needs_a_token(doc) -> None:  # noqa: ANN001
    for method, path, op in operations(doc):
        if (method, path) in PUBLIC:
            assert not op.get("security"), f"{method} {path} is public but asks for a token"
        else:
            assert op.get("security") == [{"OAuth2PasswordBearer": []}], f"{method} {path} has no security requirement"
            assert {"401", "403"} <= set(op["responses"]), f"{method} {path}: 401/403 not declared"


def test_every_list_is_paged_with_a_bounded_limit(doc) -> None:  # noqa: ANN001
    pages = 0
    for method, path, op in operations(doc):
        schema = ((op["responses"].get("200") or {}).get("content") or {}).get("application/json", {}).get("schema")
        if not schema:
            continue
        resolved = resolve(doc, schema)
        if set(resolved.get("properties", {})) >= {"items", "next"}:
            pages += 1
            limit = next((p for p in op.get("parameters", []) if p["name"] == "limit"), None)
            assert limit is not None, f"{method} {path} pages without a limit"
            assert limit["schema"]["maximum"] <= 1000 and limit["schema"].get("default") == 100, (path, limit)
            assert "next" in resolved["required"] and "items" in resolved["required"]
        else:  # any other top-level array would be a list that escapes paging
            assert resolved.get("type") != "array", f"{method} {path} answers a bare list"
    assert pages >= 6


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda m: "2026-11-24" if m.group(0) == "{day}" else "X1", path)


def test_the_server_enforces_tokens_and_roles_on_every_route(api, token, doc) -> None:  # noqa: ANN001
    """Not only documented: each non-public route answers 401 without a token and 403 to a role it is not for."""
    driver = token("driver")
    key = {"Idempotency-Key": "contract-sweep"}  # driver POSTs answer 400 without one, before anything else
    checked = 0
    for method, path, _op in operations(doc):
        if (method, path) in PUBLIC:
            continue
        url = concrete(path)
        assert_problem(api.request(method.upper(), url, headers=key), 401)
        if (method, path) not in EVERY_ROLE and not path.startswith("/api/v1/driver/"):
            body = assert_problem(api.request(method.upper(), url, headers={**driver, **key}), 403)
            assert "you are driver" in body["detail"], (method, path)
            checked += 1
    assert checked >= 20

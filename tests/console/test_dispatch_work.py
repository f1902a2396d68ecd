"""The dispatcher console's edges without a browser: error pages, the login's redirect target, and the
transfer that only a standing proposal may make."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from core.errors import Conflict
from tests.support import DAY, sample_city


def _csrf(client: httpx.Client, base: str) -> str:
    page = client.get(f"{base}/console/login")
    return re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)


def test_console_errors_are_plain_pages_and_the_api_keeps_problem_json(live_app) -> None:  # noqa: ANN001
    from api.deps import get_session

    base = live_app.url
    with httpx.Client() as client:
        missing = client.get(f"{base}/console/no-such-page")
        assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")
        assert "404" in missing.text and "Sign in" in missing.text
        api = client.get(f"{base}/api/v1/no-such-route")
        assert api.status_code == 404 and api.headers["content-type"].startswith("application/problem+json")

        def broken():  # noqa: ANN202 - the database is down, say
            raise RuntimeError("secret internals: connection string postgresql://admin:pw@db")
            yield

        live_app.app.dependency_overrides[get_session] = broken
        try:
            token = _csrf(client, base)
            failed = client.post(f"{base}/console/login", data={"username": "x", "password": "y", "csrf_token": token})
        finally:
            live_app.app.dependency_overrides.clear()
        assert failed.status_code == 500 and failed.headers["content-type"].startswith("text/html")
        assert "Traceback" not in failed.text and "secret internals" not in failed.text
        assert "it has been logged" in failed.text


def test_login_redirects_only_inside_the_console(api, make_user) -> None:  # noqa: ANN001
    password = make_user("console-redirect", "dispatcher")
    for target, expected in (("/console/dispatch?date=2030-01-01", "/console/dispatch?date=2030-01-01"),
                             ("https://evil.example.com/", "/console/dispatch"),
                             ("//evil.example.com/console", "/console/dispatch"),
                             ("/api/v1/orders", "/console/dispatch")):  # fmt: skip
        api.cookies.clear()
        token = _csrf(api, "")
        resp = api.post("/console/login", data={"username": "console-redirect", "password": password,
                                                 "csrf_token": token, "next": target})  # fmt: skip
        assert resp.status_code == 303, resp.text
        assert resp.headers["location"] == expected, (target, resp.headers["location"])


def test_only_a_standing_transfer_proposal_moves_stock(session, tmp_path: Path) -> None:  # noqa: ANN001
    from sqlalchemy import func, select

    from fulfillment.service import allocate_day, suggest_transfers_for
    from traceability.flows import accept_transfer_flow, load_scenario
    from warehouses.models import Node, StockLot

    load_scenario(session, sample_city(tmp_path / "city", DAY))
    allocate_day(session, DAY, actor="test")
    proposal = suggest_transfers_for(session, DAY)[0]

    def held(node: str) -> int:
        return session.scalar(select(func.coalesce(func.sum(StockLot.qty), 0)).join(Node)
                              .where(Node.code == node, StockLot.lot == proposal["lot"]))  # fmt: skip

    before = held(proposal["from"]), held(proposal["to"])
    forged = {**proposal, "qty": proposal["qty"] + 1000}
    with pytest.raises(Conflict, match="any more"):
        accept_transfer_flow(session, DAY, forged, actor="test")
    assert (held(proposal["from"]), held(proposal["to"])) == before

    moved = accept_transfer_flow(session, DAY, proposal, actor="test")
    assert moved["qty"] == proposal["qty"]
    assert (held(proposal["from"]), held(proposal["to"])) == (before[0] - moved["qty"], before[1] + moved["qty"])
    with pytest.raises(Conflict):  # done once: the same proposal is not made again for the same orders
        accept_transfer_flow(session, DAY, proposal, actor="test")

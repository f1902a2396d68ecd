"""The quality console's pages over real HTTP (in-process uvicorn, the test's rolled-back transaction), signed in
through the console's login form: every page answers, forms need the CSRF token, the list pages' statement count
does not grow with the rows (no N+1)."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import event, select

from core.timeutil import local_today
from telemetry.models import Alert, TelemetryReject
from tests.support import CLOCK
from tests.traceability.helpers import VAN, drive_day
from traceability.models import CustodyEvent
from traceability.service import hold_lot
from warehouses.models import StockLot, Vehicle


def sign_in(api: httpx.Client, make_user, role: str) -> str:  # noqa: ANN001
    """Sign in through the console's form (cookie kept by the client); returns the session's CSRF token."""
    username = f"{role}-console"
    password = make_user(username, role)
    form = api.get("/console/login")
    token = re.search(r'name="csrf-token" content="([^"]+)"', form.text).group(1)
    done = api.post("/console/login", data={"username": username, "password": password, "csrf_token": token})
    assert done.status_code == 303, done.text
    page = api.get(done.headers["location"])
    assert page.status_code in (200, 403), page.text
    return re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)


class Statements:
    """Counts the SQL statements the test's connection runs (the console's requests share it)."""

    def __init__(self, session) -> None:  # noqa: ANN001
        self.count = 0
        self.conn = session.connection()
        event.listen(self.conn, "before_cursor_execute", self._seen)

    def _seen(self, *_args: object) -> None:
        self.count += 1

    def during(self, call) -> int:  # noqa: ANN001
        before = self.count
        resp = call()
        assert resp.status_code == 200, resp.text[:2000]
        return self.count - before


@pytest.fixture
def day(session, tmp_path: Path):  # noqa: ANN001, ANN201
    return drive_day(session, tmp_path)


def _more_alerts(session, n: int, start: int) -> None:  # noqa: ANN001
    vid = session.scalar(select(Vehicle.id).where(Vehicle.code == VAN))
    for i in range(start, start + n):
        session.add(Alert(key=f"test-{i}", vehicle_id=vid, compartment="chilled", kind="door", status="open",
                          started_at=CLOCK + timedelta(minutes=i), peak=1.0, minutes_out=6.0, raised_at=CLOCK,
                          details={"threshold_minutes": 5}))
        session.add(TelemetryReject(received_at=CLOCK, topic=f"coldchain/v1/vehicles/{VAN}/telemetry",
                                    payload=b"\xff not json", reason="not UTF-8", batch_index=None))
    session.flush()


def test_list_pages_run_as_many_statements_for_many_rows_as_for_few(api, make_user, session, day) -> None:  # noqa: ANN001
    sign_in(api, make_user, "quality")
    counter = Statements(session)
    lots = session.scalars(select(StockLot.lot).distinct().order_by(StockLot.lot)).all()
    assert len(lots) >= 4, lots
    _more_alerts(session, 2, 0)
    for lot in lots[:2]:
        hold_lot(session, lot, "温度超标 test hold", "qa")
    few = {path: counter.during(lambda p=path: api.get(p))
           for path in ("/console/quality/alerts", "/console/quality/rejected", "/console/quality/holds",
                        "/console/quality/vehicles")}
    _more_alerts(session, 30, 100)
    for lot in lots[2:20]:
        hold_lot(session, lot, "批量冻结 bulk hold", "qa")
    many = {path: counter.during(lambda p=path: api.get(p)) for path in few}
    assert many == few, (few, many)
    page = api.get("/console/quality/alerts")
    assert page.text.count('class="q-card q-alert"') >= 30 and "csrf_token" in page.text
    assert api.get("/console/quality/holds").text.count('class="q-card q-hold"') == len(lots[:20])


def test_every_quality_page_answers_and_forms_need_the_token(api, make_user, session, day) -> None:  # noqa: ANN001
    token = sign_in(api, make_user, "quality")
    ref = day.refs[-1]
    lot = session.scalars(select(CustodyEvent.lot).join(CustodyEvent.order).where(CustodyEvent.type == "loaded")
                          .where(CustodyEvent.compartment == "chilled")).first()
    landing = api.get("/console/quality")
    assert landing.status_code == 200 and f"— {local_today() - timedelta(days=1)}" in landing.text  # yesterday
    home = api.get("/console/quality", params={"date": day.day.isoformat()})
    assert home.status_code == 200 and f"/console/quality/orders/{ref}" in home.text
    assert re.search(r'id="worst".*?' + re.escape(ref), home.text, re.S), "the worst order is on top"
    trace = api.get(f"/console/quality/orders/{ref}")
    assert trace.status_code == 200 and 'class="excursion"' in trace.text and "冷藏舱" in trace.text
    for fmt, media in (("fsma", "text/csv"), ("epcis", "application/ld+json"), ("pdf", "application/pdf")):
        got = api.get(f"/console/quality/orders/{ref}/export", params={"format": fmt})
        assert got.status_code == 200 and got.headers["content-type"].startswith(media), (fmt, got.text[:300])
    leg_link = re.search(r'href="(/console/quality/vehicles/[^"]+)">整车厢', trace.text).group(1)
    van = api.get(leg_link.replace("&amp;", "&"))
    assert van.status_code == 200 and 'class="excursion"' in van.text and 'class="door"' in van.text
    alerts = api.get("/console/quality/alerts")
    around = re.search(r'href="(/console/quality/vehicles/[^"]+)">VAN-01', alerts.text).group(1)
    warm = api.get(around.replace("&amp;", "&"))  # the alert's van chart, an hour either side
    assert warm.status_code == 200 and 'class="excursion"' in warm.text
    assert api.get(f"/console/quality/lots/{lot}").status_code == 200
    lot_page = api.get(f"/console/quality/lots/{lot}").text
    for fmt, media in (("fsma", "text/csv"), ("epcis", "application/ld+json"), ("pdf", "application/pdf")):
        assert f"/export?format={fmt}" in lot_page, fmt
        got = api.get(f"/console/quality/lots/{lot}/export", params={"format": fmt})
        assert got.status_code == 200 and got.headers["content-type"].startswith(media), (fmt, got.text[:300])
    assert api.get("/console/quality/lookup", params={"q": ref}).headers["location"].endswith(f"/orders/{ref}")
    assert api.get("/console/quality/orders/NO-SUCH").status_code == 404
    bad = api.get(f"/console/quality/vehicles/{VAN}", params={"from": "2026-01-02T00:00", "to": "2026-01-01T00:00"})
    assert bad.status_code == 422 and "later than" in bad.text
    # with the session's token the hold is made (a reason required); without it, refused (last: the refusal's
    # error page looks the user up outside this test's transaction and so ends the session)
    empty = api.post(f"/console/quality/lots/{lot}/hold", data={"reason": " ", "csrf_token": token})
    assert empty.status_code == 422 and "reason is required" in empty.text
    held = api.post(f"/console/quality/lots/{lot}/hold", data={"reason": "检验 inspect", "csrf_token": token})
    assert held.status_code == 303
    assert "ON HOLD" in api.get(held.headers["location"]).text
    again = api.post(f"/console/quality/lots/{lot}/hold", data={"reason": "twice", "csrf_token": token})
    assert again.status_code == 409 and "already on hold" in again.text
    assert api.post(f"/console/quality/lots/{lot}/release", data={"reason": "x"}).status_code == 403

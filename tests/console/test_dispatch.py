"""The dispatcher's console in a real browser: sign in, roles, CSRF, the day's map and work, live alerts."""

from __future__ import annotations

import re
import uuid

import pytest
from sqlalchemy.orm import Session

from tests.console.conftest import PASSWORD, PHONE, add_users, rendering_fonts, screenshot
from tests.support import DAY, local

pytestmark = pytest.mark.slow


def test_sign_in_lands_on_the_role_page_and_a_wrong_role_gets_a_plain_403(console_stack, page) -> None:  # noqa: ANN001
    base = console_stack.base
    page.goto(f"{base}/console/dispatch")
    assert re.search(r"/console/login\?next=%2Fconsole%2Fdispatch$", page.url), page.url
    page.fill("input[name=username]", console_stack.users["dispatcher"])
    page.fill("input[name=password]", "not-the-password")
    page.click("button[type=submit]")
    assert "Wrong username or password" in page.locator("[role=alert]").inner_text()

    cookie = next(c for c in page.context.cookies() if c["name"] == "coldchain_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/console"

    page.fill("input[name=password]", PASSWORD)
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert page.url == f"{base}/console/dispatch"
    assert console_stack.users["dispatcher"] in page.locator("header .who").inner_text()

    resp = page.goto(f"{base}/console/quality")
    assert resp.status == 403
    body = page.locator("main").inner_text()
    assert "403" in body and "quality" in body and "Traceback" not in page.content()

    resp = page.goto(f"{base}/console/no-such-page")
    assert resp.status == 404 and resp.headers["content-type"].startswith("text/html")

    page.click("header button[type=submit]")  # sign out
    page.wait_for_url(f"{base}/console/login")
    assert page.goto(f"{base}/console/dispatch").url.startswith(f"{base}/console/login")


def test_a_post_without_the_sessions_csrf_token_is_refused(console_stack, page) -> None:  # noqa: ANN001
    console_stack.login(page, "dispatcher")
    url = f"{console_stack.base}/console/dispatch/allocate"
    missing = page.request.post(url, form={"date": "2030-01-01"}, max_redirects=0)
    forged = page.request.post(url, form={"date": "2030-01-01", "csrf_token": "forged"}, max_redirects=0)
    header = page.request.post(url, data="{}", headers={"X-CSRF-Token": "forged", "Content-Type": "application/json"})
    for resp in (missing, forged, header):
        assert resp.status == 403, resp.text()
        assert "security token" in resp.text()
    token = page.locator("meta[name=csrf-token]").get_attribute("content")
    ok = page.request.post(
        url, data='{"date": "2030-01-01"}', headers={"X-CSRF-Token": token, "Content-Type": "application/json"}
    )
    assert ok.status == 200, ok.text()


def test_the_login_page_fits_a_phone(console_stack, browser) -> None:  # noqa: ANN001
    context = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    tab = context.new_page()
    try:
        tab.goto(f"{console_stack.base}/console/login")
        width = tab.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the login page scrolls sideways on a phone ({width} px wide)"
        button = tab.locator("button[type=submit]").bounding_box()
        assert button and button["x"] + button["width"] <= PHONE["width"]
        screenshot(tab, "login-phone")
    finally:
        context.close()


BAD_ORDERS = (
    "order_ref,delivery_date,mode,lat,lon,window_start,window_end,sku,qty,pickup_node,customer\n"
    "CON-OK-1,{day},delivery,30.6571,104.0662,09:00,18:00,EGG-30,1,,测试顾客\n"
    "CON-BAD-1,{day},delivery,30.6571,104.0662,09:00,18:00,NO-SUCH-SKU,1,,测试顾客\n"
    "CON-BAD-2,{day},delivery,95.0,104.0662,09:00,18:00,EGG-30,1,,测试顾客\n"
)


def _counts(page) -> dict:  # noqa: ANN001
    return page.evaluate(
        """async (day) => {
          const data = await (await fetch(`/console/dispatch/data?date=${day}`)).json();
          return {routes: data.routes.length, stops: data.routes.reduce((n, r) => n + r.stops.length, 0),
                  vans: data.routes.map((r) => r.vehicle), nodes: data.nodes.length,
                  lines: document.querySelectorAll("path.route-line").length,
                  numbers: document.querySelectorAll(".stop-num").length,
                  depots: document.querySelectorAll("path.node").length,
                  allocated: data.allocations.map((a) => a.node)};
        }""",
        str(DAY),
    )


def test_a_dispatcher_imports_allocates_plans_replans_and_sees_an_alert_arrive(console_stack, page, tmp_path) -> None:  # noqa: ANN001
    console_stack.login(page, "dispatcher", next_path=f"/console/dispatch?date={DAY}")
    page.wait_for_selector("#dispatch[data-loaded]")
    assert "Traceback" not in page.content() and not page.js_errors, page.js_errors

    # Chinese renders: the sample city's node names, in a CJK font the browser has
    names = page.locator("#nodes .node-name b").all_inner_texts()
    assert any(re.search(r"[\u4e00-\u9fff]", n) for n in names), names
    fonts = rendering_fonts(page, "#nodes .node-name b")
    assert any("CJK" in family or "WenQuanYi" in family for family in fonts), f"Chinese drawn with {fonts}"

    # import: the refused rows are shown with their line, field and reason
    csv = tmp_path / "orders.csv"
    csv.write_text(BAD_ORDERS.format(day=DAY), encoding="utf-8")
    page.set_input_files("#import-form input[type=file]", str(csv))
    page.click("#import-form button")
    page.wait_for_selector("table.import-errors")
    refused = page.locator("table.import-errors").inner_text()
    assert "orders.csv:3" in refused and "sku" in refused and "orders.csv:4" in refused and "lat" in refused

    page.click("#allocate")
    page.wait_for_selector("#allocate-result .allocated")
    assert re.search(r"\d+ orders allocated", page.locator("#allocate-result").inner_text())
    page.click("#show-transfers")
    page.wait_for_selector("#transfers table.transfers")
    proposals = page.locator("#transfers table.transfers tr").count() - 1
    assert proposals > 0  # the sample city has hubs short of SKUs their flagship holds
    page.locator("#transfers button.accept").first.click()
    page.wait_for_selector("#transfers .accepted")
    assert re.search(r"Moved \d+ × \S+ \(lot \S+\) from FS-\d+ to HUB-\d+", page.locator("#transfers").inner_text())
    page.evaluate("document.getElementById('allocate-result').replaceChildren()")
    page.click("#allocate")  # again: the hub now has the stock
    page.wait_for_selector("#allocate-result .allocated")

    # plan the depot with the most allocated orders (one depot: a fast test), watching the job
    allocated = _counts(page)["allocated"]
    depot = max(set(allocated), key=allocated.count)
    page.select_option("#plan-depot", depot)
    page.fill("#plan-form input[name=time_limit]", "1")
    page.click("#plan-form button")
    page.wait_for_selector("#plan-progress .planned", timeout=60_000)
    assert "1 of 1 depots planned" in page.locator("#plan-progress").inner_text()
    page.wait_for_function("document.querySelectorAll('path.route-line').length > 0")
    counts = _counts(page)
    assert counts["routes"] >= 1 and counts["lines"] == counts["routes"], counts
    assert counts["numbers"] == counts["stops"] > 0, counts
    screenshot(page, "dispatch-planned")
    sheet = page.request.get(console_stack.base + page.locator("#routes a").first.get_attribute("href"))
    assert sheet.status == 200 and sheet.headers["content-type"] == "application/pdf" and sheet.body()[:5] == b"%PDF-"

    # a breakdown: pick the van and the time, see the diff, the map redrawn without it
    van = counts["vans"][0]
    page.select_option("#replan-van", van)
    page.fill("#replan-form input[name=at]", "10:00")
    page.click("#replan-form button")
    page.wait_for_selector("#replan-result .diff", timeout=60_000)
    diff = page.locator("#replan-result .diff").inner_text()
    assert re.search(r"\d+ orders moved to another van, \d+ ETAs changed, \d+ left unserved", diff), diff
    screenshot(page, "dispatch-replanned")

    # an alert raised by the telemetry service arrives over the live stream, with what is at risk
    after = _counts(page)
    other = next((v for v in after["vans"] if v != van), after["vans"][0] if after["vans"] else van)
    _driver_reports_position(console_stack, other, (30.6571, 104.0662))
    page.wait_for_selector(f".van-pos[title='{other}']", timeout=15_000)
    _raise_alert(console_stack, other)
    page.wait_for_selector(f"#alerts li.alert:has-text('{other}')", timeout=15_000)
    item = page.locator(f"#alerts li.alert:has-text('{other}')").inner_text()
    assert "temperature" in item and ("at risk" in item or "nothing aboard" in item), item
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "dispatch-alert")

    page.set_viewport_size(PHONE)  # the same page on a phone: one column, nothing wider than the screen
    page.wait_for_timeout(300)
    wide = page.evaluate(  # Leaflet's own panes reach past the map; the map clips them, so they do not count
        "[...document.querySelectorAll('body *')].filter((e) => !e.closest('.leaflet-pane, .leaflet-control-container')"
        " && e.getBoundingClientRect().right > document.documentElement.clientWidth + 1)"
        ".map((e) => e.tagName + '#' + e.id + '.' + e.className)"
    )
    assert not wide, f"on a phone these reach past the screen's edge: {wide}"
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the dispatcher's page scrolls sideways on a phone ({width} px wide)"
    screenshot(page, "dispatch-phone", full_page=True)
    assert not page.js_errors, page.js_errors


def _raise_alert(stack, van: str) -> None:  # noqa: ANN001
    """Open a chilled-compartment temperature alert for ``van`` through the telemetry service, as the ingestor
    does, on the served app's database."""
    from sqlalchemy import select

    from core.db import make_engine
    from core.timeutil import utcnow
    from telemetry.rules import AlertEvent
    from telemetry.service import apply_alert_events
    from warehouses.models import Vehicle

    engine = make_engine(stack.env["COLDCHAIN_DATABASE_URL"])
    try:
        with Session(engine) as session, session.begin():
            ids = {van: session.scalar(select(Vehicle.id).where(Vehicle.code == van))}
            event = AlertEvent(
                action="open",
                key=f"console-test-{van}",
                vehicle=van,
                compartment="chilled",
                kind="temperature",
                status="open",
                started_at=local("10:30"),
                ended_at=None,
                peak=11.5,
                minutes=12.0,
                late=False,
            )
            apply_alert_events(session, [event], ids, utcnow())
    finally:
        engine.dispose()


def _driver_reports_position(stack, van: str, position: tuple[float, float]) -> None:  # noqa: ANN001
    """The van's driver (drivers.csv of the sample city) posts a phone fix through the driver API."""
    import csv

    import httpx

    with (stack.city / "drivers.csv").open(encoding="utf-8") as f:
        username = next(row["username"] for row in csv.DictReader(f) if row["vehicle"] == van)
    add_users(stack, {"driver": username})
    api = f"{stack.base}/api/v1"
    token = httpx.post(f"{api}/auth/token", data={"username": username, "password": PASSWORD}).json()["access_token"]
    resp = httpx.post(
        f"{api}/driver/position",
        json={"position": list(position)},
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex},
    )
    assert resp.status_code < 300, resp.text

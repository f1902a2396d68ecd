"""The quality console in a real browser (the system chromium, tests/console/conftest.py): a quality officer
finds the day's worst excursion from the landing page, opens the order's trace and sees its chart with the warm
interval shaded, downloads the PDF; acknowledges an alert with a note; holds and releases a lot; a dispatcher
gets 403 on the quality pages. The app is the in-process uvicorn bound to the test's rolled-back transaction;
the day is tests.traceability.helpers.drive_day (real allocation, OR-Tools planning, driver events, telemetry)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from tests.console.conftest import PHONE, rendering_fonts, screenshot
from tests.traceability.helpers import drive_day
from traceability.models import CustodyEvent

pytestmark = pytest.mark.slow


@pytest.fixture
def base(api, live_app) -> str:  # noqa: ANN001
    """The live app's URL; the api fixture has bound its requests to this test's transaction."""
    return live_app.url


def sign_in(tab, base: str, make_user, role: str, next_path: str = "") -> None:  # noqa: ANN001
    username = f"{role}-browser"
    password = make_user(username, role)
    tab.goto(f"{base}/console/login" + (f"?next={next_path}" if next_path else ""))
    tab.fill("input[name=username]", username)
    tab.fill("input[name=password]", password)
    with tab.expect_navigation():
        tab.click("button[type=submit]")


def test_a_quality_officer_opens_the_worst_excursion_and_its_chart(page, base, make_user, session,  # noqa: ANN001
                                                                   tmp_path: Path) -> None:
    d = drive_day(session, tmp_path)
    worst = d.refs[-1]  # 30 minutes at 9 °C in VAN-01's chilled compartment
    sign_in(page, base, make_user, "quality")
    assert page.url == f"{base}/console/quality", page.url  # lands on the orders at risk (yesterday's)
    page.fill("input[name=date]", d.day.isoformat())
    with page.expect_navigation():
        page.click("form.q-inline button[type=submit]")
    assert page.locator("#worst h2").inner_text().endswith(worst)
    loaded = page.evaluate("performance.getEntriesByType('navigation')[0].duration")
    print(f"\nat-risk page of a {len(d.refs)}-stop van's day loaded in {loaded:.0f} ms "
          "(machine shared, not a benchmark)")
    screenshot(page, "quality-at-risk")
    with page.expect_navigation():
        page.click("#worst a.q-button")  # the second click: the worst order's trace
    assert page.url.endswith(f"/console/quality/orders/{worst}")
    chart = page.locator("section.q-leg svg.temp-chart").first
    chart.wait_for()
    loaded = page.evaluate("performance.getEntriesByType('navigation')[0].duration")
    print(f"the order's trace page loaded in {loaded:.0f} ms")
    assert page.locator("section.q-leg svg rect.excursion").count() >= 1
    assert page.locator("section.q-leg svg path.limit-high").count() >= 1
    box = page.locator("section.q-leg svg rect.excursion").first.bounding_box()
    assert box and box["width"] > 5 and box["height"] > 50, box  # drawn, not a hairline
    assert page.locator("#spoilage_risk").inner_text().count("°C") >= 1
    assert "冷藏舱" in chart.locator("text.title").text_content()
    for selector in ("#spoilage_risk li", "section.q-leg svg text.title"):  # Chinese drawn in a CJK font
        fonts = rendering_fonts(page, selector)
        assert any("CJK" in family or "WenQuanYi" in family for family in fonts), (selector, fonts)
    with page.expect_download() as got:
        page.click("a:has-text('PDF')")
    pdf = Path(got.value.path()).read_bytes()
    assert pdf.startswith(b"%PDF"), pdf[:20]
    screenshot(page, "quality-order-trace", full_page=True)
    trace_url = page.url
    with page.expect_navigation():
        page.click("section.q-leg a:has-text('Whole compartment')")  # the van's compartment around the leg
    assert page.locator("#chart svg rect.excursion").count() >= 1
    assert page.locator("#chart svg line.door").count() >= 1
    assert page.locator("#limits tbody tr").count() >= 2  # the class default, then the cargo's limits
    screenshot(page, "quality-van-compartment", full_page=True)
    page.goto(trace_url)
    page.set_viewport_size(PHONE)
    page.reload()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the trace page scrolls sideways on a phone ({width} px)"
    screenshot(page, "quality-order-trace-phone", full_page=True)
    assert not page.js_errors, page.js_errors


def test_acknowledge_an_alert_then_hold_and_release_a_lot(page, base, make_user, session,  # noqa: ANN001
                                                          tmp_path: Path) -> None:
    drive_day(session, tmp_path)
    sign_in(page, base, make_user, "quality", "/console/quality/alerts")
    alert = page.locator("article.q-alert").first
    alert_id = alert.get_attribute("id")
    alert.locator("textarea[name=note]").fill("已检查：冷机除霜，货物完好 checked, goods fine")
    with page.expect_navigation():
        alert.locator("button[type=submit]").click()
    done = page.locator(f"#{alert_id}")
    assert "Acknowledged by quality-browser" in done.inner_text() and "冷机除霜" in done.inner_text()
    assert done.locator("textarea").count() == 0  # a closed alert stays closed, but is acknowledged once
    screenshot(page, "quality-alert-acknowledged")

    lot = session.scalars(select(CustodyEvent.lot).where(CustodyEvent.type == "loaded")).first()
    page.goto(f"{base}/console/quality/lots/{lot}")
    page.fill("#hold textarea[name=reason]", "供应商召回 supplier recall")
    with page.expect_navigation():
        page.click("#hold button[type=submit]")
    assert "ON HOLD" in page.locator("h1").inner_text()
    assert "供应商召回" in page.locator("#hold").inner_text()
    assert page.locator("section.q-leg svg.temp-chart").count() >= 1  # the lot's time aboard, charted
    screenshot(page, "quality-lot-on-hold", full_page=True)
    page.goto(f"{base}/console/quality/holds")
    card = page.locator(f"article.q-hold:has(a:text-is('{lot}'))")
    card.locator("textarea[name=reason]").fill("检验合格 passed inspection")
    with page.expect_navigation():
        card.locator("button[type=submit]").click()
    assert "released" in page.locator(".q-flash").inner_text()
    assert page.locator(f"article.q-hold:has(a:text-is('{lot}'))").count() == 0
    page.set_viewport_size(PHONE)
    for path in ("/console/quality/holds", "/console/quality/alerts?status=all", f"/console/quality/lots/{lot}"):
        page.goto(f"{base}{path}")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{path} scrolls sideways on a phone ({width} px)"
    screenshot(page, "quality-lot-phone", full_page=True)


def test_a_dispatcher_gets_403_on_the_quality_pages(page, base, make_user) -> None:  # noqa: ANN001
    sign_in(page, base, make_user, "dispatcher", "/console/quality")
    for path in ("/console/quality", "/console/quality/alerts", "/console/quality/holds",
                 "/console/quality/orders/ANY", "/console/quality/vehicles"):
        resp = page.goto(f"{base}{path}")
        assert resp.status == 403, (path, resp.status)
        assert "quality" in page.locator("main").inner_text() and "Traceback" not in page.content()

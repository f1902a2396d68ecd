"""The dispatcher's console in a real browser: sign in, roles, CSRF, the day's map and work, live alerts."""

from __future__ import annotations

import re

import pytest

from tests.console.conftest import PASSWORD, PHONE, screenshot

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

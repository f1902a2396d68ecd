"""Browser tests of the consoles: the system chromium driven by Playwright for Python, against the real app.

Playwright's own browser download does not work here, so it launches Debian's chromium
(``apt-get install chromium``; .ci/run installs it and fonts-noto-cjk). Without a chromium
the tests skip, saying so, and ``make test`` still passes on a laptop without one.

The app runs as a user runs it: ``coldchain serve`` and ``coldchain worker`` as processes on a
database of their own (tests.stack.Stack), loaded with the Chengdu sample city for DAY.
Screenshots land in var/test-artefacts/console/ (gitignored): look at them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: F401 - the browser fixture is in tests/conftest.py
from tests.stack import Stack
from tests.support import DAY, ROOT, sample_city

ARTEFACTS = ROOT / "var" / "test-artefacts" / "console"
PASSWORD = "a-long-enough-password"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1366, "height": 860}


@pytest.fixture
def page(browser, request: pytest.FixtureRequest) -> Iterator:  # noqa: ANN001
    """A fresh browser context (no cookies) and page; on failure a screenshot is kept as an artefact."""
    context = browser.new_context(viewport=DESKTOP, locale="zh-CN", timezone_id="Asia/Shanghai")
    tab = context.new_page()
    tab.set_default_timeout(20_000)
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.js_errors = errors
    yield tab
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        screenshot(tab, f"FAILED-{request.node.name}")
    context.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ANN201
    report = yield
    if report.when == "call":
        item.rep_call = report
    return report


def screenshot(tab, name: str, full_page: bool = False) -> Path:  # noqa: ANN001
    """Save the page as var/test-artefacts/console/NAME.png and return the path."""
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTEFACTS / (re.sub(r"[^\w.-]+", "_", name) + ".png")
    tab.screenshot(path=str(path), full_page=full_page)
    return path


def rendering_fonts(tab, selector: str) -> dict[str, int]:  # noqa: ANN001
    """The fonts chromium actually drew the text of the first ``selector`` element with: family -> glyphs
    (DevTools' CSS.getPlatformFontsForNode), so a test can tell that Chinese is drawn in a CJK font and
    not as empty boxes."""
    cdp = tab.context.new_cdp_session(tab)
    try:
        cdp.send("DOM.enable")
        cdp.send("CSS.enable")
        root = cdp.send("DOM.getDocument")["root"]["nodeId"]
        node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        assert node, f"no element {selector}"
        fonts = cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
        return {f["familyName"]: f["glyphCount"] for f in fonts}
    finally:
        cdp.detach()


class ConsoleStack(Stack):
    """The served app with the sample city loaded and one user per role (``users[role]`` is the username)."""

    users: dict[str, str]
    city: Path

    def login(self, tab, role: str, next_path: str = "") -> None:  # noqa: ANN001
        """Sign in through the login form as the user of ``role``; waits for the landing page."""
        tab.goto(f"{self.base}/console/login" + (f"?next={next_path}" if next_path else ""))
        tab.fill("input[name=username]", self.users[role])
        tab.fill("input[name=password]", PASSWORD)
        with tab.expect_navigation():
            tab.click("button[type=submit]")


def add_users(stack: Stack, users: dict[str, str]) -> None:
    """Create users (role -> username, password PASSWORD) on the stack's database in this process
    (warehouses.service.upsert_user, what `coldchain user add` calls), faster than a command each."""
    from sqlalchemy.orm import Session

    from core.db import make_engine
    from warehouses.service import upsert_user

    engine = make_engine(stack.env["COLDCHAIN_DATABASE_URL"])
    try:
        with Session(engine) as session, session.begin():
            for role, username in users.items():
                upsert_user(session, username, role, PASSWORD)
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def console_stack(databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleStack]:  # noqa: ANN001
    """serve + one worker on their own database, the Chengdu sample city for DAY, users of every role."""
    tmp = tmp_path_factory.mktemp("console")
    stack = ConsoleStack(databases, tmp, label=f"console{uuid.uuid4().hex[:6]}")
    stack.env["COLDCHAIN_CONSOLE_POLL_SECONDS"] = "0.3"
    stack.env.pop("COLDCHAIN_TILE_URL", None)  # no network here: the map draws on its plain background
    with stack:
        stack.city = sample_city(tmp / "city", DAY)
        stack.load(stack.city)
        stack.users = {role: f"{role}-{uuid.uuid4().hex[:4]}" for role in ("dispatcher", "quality", "driver")}
        add_users(stack, stack.users)
        stack.start(workers=1)
        yield stack

"""The system chromium for the browser tests (the consoles', the demo's map), one per test session.

Playwright's own browser download does not work here, so it launches Debian's chromium
(``apt-get install chromium``; .ci/run installs it and fonts-noto-cjk). Without a chromium the tests
skip, saying so. The fixture is registered once in tests/conftest.py: two session fixtures would start
Playwright's sync API twice in one process, which it refuses.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("COLDCHAIN_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser() -> Iterator:
    """One headless chromium for the run (the system's; skipped with the reason when there is none)."""
    if not CHROMIUM.exists():
        pytest.skip(
            f"no chromium at {CHROMIUM} (apt-get install chromium, or set COLDCHAIN_CHROMIUM): "
            "the browser tests did not run"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(
            "Playwright for Python is not installed (pip install -e '.[test]'): the browser tests did not run"
        )
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()

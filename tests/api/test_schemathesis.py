"""schemathesis over the whole OpenAPI document, as each role and without a token: no 5xx, and every answer
matches its declared status codes, content types and schemas.

The server is `coldchain serve` on a database of its own with the small scenario loaded, so that
generated requests meet real rows; the rate limits are raised for it (they are tested in
test_security.py), the login limits are not (a 429 must conform too). The number of examples per
operation is bounded so that the five runs stay within about 90 s on a two-core machine;
COLDCHAIN_SCHEMATHESIS_EXAMPLES raises it for a longer hunt. Admin, who passes every role check and so
reaches every operation's logic, also gets schemathesis' coverage phase (boundary and invalid values
of each parameter) and the full number of examples; the other roles are fuzzed with half as many (their
answers are mostly the role check's 403 or the same validation admin's run meets: the five runs took
124 s of a 750 s suite on this machine, the four other roles 76 of them). One schemathesis worker: with
two, Hypothesis' lambda descriptions call ast.parse from two threads, which CPython 3.11 answers with "AST constructor
recursion depth mismatch" now and then (the server is a single SQLite writer anyway).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests import scenario_files
from tests.stack import Stack

pytestmark = pytest.mark.slow

ROLES = ("dispatcher", "quality", "driver", "admin", None)
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
EXAMPLES = int(os.environ.get("COLDCHAIN_SCHEMATHESIS_EXAMPLES", "10"))


def schemathesis_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("schemathesis")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "schemathesis.cli"]


@pytest.fixture(scope="module")
def server(databases, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201
    tmp = tmp_path_factory.mktemp("schemathesis")
    stack = Stack(databases, tmp, "fuzz")
    stack.env.update({"COLDCHAIN_RATE_LIMIT_PER_CALLER": "1000000/minute",
                      "COLDCHAIN_RATE_LIMIT_PER_ADDRESS": "1000000/minute",
                      "COLDCHAIN_SCENARIO_DIR": str(scenario_files.write(tmp / "scenarios" / "city").parent)})
    stack.load(tmp / "scenarios" / "city")
    with stack:
        stack.start(workers=0)
        stack.headers = {role: stack.user(f"fuzz-{role}", role) for role in ROLES if role}
        yield stack


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r or "anonymous")
def test_no_5xx_and_every_answer_matches_its_schema(server, role: str | None, tmp_path: Path) -> None:  # noqa: ANN001
    args = [*schemathesis_cmd(), "run", f"{server.base}/openapi.json", "--checks", CHECKS,
            "--max-examples", str(EXAMPLES if role == "admin" else max(1, EXAMPLES // 2)),
            "--phases", "coverage,fuzzing" if role == "admin" else "fuzzing",
            "--no-shrink", "--seed", "20261124", "--workers", "1", "--request-timeout", "20", "--max-failures", "20",
            "--report", "junit", "--report-dir", str(tmp_path), "--warnings", "off"]
    if role:
        args += ["--header", f"Authorization: {server.headers[role]['Authorization']}"]
    t0 = time.monotonic()
    run = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path,  # its cache stays there
                         env={**os.environ, "NO_COLOR": "1"})
    seconds = time.monotonic() - t0
    output = run.stdout[-12000:] + run.stderr[-3000:]
    assert run.returncode == 0, f"schemathesis as {role or 'no token'} ({seconds:.0f} s):\n{output}\n{server.log()}"
    assert "passed" in run.stdout.lower() or "no issues found" in run.stdout.lower(), output
    # the server is still well after the run
    assert httpx.get(f"{server.base}/api/v1/health").status_code == 200

"""POST /api/v1/scenarios/load reads only an upload or a folder inside COLDCHAIN_SCENARIO_DIR, from a copy."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import httpx
import pytest

from core.settings import get_settings
from tests import scenario_files
from tests.api.test_foundation_api import assert_problem

LOAD = "/api/v1/scenarios/load"


@pytest.fixture
def root(tmp_path: Path, monkeypatch) -> Path:  # noqa: ANN001
    folder = tmp_path / "scenarios"
    scenario_files.write(folder / "city")
    monkeypatch.setattr(get_settings(), "scenario_dir", folder)
    return folder


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    return scenario_files.write(tmp_path / "elsewhere")


def staged(session) -> Path:  # noqa: ANN001
    """The folder the last queued job will load (the job's first argument; sent when the request commits)."""
    pending = session.info.get("coldchain.jobs_after_commit") or []
    assert pending, "no job was queued"
    return Path(pending[-1][1][0])


def zipped(entries: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buf.getvalue()


def scenario_entries(prefix: str = "") -> dict[str, bytes]:
    return {f"{prefix}{name}": body.encode() for name, body in scenario_files.FILES.items()}


def test_a_folder_inside_the_scenario_folder_is_copied_for_the_job(api, token, session, root) -> None:  # noqa: ANN001
    headers = token("dispatcher")
    resp = api.post(LOAD, json={"directory": "city"}, headers=headers)
    assert resp.status_code == 202, resp.text
    copy = staged(session)
    assert copy.is_relative_to(get_settings().data_dir.resolve()) and not copy.is_relative_to(root)
    assert sorted(p.name for p in copy.iterdir()) == sorted(scenario_files.FILES)
    assert (copy / "nodes.csv").read_text(encoding="utf-8") == scenario_files.FILES["nodes.csv"]
    (root / "city" / "nodes.csv").write_text("changed after the request\n", encoding="utf-8")
    assert (copy / "nodes.csv").read_text(encoding="utf-8") == scenario_files.FILES["nodes.csv"]
    job = api.get(resp.json()["href"], headers=headers).json()
    assert job["kind"] == "scenario_load" and job["params"] == {"directory": "city"}
    # an absolute path is fine when it lies inside the scenario folder
    assert api.post(LOAD, json={"directory": str(root / "city")}, headers=headers).status_code == 202


def test_paths_that_leave_the_scenario_folder_are_refused(api, token, session, root, outside) -> None:  # noqa: ANN001
    headers = token("dispatcher")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    mixed = scenario_files.write(root / "mixed")
    (mixed / "nodes.csv").unlink()
    (mixed / "nodes.csv").symlink_to(outside / "nodes.csv")
    (root / "inner").mkdir()
    (root / "inner" / "nodes.csv").symlink_to(root / "city" / "nodes.csv")  # a link that stays inside is fine
    cases = {
        "../elsewhere": "'..' is not allowed",
        "city/../../elsewhere": "'..' is not allowed",
        "..\\elsewhere": "'..' is not allowed",
        str(outside): "outside the scenario folder",
        "/etc": "outside the scenario folder",
        "escape": "outside the scenario folder",
        "mixed": "a link that leads outside",
        "missing": "no such folder",
        "city/nodes.csv": "not a folder",
        "": "not a folder name",
        "city\x00": "not a folder name",
    }
    before = len(session.info.get("coldchain.jobs_after_commit") or [])
    for directory, reason in cases.items():
        body = assert_problem(api.post(LOAD, json={"directory": directory}, headers=headers), 400)
        assert reason in body["detail"], (directory, body)
        assert body["pointer"] == "/directory"
    assert len(session.info.get("coldchain.jobs_after_commit") or []) == before, "a refused load queued a job"
    assert api.post(LOAD, json={"directory": "inner"}, headers=headers).status_code == 202


def test_without_a_scenario_folder_only_uploads_are_taken(api, token, monkeypatch, outside) -> None:  # noqa: ANN001
    monkeypatch.setattr(get_settings(), "scenario_dir", None)
    headers = token("dispatcher")
    body = assert_problem(api.post(LOAD, json={"directory": str(outside)}, headers=headers), 400)
    assert "COLDCHAIN_SCENARIO_DIR" in body["detail"]
    resp = api.post(LOAD, files={"file": ("city.zip", zipped(scenario_entries()), "application/zip")},
                    headers=headers)
    assert resp.status_code == 202, resp.text


def test_a_zip_upload_is_unpacked_into_the_job_folder(api, token, session) -> None:  # noqa: ANN001
    headers = token("dispatcher")
    entries = {**scenario_entries("city/"), "city/readme.txt": b"ignored", "__MACOSX/city/._nodes.csv": b"junk"}
    resp = api.post(LOAD, files={"file": ("城市.zip", zipped(entries), "application/zip")}, headers=headers)
    assert resp.status_code == 202, resp.text
    copy = staged(session)
    assert sorted(p.name for p in copy.iterdir()) == sorted(scenario_files.FILES)
    assert (copy / "nodes.csv").read_text(encoding="utf-8") == scenario_files.FILES["nodes.csv"]
    job = api.get(resp.json()["href"], headers=headers).json()
    assert job["params"] == {"upload": "城市.zip", "files": sorted(scenario_files.FILES)}


def test_csv_files_can_be_uploaded_as_fields(api, token, session) -> None:  # noqa: ANN001
    headers = token("dispatcher")
    files = [("files", (name, body.encode(), "text/csv")) for name, body in scenario_files.FILES.items()]
    resp = api.post(LOAD, files=files, headers=headers)
    assert resp.status_code == 202, resp.text
    assert sorted(p.name for p in staged(session).iterdir()) == sorted(scenario_files.FILES)
    body = assert_problem(api.post(LOAD, files=[("files", ("passwd", b"root:x:0:0", "text/plain"))],
                                   headers=headers), 400)
    assert "not a scenario file" in body["detail"]
    files = [("files", ("../../nodes.csv", b"x", "text/csv")), ("files", ("nodes.csv", b"y", "text/csv"))]
    assert "twice" in assert_problem(api.post(LOAD, files=files, headers=headers), 400)["detail"]


def test_zip_slip_links_and_bombs_are_refused(api, token, session, monkeypatch, tmp_path: Path) -> None:  # noqa: ANN001
    headers = token("dispatcher")
    before = len(session.info.get("coldchain.jobs_after_commit") or [])
    cases = {
        "climbs": (zipped({**scenario_entries(), "../nodes.csv": b"x"}), "climbs out"),
        "deep climb": (zipped({"city/../../../etc/cron.d/x.csv": b"x"}), "climbs out"),
        "absolute": (zipped({"/tmp/nodes.csv": b"x"}), "absolute path"),
        "windows absolute": (zipped({"C:\\temp\\nodes.csv": b"x"}), "absolute path"),
        "link": (zipped(scenario_entries(), links={"extra.csv": "/etc/passwd"}), "symbolic link"),
        "nothing of use": (zipped({"readme.txt": b"hello"}), "holds none of"),
        "twice": (zipped({"a/nodes.csv": b"x", "b/nodes.csv": b"y"}), "twice"),
        "not a zip": (b"PK\x03\x04 but not really a zip", "not a zip file"),
    }
    for label, (data, reason) in cases.items():
        body = assert_problem(api.post(LOAD, files={"file": ("s.zip", data, "application/zip")}, headers=headers),
                              400)
        assert reason in body["detail"], (label, body)
    monkeypatch.setattr(get_settings(), "scenario_unpacked_max_bytes", 64 * 1024)
    bomb = zipped({**scenario_entries(), "orders.csv": b"0" * (4 * 1024 * 1024)})
    assert len(bomb) < 64 * 1024  # small on the wire, 4 MB unpacked
    body = assert_problem(api.post(LOAD, files={"file": ("bomb.zip", bomb, "application/zip")}, headers=headers), 400)
    assert "unpacks to" in body["detail"] and "more than" not in body["detail"]  # by its headers, before writing
    assert len(session.info.get("coldchain.jobs_after_commit") or []) == before, "a refused upload queued a job"
    # nothing was left behind by the refused loads
    jobs = get_settings().data_dir.resolve() / "scenario-jobs"
    assert all(any(p.iterdir()) for p in jobs.iterdir()), "an empty job folder was left by a refusal"
    assert not any((p / "nodes.csv").exists() and (p / "nodes.csv").read_bytes() == b"x" for p in jobs.iterdir())
    assert not (tmp_path.parent / "nodes.csv").exists() and not Path("/tmp/nodes.csv").exists()


def test_the_unpacked_size_is_counted_not_taken_from_the_zip(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """Uploaded files carry no declared size, and a zip can understate one: the bytes written are counted."""
    from api import scenario_upload

    monkeypatch.setattr(get_settings(), "scenario_unpacked_max_bytes", 10_000)
    dest = tmp_path / "out"
    dest.mkdir()
    files = [("nodes.csv", io.BytesIO(b"1" * 6000)), ("orders.csv", io.BytesIO(b"2" * 6000))]
    with pytest.raises(scenario_upload.Refused, match="more than 10000 bytes"):
        scenario_upload.from_files(files, dest)
    assert (dest / "orders.csv").stat().st_size <= 10_000 - 6000
    # a zip whose headers say 100 bytes for a 50,000-byte entry is refused too, and nothing past the cap is written
    data = bytearray(zipped({"nodes.csv": b"1" * 50_000}))
    data[22:26] = (100).to_bytes(4, "little")  # the local header's uncompressed size
    central = data.rfind(b"PK\x01\x02")
    data[central + 24:central + 28] = (100).to_bytes(4, "little")  # and the central directory's
    assert zipfile.ZipFile(io.BytesIO(bytes(data))).infolist()[0].file_size == 100
    dest = tmp_path / "zip"
    dest.mkdir()
    with pytest.raises(scenario_upload.Refused):
        scenario_upload.from_zip(io.BytesIO(bytes(data)), dest)
    assert not (dest / "nodes.csv").exists() or (dest / "nodes.csv").stat().st_size <= 10_000


def test_only_dispatchers_load_scenarios(api, token, root) -> None:  # noqa: ANN001
    for role in ("quality", "driver"):
        assert_problem(api.post(LOAD, json={"directory": "city"}, headers=token(role)), 403)
    assert_problem(api.post(LOAD, json={"directory": "city"}), 401)


@pytest.mark.slow
def test_an_uploaded_scenario_is_loaded_by_the_worker(databases, tmp_path: Path) -> None:  # noqa: ANN001
    from tests.stack import Stack

    with Stack(databases, tmp_path, "scenupload") as stack:
        stack.env["COLDCHAIN_SCENARIO_DIR"] = str(tmp_path / "none-here")
        stack.start(workers=1)
        disp = stack.user("disp", "dispatcher")
        resp = httpx.post(f"{stack.base}{LOAD}", headers=disp,
                          files={"file": ("city.zip", zipped(scenario_entries("city/")), "application/zip")})
        assert resp.status_code == 202, resp.text + stack.log()
        job = stack.wait_job(resp.json()["href"], disp)
        assert job["state"] == "SUCCESS", job
        assert job["result"]["counts"]["nodes.csv"]["inserted"] == 2
        nodes = httpx.get(f"{stack.base}/api/v1/network/nodes", headers=disp).json()
        assert [n["code"] for n in nodes["items"]] == ["FS-01", "HUB-01"]

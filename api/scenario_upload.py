"""What POST /api/v1/scenarios/load may read, copied into a job folder of its own before the job runs.

A dispatcher names a folder inside COLDCHAIN_SCENARIO_DIR, or uploads the CSV files (a zip or
the files themselves). Anything that would reach outside is refused with 400 before a byte is
copied: a `..` in the name, an absolute path elsewhere, a symlink that leads out, a zip entry
with an absolute or climbing path (zip slip) or a symlink, and an upload that unpacks to more
than COLDCHAIN_SCENARIO_UNPACKED_MAX_BYTES (zip bomb: the sizes the zip declares are checked
first, and the bytes actually written are counted, since a zip can lie about them).
Only the scenario's own file names are taken (CONTRACTS.md section 4); the job reads the copy,
so a file changed or swapped after the request cannot change what is loaded.
"""

from __future__ import annotations

import shutil
import stat
import time
import uuid
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

from core.errors import BadRequest as Refused
from core.settings import get_settings
from fulfillment.scenario import SCENARIO_FILES

CHUNK = 1024 * 1024
MAX_ENTRIES = 1000
KEEP_JOB_FOLDERS_S = 7 * 24 * 3600



def job_folder() -> Path:
    """A fresh folder under the data folder for one load; folders of loads older than a week are removed."""
    base = get_settings().data_dir.resolve() / "scenario-jobs"
    base.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - KEEP_JOB_FOLDERS_S
    for old in base.iterdir():
        try:
            if old.is_dir() and not old.is_symlink() and old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    folder = base / uuid.uuid4().hex
    folder.mkdir()
    return folder


def _budget() -> int:
    return get_settings().scenario_unpacked_max_bytes


def _copy(source: BinaryIO, target: Path, written: int, budget: int) -> int:
    """Copy in chunks, counting against the budget: the stream's real length, not what it claimed."""
    with target.open("wb") as out:
        while chunk := source.read(CHUNK):
            written += len(chunk)
            if written > budget:
                raise Refused(f"the scenario unpacks to more than {budget} bytes "
                              "(COLDCHAIN_SCENARIO_UNPACKED_MAX_BYTES)")
            out.write(chunk)
    return written


def from_directory(name: str, dest: Path) -> list[str]:
    """Copy the scenario files of a folder inside COLDCHAIN_SCENARIO_DIR; the folder's name relative to it
    (or an absolute path that lies inside it)."""
    root_setting = get_settings().scenario_dir
    if root_setting is None:
        raise Refused("loading from a server folder is off (COLDCHAIN_SCENARIO_DIR is not set); upload the files",
                      pointer="/directory")
    if "\x00" in name or not name.strip():
        raise Refused("not a folder name", pointer="/directory")
    if ".." in PurePosixPath(name).parts or ".." in PureWindowsPath(name).parts:
        raise Refused(f"{name}: '..' is not allowed in a scenario folder name", pointer="/directory")
    root = root_setting.resolve()
    wanted = Path(name)
    candidate = wanted if wanted.is_absolute() else root / wanted
    try:
        folder = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        raise Refused(f"{name}: no such folder in the scenario folder", pointer="/directory") from None
    if not folder.is_relative_to(root):
        raise Refused(f"{name}: outside the scenario folder (COLDCHAIN_SCENARIO_DIR)", pointer="/directory")
    if not folder.is_dir():
        raise Refused(f"{name}: not a folder", pointer="/directory")
    taken: list[str] = []
    written, budget = 0, _budget()
    for file_name in SCENARIO_FILES:
        path = folder / file_name
        if not path.exists() and not path.is_symlink():
            continue
        real = path.resolve()
        if not real.is_relative_to(root):
            raise Refused(f"{name}/{file_name}: a link that leads outside the scenario folder", pointer="/directory")
        if not real.is_file():
            raise Refused(f"{name}/{file_name}: not a regular file", pointer="/directory")
        with real.open("rb") as source:
            written = _copy(source, dest / file_name, written, budget)
        taken.append(file_name)
    if not taken:
        raise Refused(f"{name}: none of {', '.join(SCENARIO_FILES)} in it", pointer="/directory")
    return taken


def _entry_name(raw: str) -> str | None:
    """The scenario file an entry is, or None for an entry that is not one; raises for an entry that climbs."""
    if "\x00" in raw:
        raise Refused(f"zip entry {raw!r}: not a file name")
    path = PurePosixPath(raw.replace("\\", "/"))
    if path.is_absolute() or raw.startswith(("/", "\\")) or PureWindowsPath(raw).drive:
        raise Refused(f"zip entry {raw}: an absolute path")
    if ".." in path.parts:
        raise Refused(f"zip entry {raw}: a path that climbs out of the folder")
    if len(path.parts) > 2:  # the files themselves, or in one folder
        return None
    return path.name if path.name in SCENARIO_FILES else None


def from_zip(upload: BinaryIO, dest: Path) -> list[str]:
    try:
        archive = zipfile.ZipFile(upload)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise Refused(f"not a zip file ({exc})", pointer="/file") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ENTRIES:
            raise Refused(f"the zip has {len(infos)} entries; at most {MAX_ENTRIES}", pointer="/file")
        budget = _budget()
        chosen: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            target = _entry_name(info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise Refused(f"zip entry {info.filename}: a symbolic link", pointer="/file")
            if target is None or info.is_dir():
                continue
            if target in chosen:
                raise Refused(f"zip has {target} twice ({chosen[target].filename}, {info.filename})", pointer="/file")
            chosen[target] = info
        declared = sum(i.file_size for i in chosen.values())
        if declared > budget:
            raise Refused(f"the scenario unpacks to {declared} bytes; at most {budget} "
                          "(COLDCHAIN_SCENARIO_UNPACKED_MAX_BYTES)", pointer="/file")
        if not chosen:
            raise Refused(f"the zip holds none of {', '.join(SCENARIO_FILES)}", pointer="/file")
        written = 0
        for target, info in chosen.items():
            try:
                with archive.open(info) as source:
                    written = _copy(source, dest / target, written, budget)
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, EOFError) as exc:
                raise Refused(f"zip entry {info.filename}: cannot be read ({exc})", pointer="/file") from None
    return sorted(chosen)


def from_files(files: list[tuple[str, BinaryIO]], dest: Path) -> list[str]:
    """The CSV files uploaded as form fields, taken by their file names."""
    written, budget, taken = 0, _budget(), []
    for raw, source in files:
        name = PurePosixPath((raw or "").replace("\\", "/")).name
        if name not in SCENARIO_FILES:
            raise Refused(f"{raw}: not a scenario file (expected {', '.join(SCENARIO_FILES)})", pointer="/files")
        if name in taken:
            raise Refused(f"{name} uploaded twice", pointer="/files")
        written = _copy(source, dest / name, written, budget)
        taken.append(name)
    if not taken:
        raise Refused("no file uploaded", pointer="/files")
    return sorted(taken)

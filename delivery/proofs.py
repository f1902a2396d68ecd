"""Proof-of-delivery files: recognised by their bytes, stored once under their SHA-256."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from core.settings import get_settings

MAX_BYTES = 5 * 1024 * 1024  # CONTRACTS.md section 3: at most 5 MB
_SIGNATURES = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"))




def sniff(head: bytes) -> str | None:
    """JPEG or PNG by the file's own first bytes (what it says it is, or is named, does not count)."""
    for magic, content_type in _SIGNATURES:
        if head.startswith(magic):
            return content_type
    return None


def path_of(sha256: str) -> Path:
    return get_settings().proofs_path / sha256


def store(data: bytes, sha256: str) -> Path:
    """Write the file once (a second upload of the same bytes finds it there); atomic, so a reader never
    sees half a photo."""
    target = path_of(sha256)
    if target.exists() and target.stat().st_size == len(data):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target

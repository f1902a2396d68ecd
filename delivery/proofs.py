"""Proof-of-delivery files: recognised by their bytes, stored once under their SHA-256.

Two stores behind one interface (:class:`ProofStore`): a directory (COLDCHAIN_PROOF_DIR, default
``data_dir/proofs``), or an S3-compatible object store when COLDCHAIN_PROOF_STORE is
``s3://bucket/prefix`` (AWS S3, MinIO, Ceph...; COLDCHAIN_S3_ENDPOINT_URL, COLDCHAIN_S3_REGION and the
access key settings, or boto3's own credential chain). Either way a file is named by its SHA-256, so a
second upload of the same bytes stores nothing new, and what is read back is checked against that name.
The database row (delivery.models.DeliveryProof) says whose proof it is; the store knows only bytes.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from core.errors import Unavailable
from core.settings import Settings, get_settings

MAX_BYTES = 5 * 1024 * 1024  # CONTRACTS.md section 3: at most 5 MB
_SIGNATURES = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"))


def sniff(head: bytes) -> str | None:
    """JPEG or PNG by the file's own first bytes (what it says it is, or is named, does not count)."""
    for magic, content_type in _SIGNATURES:
        if head.startswith(magic):
            return content_type
    return None


class ProofStore(Protocol):
    """Where proof files live. ``put`` keeps the bytes under their SHA-256 (once); ``get`` returns them, or
    None when the store has no such file. An unreachable store raises core.errors.Unavailable (503)."""

    def put(self, data: bytes, sha256: str, content_type: str) -> None: ...

    def get(self, sha256: str) -> bytes | None: ...


def _checked(data: bytes, sha256: str) -> bytes:
    """What was read back, if it still has the SHA-256 it is stored under (a damaged file is not served)."""
    if hashlib.sha256(data).hexdigest() != sha256:
        raise Unavailable(f"the proof store's copy of {sha256} does not match its SHA-256; it is damaged")
    return data


class DirectoryStore:
    """Files in one directory, each named by its SHA-256; written atomically so a reader never sees half."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_of(self, sha256: str) -> Path:
        return self.root / sha256

    def put(self, data: bytes, sha256: str, content_type: str) -> None:
        target = self.path_of(sha256)
        if target.exists() and target.stat().st_size == len(data):
            return
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

    def get(self, sha256: str) -> bytes | None:
        try:
            return _checked(self.path_of(sha256).read_bytes(), sha256)
        except FileNotFoundError:
            return None


class S3Store:
    """Objects ``prefix/sha256`` in one bucket of an S3-compatible service (path-style addressing, which
    MinIO and most self-hosted services need and AWS accepts)."""

    def __init__(self, url: str, endpoint_url: str | None = None, region: str = "us-east-1",
                 access_key_id: str | None = None, secret_access_key: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        parsed = urlparse(url)
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region, aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=Config(s3={"addressing_style": "path"}, connect_timeout=5, read_timeout=30,
                          retries={"max_attempts": 3, "mode": "standard"}))

    def key_of(self, sha256: str) -> str:
        return f"{self.prefix}/{sha256}" if self.prefix else sha256

    def _unavailable(self, exc: Exception) -> Unavailable:
        return Unavailable(f"the proof store s3://{self.bucket}/{self.prefix} cannot be reached or refused: "
                           f"{exc}; retry later")

    def put(self, data: bytes, sha256: str, content_type: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key_of(sha256), Body=data, ContentType=content_type,
                                   Metadata={"sha256": sha256})
        except (BotoCoreError, ClientError) as exc:
            raise self._unavailable(exc) from exc

    def get(self, sha256: str) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key_of(sha256))
            return _checked(answer["Body"].read(), sha256)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise self._unavailable(exc) from exc
        except BotoCoreError as exc:
            raise self._unavailable(exc) from exc


@lru_cache(maxsize=4)
def _store_for(proof_store: str | None, proofs_path: Path, endpoint_url: str | None, region: str,
               access_key_id: str | None, secret_access_key: str | None) -> ProofStore:
    if proof_store:
        return S3Store(proof_store, endpoint_url, region, access_key_id, secret_access_key)
    return DirectoryStore(proofs_path)


def proof_store(settings: Settings | None = None) -> ProofStore:
    """The configured store (one per process and configuration: a boto3 client is made once)."""
    s = settings or get_settings()
    secret = s.s3_secret_access_key.get_secret_value() if s.s3_secret_access_key is not None else None
    return _store_for(s.proof_store, s.proofs_path, s.s3_endpoint_url, s.s3_region, s.s3_access_key_id, secret)


def store(data: bytes, sha256: str, content_type: str) -> None:
    """Keep a proof's bytes in the configured store."""
    proof_store().put(data, sha256, content_type)


def fetch(sha256: str) -> bytes | None:
    """A proof's bytes from the configured store; None when it has no such file."""
    return proof_store().get(sha256)

"""Proofs in an S3-compatible store (COLDCHAIN_PROOF_STORE=s3://bucket/prefix), over real HTTP on both sides.

The store is moto's S3 server (ThreadedMotoServer: a real HTTP server speaking the S3 protocol, on a free
port of this machine), the API the live uvicorn of the other API tests. Skipped with the reason when the
server cannot start.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.errors import Unavailable
from core.settings import get_settings
from delivery import proofs
from delivery.models import DeliveryProof
from tests.delivery.helpers import JPEG, PNG, build_day, keep_keys_in, key, routes_by_van
from tests.support import assert_problem, free_port

START = "/api/v1/driver/route/start"
BUCKET = "coldchain-proofs"
CREDENTIALS = {"COLDCHAIN_S3_ACCESS_KEY_ID": "test-access-key", "COLDCHAIN_S3_SECRET_ACCESS_KEY": "test-secret-key",
               "COLDCHAIN_S3_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    """An S3-compatible HTTP server for this module's tests."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:  # pragma: no cover - moto[server] is a test dependency
        pytest.skip(f"moto[server] is not installed ({exc}): no S3-compatible server to test against")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    try:
        server.start()
    except Exception as exc:  # noqa: BLE001 - any reason it cannot serve is a reason to skip
        pytest.skip(f"moto's S3 server could not start on 127.0.0.1:{port}: {exc}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_store(s3_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[proofs.S3Store]:
    """The process configured for s3://coldchain-proofs/pod on that server, with a fresh bucket."""
    for name, value in {**CREDENTIALS, "COLDCHAIN_PROOF_STORE": f"s3://{BUCKET}/pod",
                        "COLDCHAIN_S3_ENDPOINT_URL": s3_url}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    store = proofs.proof_store()
    assert isinstance(store, proofs.S3Store)
    store.client.create_bucket(Bucket=BUCKET)
    try:
        yield store
    finally:
        for obj in store.client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
            store.client.delete_object(Bucket=BUCKET, Key=obj["Key"])
        store.client.delete_bucket(Bucket=BUCKET)
        monkeypatch.undo()
        get_settings.cache_clear()


def test_a_proof_goes_to_the_s3_store_and_staff_fetch_it_there(api, session, live_app, token, s3_store,  # noqa: ANN001
                                                               tmp_path: Path) -> None:
    keep_keys_in(session, live_app)
    day = build_day(session, tmp_path, depots=("FS-01",))
    routes = routes_by_van(session, day)
    stop = routes["VAN-01"].stops[0].stop_id
    one, three = token("driver", "driver01"), token("driver", "driver03")
    assert api.post(START, headers={**one, **key()}, json={"date": day.isoformat()}).status_code == 200
    arrived = api.post(f"/api/v1/driver/stops/{stop}/events", headers={**one, **key()}, json={"type": "arrived"})
    assert arrived.status_code == 200, arrived.text

    photo = JPEG + uuid.uuid4().bytes  # bytes no other test stored in the proof directory
    up = api.post(f"/api/v1/driver/stops/{stop}/proof", headers={**one, **key()}, files={"file": ("p.jpg", photo)})
    assert up.status_code == 201, up.text
    body = up.json()
    sha = hashlib.sha256(photo).hexdigest()
    assert body["sha256"] == sha
    # in the bucket under the prefix, with its type; not in the proof directory
    obj = s3_store.client.get_object(Bucket=BUCKET, Key=f"pod/{sha}")
    assert obj["Body"].read() == photo and obj["ContentType"] == "image/jpeg"
    assert not (get_settings().proofs_path / sha).exists()
    assert session.get(DeliveryProof, body["id"]).sha256 == sha

    # a dispatcher fetches it through the API, from the store
    got = api.get(f"/api/v1/proofs/{body['id']}", headers=token("dispatcher"))
    assert got.status_code == 200 and got.content == photo and got.headers["content-type"] == "image/jpeg"
    assert api.get(f"/api/v1/proofs/{body['id']}", headers=one).content == photo  # and its driver
    # another driver: the same 404 as for a proof that does not exist
    foreign = api.get(f"/api/v1/proofs/{body['id']}", headers=three)
    missing = api.get("/api/v1/proofs/999999", headers=three)
    assert_problem(foreign, 404)
    assert foreign.content == missing.content

    # the object gone from the store: a plain 404 saying so, not a 500
    s3_store.client.delete_object(Bucket=BUCKET, Key=f"pod/{sha}")
    gone = assert_problem(api.get(f"/api/v1/proofs/{body['id']}", headers=token("quality")), 404)
    assert "missing from the proof store" in gone["detail"]


def test_the_s3_store_checks_what_it_reads_and_says_when_it_cannot_be_reached(s3_store) -> None:  # noqa: ANN001
    sha = hashlib.sha256(PNG).hexdigest()
    s3_store.put(PNG, sha, "image/png")
    s3_store.put(PNG, sha, "image/png")  # the same bytes again: the same object
    assert s3_store.get(sha) == PNG
    assert s3_store.get(hashlib.sha256(b"never stored").hexdigest()) is None
    s3_store.client.put_object(Bucket=BUCKET, Key=f"pod/{sha}", Body=PNG + b"tampered")
    with pytest.raises(Unavailable, match="does not match its SHA-256"):
        s3_store.get(sha)
    away = proofs.S3Store(f"s3://{BUCKET}/pod", endpoint_url=f"http://127.0.0.1:{free_port()}",
                          access_key_id="k", secret_access_key="s")
    with pytest.raises(Unavailable, match="cannot be reached") as refused:
        away.put(PNG, sha, "image/png")
    assert refused.value.status_code == 503


def test_the_proof_store_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.settings import ConfigError

    for name, value in (("COLDCHAIN_PROOF_STORE", "ftp://somewhere/proofs"),
                        ("COLDCHAIN_S3_ENDPOINT_URL", "localhost:9000")):
        monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        try:
            with pytest.raises(ConfigError, match=name):
                get_settings()
        finally:
            monkeypatch.delenv(name)
            get_settings.cache_clear()

"""The embedded broker, and the same MQTT behaviour checked against the machine's Mosquitto.

Each test runs on: the embedded broker's MQTT 5 listener, its MQTT 3.1.1
listener, and Mosquitto at 127.0.0.1:1883 (v5 and 3.1.1; skipped when not
running). Topics carry a fresh uuid so runs never see each other's messages.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.client import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from telemetry.broker import EmbeddedBroker, start_embedded_broker
from tests.support import CLOCK, zulu

pytestmark = pytest.mark.mqtt

MOSQUITTO = ("127.0.0.1", 1883)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class Target:
    name: str
    host: str
    port: int
    protocol: int


@pytest.fixture(scope="module")
def embedded() -> Iterator[EmbeddedBroker]:
    with start_embedded_broker() as broker:
        yield broker


@pytest.fixture(params=["embedded-v5", "embedded-v311", "mosquitto-v5", "mosquitto-v311"])
def target(request) -> Target:
    name = request.param
    protocol = mqtt.MQTTv5 if name.endswith("v5") else mqtt.MQTTv311
    if name.startswith("mosquitto"):
        if not _reachable(*MOSQUITTO):
            pytest.skip("no Mosquitto at 127.0.0.1:1883")
        return Target(name, *MOSQUITTO, protocol)
    broker = request.getfixturevalue("embedded")
    url = urlsplit(broker.url if protocol == mqtt.MQTTv5 else broker.url_v311)
    return Target(name, url.hostname, url.port, protocol)


class Client:
    """A small paho 2 wrapper that records what it receives."""

    def __init__(self, target: Target, client_id: str | None = None, *, persistent: bool = False,
                 manual_ack: bool = False, will: tuple[str, bytes] | None = None,
                 max_inflight: int = 20) -> None:
        self.target = target
        self.messages: list[mqtt.MQTTMessage] = []
        self.connected = threading.Event()
        self.session_present: bool | None = None
        self.lock = threading.Lock()
        kwargs = {}
        if target.protocol != mqtt.MQTTv5:
            kwargs["clean_session"] = not persistent
        client_id = client_id or f"t-{uuid.uuid4().hex[:12]}"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=target.protocol,
                                  manual_ack=manual_ack, **kwargs)
        self.client.max_inflight_messages_set(max_inflight)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        if will:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        props = None
        clean_start = mqtt.MQTT_CLEAN_START_FIRST_ONLY
        if target.protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            if persistent:
                props.SessionExpiryInterval = 3600
                clean_start = False
            else:
                clean_start = True
        if target.protocol == mqtt.MQTTv5:
            self.client.connect(target.host, target.port, keepalive=30, clean_start=clean_start,
                                properties=props)
        else:
            self.client.connect(target.host, target.port, keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(10), f"no CONNACK from {target.name}"

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.session_present = flags.session_present
        if not reason_code.is_failure:
            self.connected.set()

    def _on_message(self, client, userdata, message):
        with self.lock:
            self.messages.append(message)

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(10), "no SUBACK"

    def publish_many(self, topic: str, payloads: list[bytes]) -> None:
        infos = [self.client.publish(topic, p, qos=1) for p in payloads]
        for info in infos:
            info.wait_for_publish(10)
            assert info.is_published()

    def wait_for(self, n: int, timeout: float = 10.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= n:
                    break
            time.sleep(0.02)
        with self.lock:
            return [m.payload for m in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def drop(self) -> None:
        """Vanish without DISCONNECT (as a crashed process would)."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()


def _topic(kind: str = "telemetry") -> tuple[str, str]:
    prefix = f"t{uuid.uuid4().hex[:10]}/coldchain/v1/vehicles"
    return prefix, f"{prefix}/VAN-01/{kind}"


def test_publish_subscribe_qos1(target):
    prefix, topic = _topic()
    sub = Client(target)
    sub.subscribe(f"{prefix}/+/telemetry")
    pub = Client(target)
    payloads = [f'{{"seq": {i}}}'.encode() for i in range(50)]
    pub.publish_many(topic, payloads)
    got = sub.wait_for(50)
    assert sorted(got) == sorted(payloads)
    assert all(m.qos == 1 for m in sub.messages)
    sub.close()
    pub.close()


def test_persistent_session_queues_while_offline(target):
    prefix, topic = _topic()
    client_id = f"ingest-{uuid.uuid4().hex[:10]}"
    sub = Client(target, client_id, persistent=True)
    sub.subscribe(f"{prefix}/+/telemetry")
    sub.close()
    pub = Client(target)
    payloads = [f"m{i}".encode() for i in range(30)]
    pub.publish_many(topic, payloads)
    back = Client(target, client_id, persistent=True)  # no new SUBSCRIBE: the session remembers
    assert back.session_present is True
    assert sorted(back.wait_for(30)) == sorted(payloads)
    back.close()
    pub.close()


def test_unacknowledged_message_is_redelivered_after_a_crash(target):
    """The ingestor acks after its database commit (manual_ack); a crash before that loses nothing."""
    prefix, topic = _topic()
    client_id = f"ingest-{uuid.uuid4().hex[:10]}"
    sub = Client(target, client_id, persistent=True, manual_ack=True)
    sub.subscribe(f"{prefix}/+/telemetry")
    pub = Client(target)
    pub.publish_many(topic, [b"precious"])
    assert sub.wait_for(1) == [b"precious"]
    sub.drop()  # never acked
    time.sleep(0.3)
    back = Client(target, client_id, persistent=True)
    assert b"precious" in back.wait_for(1)
    back.close()
    pub.close()


def test_shared_subscription_splits_the_stream(target):
    prefix, topic = _topic()
    group = f"$share/ingest/{prefix}/+/telemetry"
    a, b = Client(target), Client(target)
    a.subscribe(group)
    b.subscribe(group)
    pub = Client(target)
    payloads = [f"s{i}".encode() for i in range(100)]
    pub.publish_many(topic, payloads)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(a.messages) + len(b.messages) < 100:
        time.sleep(0.02)
    time.sleep(0.2)  # would-be duplicates
    got_a, got_b = a.wait_for(0), b.wait_for(0)
    assert sorted(got_a + got_b) == sorted(payloads)  # each message to exactly one member
    assert got_a and got_b  # and both members get a share
    for c in (a, b, pub):
        c.close()


def test_shared_persistent_session_queues_while_offline(target):
    """The ingestor's own setup: a persistent session subscribed through $share/ingest/…."""
    prefix, topic = _topic()
    client_id = f"ingest-{uuid.uuid4().hex[:10]}"
    sub = Client(target, client_id, persistent=True)
    sub.subscribe(f"$share/ingest/{prefix}/+/telemetry")
    sub.close()
    pub = Client(target)
    payloads = [f"q{i}".encode() for i in range(20)]
    pub.publish_many(topic, payloads)
    back = Client(target, client_id, persistent=True)
    assert back.session_present is True
    assert sorted(back.wait_for(20)) == sorted(payloads)
    back.close()
    pub.close()


def test_retained_last_will(target):
    prefix, _ = _topic()
    status = f"{prefix}/VAN-01/status"
    watcher = Client(target)
    watcher.subscribe(status)
    van = Client(target, will=(status, b"offline"))
    van.client.publish(status, b"online", qos=1, retain=True).wait_for_publish(5)
    assert watcher.wait_for(1) == [b"online"]
    van.drop()  # no DISCONNECT: the broker publishes the will
    assert watcher.wait_for(2) == [b"online", b"offline"]
    late = Client(target)  # a newcomer gets the retained status
    late.subscribe(status)
    assert late.wait_for(1) == [b"offline"] and late.messages[0].retain
    late.client.publish(status, b"", qos=1, retain=True).wait_for_publish(5)  # clean up the retained
    for c in (watcher, late):
        c.close()


def test_broker_url_stop_and_free_port():
    broker = start_embedded_broker()
    url = urlsplit(broker.url)
    assert url.scheme == "mqtt" and url.hostname == "127.0.0.1" and url.port == broker.port
    assert broker.running
    assert _reachable("127.0.0.1", broker.port) and _reachable("127.0.0.1", broker.port_v311)
    broker.stop()
    broker.stop()  # twice is fine
    assert not broker.running
    assert not _reachable("127.0.0.1", broker.port)
    # the port is free again
    with start_embedded_broker(port=broker.port) as again:
        assert again.port == broker.port and _reachable("127.0.0.1", again.port)


_PARENT = """
import sys, time
from telemetry.broker import start_embedded_broker
b = start_embedded_broker()
print(b.pid, b.port, flush=True)
time.sleep(60)
"""


def test_broker_dies_with_its_parent():
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    try:
        line = parent.stdout.readline()
        child_pid, port = (int(x) for x in line.split())
        assert _reachable("127.0.0.1", port)
        parent.send_signal(signal.SIGKILL)  # no cleanup code runs in the parent
        parent.wait(5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (_alive(child_pid) or _reachable("127.0.0.1", port)):
            time.sleep(0.05)
        assert not _alive(child_pid)
        assert not _reachable("127.0.0.1", port)
    finally:
        if parent.poll() is None:
            parent.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_throughput_qos1(embedded):
    """A small version of the 20 000-message measurement (see the report): QoS 1 end to end."""
    target = Target("embedded-v5", "127.0.0.1", embedded.port, mqtt.MQTTv5)
    prefix, topic = _topic()
    sub = Client(target)
    sub.subscribe(f"{prefix}/+/telemetry")
    pub = Client(target, max_inflight=100)
    n = 3000
    payload = f'{{"device":"TL-0001","seq":1,"ts":"{zulu(CLOCK)}","temp_c":{{"chilled":3.8}}}}'.encode()
    start = time.perf_counter()
    pub.publish_many(topic, [payload] * n)
    got = sub.wait_for(n, timeout=30)
    rate = n / (time.perf_counter() - start)
    assert len(got) == n
    assert rate > 500, rate  # measured ~6–11k msg/s here; this is a smoke check, not the benchmark
    sub.close()
    pub.close()

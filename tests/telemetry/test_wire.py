"""telemetry.wire, the ingestor's MQTT 5 subscription, against a scripted broker on a loopback socket:
packets cut from any split of the byte stream, acks only as asked, refusals and broker disconnects
reported as errors the ingestor reconnects from. (Against real brokers: tests/telemetry/test_ingestor.py.)"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable

import pytest

from telemetry import wire


def publish(topic: str, payload: bytes, mid: int | None, props: bytes = b"\x00") -> bytes:
    body = struct.pack("!H", len(topic)) + topic.encode() + (struct.pack("!H", mid) if mid else b"") + props + payload
    return bytes([0x32 if mid else 0x30]) + wire._vbi(len(body)) + body


CONNACK_OK = b"\x20\x03\x00\x00\x00"  # no session present, success, no properties
SUBACK_OK = b"\x90\x04\x00\x01\x00\x01"  # packet id 1, no properties, granted QoS 1


class Broker:
    """Accepts one connection, reads the CONNECT and SUBSCRIBE, then runs ``script(conn)``; keeps what it got."""

    def __init__(self, script: Callable[[socket.socket], None]) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.received = b""
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(script,), daemon=True)
        self.thread.start()

    def _read_packet(self, conn: socket.socket) -> bytes:
        head = conn.recv(1)
        length, mult = 0, 1
        while True:
            byte = conn.recv(1)[0]
            length += (byte & 0x7F) * mult
            mult *= 128
            if not byte & 0x80:
                break
        body = b""
        while len(body) < length:
            body += conn.recv(length - len(body))
        return head + body

    def _serve(self, script: Callable[[socket.socket], None]) -> None:
        conn, _ = self.server.accept()
        with conn:
            self.connect = self._read_packet(conn)
            script(conn)
            conn.settimeout(1.0)
            try:
                while chunk := conn.recv(65536):
                    self.received += chunk
            except OSError:
                pass
        self.done.set()

    def close(self) -> None:
        self.server.close()


def subscriber(port: int) -> wire.Subscriber:
    return wire.Subscriber("127.0.0.1", port, "t-client", "$share/g/coldchain/v1/vehicles/+/telemetry",
                           session_expiry=300, receive_maximum=500, connect_timeout=5)


def read_all(sub: wire.Subscriber, count: int) -> list[wire.Incoming]:
    out: list[wire.Incoming] = []
    for _ in range(200):
        out += sub.read(0.05)
        if len(out) >= count:
            break
    return out


@pytest.mark.parametrize("chunk", [1, 3, 7, 4096])
def test_messages_are_cut_from_any_split_of_the_stream_and_acked_in_one_write(chunk: int) -> None:
    big = b"x" * 300  # a two-byte remaining length
    stream = (publish("coldchain/v1/vehicles/V1/telemetry", b'{"a":1}', 7)
              + publish("coldchain/v1/vehicles/V2/telemetry", big, 8, props=b"\x02\x01\x01")  # payload format
              + publish("coldchain/v1/vehicles/V1/telemetry", b"qos0", None))

    def script(conn: socket.socket) -> None:
        data = CONNACK_OK + SUBACK_OK + stream
        for i in range(0, len(data), chunk):
            conn.sendall(data[i : i + chunk])

    broker = Broker(script)
    sub = subscriber(broker.port)
    try:
        sub.connect()
        got = read_all(sub, 3)
        assert got == [wire.Incoming("coldchain/v1/vehicles/V1/telemetry", b'{"a":1}', 7, 1),
                       wire.Incoming("coldchain/v1/vehicles/V2/telemetry", big, 8, 1),
                       wire.Incoming("coldchain/v1/vehicles/V1/telemetry", b"qos0", None, 0)]
        assert sub.subscribed
        sub.ack([7, 8])
        sub.close(disconnect=True)
        assert broker.done.wait(5)
    finally:
        broker.close()
    # CONNECT: MQTT 5, clean start off, the session expiry and receive maximum asked for, the client id
    assert broker.connect[0] == 0x10 and b"MQTT\x05\x00" in broker.connect
    assert b"\x11\x00\x00\x01\x2c" in broker.connect and b"\x21\x01\xf4" in broker.connect
    assert broker.connect.endswith(b"\x00\x08t-client")
    subscribe_at = broker.received.index(b"\x82")
    assert b"$share/g/coldchain/v1/vehicles/+/telemetry\x01" in broker.received[subscribe_at:]
    assert broker.received.endswith(b"\x40\x02\x00\x07\x40\x02\x00\x08\xe0\x00")  # both PUBACKs, DISCONNECT


def test_a_refused_connection_raises_and_leaves_no_socket() -> None:
    broker = Broker(lambda conn: conn.sendall(b"\x20\x03\x00\x87\x00"))  # not authorized
    sub = subscriber(broker.port)
    try:
        with pytest.raises(ConnectionRefusedError, match="0x87"):
            sub.connect()
        assert not sub.connected
    finally:
        broker.close()


def test_a_refused_subscription_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    broker = Broker(lambda conn: conn.sendall(CONNACK_OK + b"\x90\x04\x00\x01\x00\x9e"))  # shared subs unsupported
    sub = subscriber(broker.port)
    try:
        sub.connect()
        assert sub.read(0.5) == []  # the SUBACK came with the CONNACK
        assert not sub.subscribed
        assert "refused the subscription" in caplog.text and "0x9e" in caplog.text
        sub.close()
    finally:
        broker.close()


def test_the_broker_taking_the_session_away_ends_the_connection() -> None:
    def script(conn: socket.socket) -> None:
        conn.sendall(CONNACK_OK + SUBACK_OK + publish("coldchain/v1/vehicles/V1/telemetry", b"1", 1) + b"\xe0\x01\x8e")

    broker = Broker(script)
    sub = subscriber(broker.port)
    try:
        sub.connect()
        with pytest.raises(ConnectionError, match="0x8e"):
            for _ in range(100):
                sub.read(0.05)
        assert not sub.connected
        with pytest.raises(ConnectionError):
            sub.ack([1])
    finally:
        broker.close()


def test_qos2_on_a_qos1_subscription_is_a_protocol_error() -> None:
    body = struct.pack("!H", 1) + b"t" + struct.pack("!H", 5) + b"\x00" + b"p"

    broker = Broker(lambda conn: conn.sendall(CONNACK_OK + b"\x34" + wire._vbi(len(body)) + body))
    sub = subscriber(broker.port)
    try:
        sub.connect()
        with pytest.raises(wire.ProtocolError):
            for _ in range(100):
                sub.read(0.05)
        assert not sub.connected
    finally:
        broker.close()


def test_keepalive_pings_and_a_silent_broker_counts_as_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    broker = Broker(lambda conn: conn.sendall(CONNACK_OK + b"\x20"[:0]))
    sub = subscriber(broker.port)
    sub.keepalive = 2
    clock = [1000.0]
    monkeypatch.setattr(wire.time, "monotonic", lambda: clock[0])
    try:
        sub.connect()
        clock[0] += 1.5  # past half the keep-alive with nothing sent: a PINGREQ
        assert sub.read(0.01) == []
        clock[0] += 2.5  # and no answer for longer than the keep-alive
        with pytest.raises(ConnectionError, match="keep-alive"):
            sub.read(0.01)
    finally:
        broker.close()
    assert broker.done.wait(5)
    assert b"\xc0\x00" in broker.received

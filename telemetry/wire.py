"""The ingestor's MQTT 5 subscription, driven from the thread that stores: no network thread.

Why not paho for this part: measured here (60,000 one-sample QoS 1 messages queued in a persistent
Mosquitto session, drained by one process), paho spent 38-52 µs of CPU a message before any of our
code ran (a select() and three or four recv() calls per packet, its packet objects and callbacks,
its thread taking the GIL from the one that stores), 69 µs with an ``ack()`` a message; gmqtt
(asyncio) 29 µs with acks after a coroutine per message; reading the socket in 256 KiB chunks and
cutting packets out of them, as here, 2.7 µs. At one sample per message that was most of the
ingestor's cost. Paho still publishes the alerts (a few a minute).

What this needs of MQTT 5, and no more: CONNECT with clean start off, a session expiry and a receive
maximum (the broker keeps the session and holds back at most that many unacknowledged messages);
one SUBSCRIBE at QoS 1 (a ``$share/...`` filter works like any other); PUBLISH in, at QoS 0 or 1;
PUBACK out, only for messages whose batch has committed, several in one write; PINGREQ when nothing
was sent for half the keep-alive; DISCONNECT. The topic alias maximum is left at 0, so the broker
sends every topic in full; PUBLISH properties are skipped by their length. Anything else the broker
should not send (QoS 2 at a QoS 1 subscription, a malformed length) ends the connection, and the
caller connects again: what was not acknowledged comes back, duplicates are recognised by their key.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import struct
import time
from typing import NamedTuple

log = logging.getLogger("coldchain.ingest")

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_PUBACK = struct.Struct("!BBH")  # PUBACK, remaining length 2, packet id: reason 0 (success) left out
_PINGREQ = b"\xc0\x00"
_DISCONNECT = b"\xe0\x00"  # normal disconnection: the broker keeps the session for its expiry
_READ_CHUNK = 256 * 1024

# MQTT 5 property identifiers by the size of their value (spec 2.2.2.2), to read CONNACK's and SUBACK's.
_PROP_BYTE = {0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A}
_PROP_U16 = {0x13, 0x21, 0x22, 0x23}
_PROP_U32 = {0x02, 0x11, 0x18, 0x27}
_PROP_VBI = {0x0B}
_PROP_STR = {0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F, 0x09, 0x16}  # strings and binary: a 2-byte length
_PROP_PAIR = {0x26}


class ProtocolError(ConnectionError):
    """The broker sent something this subscriber does not accept; the connection is dropped."""


class Incoming(NamedTuple):
    """One PUBLISH received: the topic, the payload, its packet id (None at QoS 0), its QoS."""

    topic: str
    payload: bytes
    mid: int | None
    qos: int


def _vbi(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _utf8(value: str) -> bytes:
    data = value.encode("utf-8")
    return _U16.pack(len(data)) + data


def _read_vbi(buf: bytes, i: int) -> tuple[int, int]:
    """(value, index after it) of the variable byte integer at ``i``; ProtocolError past 4 bytes."""
    value, mult = 0, 1
    for k in range(4):
        byte = buf[i + k]
        value += (byte & 0x7F) * mult
        if not byte & 0x80:
            return value, i + k + 1
        mult *= 128
    raise ProtocolError("malformed variable byte integer")


def parse_properties(buf: bytes, i: int) -> tuple[dict[int, object], int]:
    """The properties block at ``i`` as {identifier: value} (pairs as a list), and the index after it."""
    length, i = _read_vbi(buf, i)
    end, props = i + length, {}
    while i < end:
        ident = buf[i]
        i += 1
        if ident in _PROP_BYTE:
            value, i = buf[i], i + 1
        elif ident in _PROP_U16:
            value, i = _U16.unpack_from(buf, i)[0], i + 2
        elif ident in _PROP_U32:
            value, i = _U32.unpack_from(buf, i)[0], i + 4
        elif ident in _PROP_VBI:
            value, i = _read_vbi(buf, i)
        elif ident in _PROP_STR:
            n = _U16.unpack_from(buf, i)[0]
            value, i = bytes(buf[i + 2 : i + 2 + n]), i + 2 + n
        elif ident in _PROP_PAIR:
            pair = []
            for _ in range(2):
                n = _U16.unpack_from(buf, i)[0]
                pair.append(bytes(buf[i + 2 : i + 2 + n]))
                i += 2 + n
            props.setdefault(ident, []).append(tuple(pair))  # type: ignore[union-attr]
            continue
        else:
            raise ProtocolError(f"unknown property 0x{ident:02x}")
        props[ident] = value
    if i != end:
        raise ProtocolError("property block overruns its length")
    return props, end


def connect_packet(client_id: str, keepalive: int, session_expiry: int, receive_maximum: int,
                   clean_start: bool = False) -> bytes:
    props = b"\x11" + _U32.pack(session_expiry) + b"\x21" + _U16.pack(receive_maximum)
    body = (_utf8("MQTT") + b"\x05" + bytes([0x02 if clean_start else 0x00]) + _U16.pack(keepalive)
            + _vbi(len(props)) + props + _utf8(client_id))
    return b"\x10" + _vbi(len(body)) + body


def subscribe_packet(packet_id: int, topic_filter: str, qos: int = 1) -> bytes:
    body = _U16.pack(packet_id) + b"\x00" + _utf8(topic_filter) + bytes([qos])
    return b"\x82" + _vbi(len(body)) + body


def puback_bytes(mids: list[int]) -> bytes:
    """The PUBACKs (reason 0) of these packet ids, as one write."""
    pack = _PUBACK.pack
    return b"".join([pack(0x40, 2, mid) for mid in mids])


class Subscriber:
    """One connection to the broker with one QoS 1 subscription, used from a single thread.

    ``connect()`` opens it (CONNECT, CONNACK, SUBSCRIBE); ``read(timeout)`` returns the PUBLISH
    packets that arrived (waiting up to ``timeout`` for the first bytes); ``ack(mids)`` sends their
    PUBACKs. Any socket or protocol failure raises ``ConnectionError`` (or ``OSError``) and closes the
    socket; ``connect()`` again resumes the session. ``generation`` counts connections: a packet id is
    only acknowledged on the connection that delivered it.
    """

    def __init__(self, host: str, port: int, client_id: str, topic_filter: str, *, keepalive: int = 30,
                 session_expiry: int = 7 * 24 * 3600, receive_maximum: int = 10000,
                 connect_timeout: float = 10.0) -> None:
        self.host, self.port, self.client_id, self.topic_filter = host, port, client_id, topic_filter
        self.keepalive, self.session_expiry, self.receive_maximum = keepalive, session_expiry, receive_maximum
        self.connect_timeout = connect_timeout
        self.sock: socket.socket | None = None
        self.generation = 0
        self.subscribed = False
        self.session_present = False
        self._buf = b""
        self._last_sent = 0.0
        self._ping_sent = 0.0  # when the oldest PINGREQ not followed by any data went out
        self._topics: dict[bytes, str] = {}  # topic bytes -> str: a van's topic is decoded once

    @property
    def connected(self) -> bool:
        return self.sock is not None

    # -- connection ------------------------------------------------------------------------
    def connect(self) -> None:
        """Open the connection and subscribe; raises ConnectionError/OSError (the socket is closed)."""
        self.close()
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self._buf, self.subscribed, self._ping_sent = sock, b"", False, 0.0
        try:
            self._send(connect_packet(self.client_id, self.keepalive, self.session_expiry, self.receive_maximum))
            deadline = time.monotonic() + self.connect_timeout
            while True:  # the CONNACK is the first packet the broker sends
                packet = self._next_packet()
                if packet is not None:
                    break
                if time.monotonic() > deadline:
                    raise ConnectionError("no CONNACK from the broker")
                self._fill(max(0.0, deadline - time.monotonic()))
            cmd, body = packet
            if cmd >> 4 != 2 or len(body) < 2:
                raise ProtocolError(f"expected CONNACK, got packet type {cmd >> 4}")
            self.session_present, reason = bool(body[0] & 1), body[1]
            props = parse_properties(body, 2)[0] if len(body) > 2 else {}
            if reason >= 0x80:
                raise ConnectionRefusedError(f"broker refused the connection: reason 0x{reason:02x} "
                                             f"{props.get(0x1F, b'').decode('utf-8', 'replace')}".strip())
            server_keepalive = props.get(0x13)
            if isinstance(server_keepalive, int):
                self.keepalive = server_keepalive
            self._send(subscribe_packet(1, self.topic_filter))
        except BaseException:
            self.close()
            raise
        self.generation += 1
        sock.settimeout(self.connect_timeout)  # sends; reads wait in select()

    def close(self, disconnect: bool = False) -> None:
        sock, self.sock = self.sock, None
        if sock is None:
            return
        if disconnect:
            with contextlib.suppress(OSError):
                sock.sendall(_DISCONNECT)
        with contextlib.suppress(OSError):
            sock.close()

    # -- traffic ---------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        if self.sock is None:
            raise ConnectionError("not connected")
        try:
            self.sock.sendall(data)
        except OSError:
            self.close()
            raise
        self._last_sent = time.monotonic()

    def _fill(self, timeout: float) -> bool:
        """Read what the socket has (waiting up to ``timeout`` for it); False if nothing came."""
        sock = self.sock
        if sock is None:
            raise ConnectionError("not connected")
        try:
            ready = select.select([sock], [], [], timeout)[0]
            if not ready:
                return False
            data = sock.recv(_READ_CHUNK)
        except OSError:
            self.close()
            raise
        if not data:
            self.close()
            raise ConnectionError("the broker closed the connection")
        self._buf = self._buf + data if self._buf else data
        self._ping_sent = 0.0
        return True

    def _next_packet(self) -> tuple[int, bytes] | None:
        """Cut one whole packet (command byte, body) off the buffer, or None if it is not all there."""
        buf = self._buf
        if len(buf) < 2:
            return None
        try:
            length, start = _read_vbi(buf, 1)
        except IndexError:
            return None
        end = start + length
        if end > len(buf):
            return None
        self._buf = buf[end:]
        return buf[0], buf[start:end]

    def read(self, timeout: float, limit: int = 1 << 30) -> list[Incoming]:
        """The PUBLISH packets now in the socket (up to about ``limit``), waiting up to ``timeout`` for the
        first bytes. Control packets (SUBACK, PINGRESP, DISCONNECT) are handled here."""
        self.ping_if_due()
        if not self._has_whole_packet() and not self._fill(timeout):
            self._check_alive()
        out: list[Incoming] = []
        self._parse(out, limit)
        return out

    def _has_whole_packet(self) -> bool:
        try:
            length, start = _read_vbi(self._buf, 1)
        except IndexError:
            return False
        return start + length <= len(self._buf)

    def _parse(self, out: list[Incoming], limit: int) -> None:
        """Cut the buffer's whole packets: the hot loop at one sample per message, so PUBLISH is inline."""
        buf, pos, size = self._buf, 0, len(self._buf)
        topics, u16 = self._topics, _U16.unpack_from
        append = out.append
        while size - pos >= 2 and len(out) < limit:
            byte = buf[pos + 1]
            if byte < 0x80:
                length, start = byte, pos + 2
            else:
                try:
                    length, start = _read_vbi(buf, pos + 1)
                except IndexError:
                    break
            end = start + length
            if end > size:
                break
            cmd = buf[pos]
            if cmd >> 4 == 3:  # PUBLISH
                qos = (cmd >> 1) & 3
                n = u16(buf, start)[0]
                i = start + 2 + n
                raw_topic = buf[start + 2 : i]
                topic = topics.get(raw_topic)
                if topic is None:
                    topic = raw_topic.decode("utf-8", "replace")
                    if len(topics) < 100_000:
                        topics[raw_topic] = topic
                mid = None
                if qos:
                    if qos > 1:
                        self.close()
                        raise ProtocolError("QoS 2 PUBLISH on a QoS 1 subscription")
                    mid = u16(buf, i)[0]
                    i += 2
                plen = buf[i]
                if plen < 0x80:
                    i += 1 + plen
                else:
                    plen, i = _read_vbi(buf, i)
                    i += plen
                if i > end:
                    self.close()
                    raise ProtocolError("PUBLISH properties overrun the packet")
                append(Incoming(topic, buf[i:end], mid, qos))
            else:
                self._control(cmd, buf[start:end])
            pos = end
        self._buf = buf[pos:] if pos else buf

    def _control(self, cmd: int, body: bytes) -> None:
        kind = cmd >> 4
        if kind == 9:  # SUBACK: packet id, properties, one reason code per filter
            codes = body[parse_properties(body, 2)[1]:]
            for code in codes:
                if code >= 0x80:
                    log.error("the broker refused the subscription to %s: reason 0x%02x", self.topic_filter, code)
                else:
                    self.subscribed = True
                    log.info("subscription granted: %s (QoS %s)", self.topic_filter, code)
        elif kind == 13:  # PINGRESP
            pass
        elif kind == 14:  # DISCONNECT from the broker (e.g. 0x8e: another connection took the session)
            reason = body[0] if body else 0
            self.close()
            raise ConnectionError(f"the broker disconnected us: reason 0x{reason:02x}")
        elif kind in (4, 5, 6, 7, 11):  # acks of packets we never send here: ignore
            pass
        else:
            self.close()
            raise ProtocolError(f"unexpected packet type {kind}")

    def ack(self, mids: list[int]) -> None:
        """PUBACK these packet ids (QoS 1), all in one write."""
        if mids:
            self._send(puback_bytes(mids))

    def ping_if_due(self) -> None:
        """Keep the connection alive: a PINGREQ when nothing was sent for half the keep-alive (also called
        while a batch waits for the database, so that the broker keeps the connection)."""
        if self.sock is None or not self.keepalive:
            return
        now = time.monotonic()
        if now - self._last_sent >= self.keepalive / 2:
            self._send(_PINGREQ)
            if not self._ping_sent:
                self._ping_sent = now

    def _check_alive(self) -> None:
        """After a wait that brought nothing: lost if a PINGREQ has had no answer for a keep-alive."""
        if self._ping_sent and time.monotonic() - self._ping_sent > self.keepalive:
            self.close()
            raise ConnectionError("no answer from the broker within the keep-alive")

"""The embedded MQTT broker for embedded defaults (COLDCHAIN_MQTT_URL unset).

``coldchain demo`` and ``coldchain ingest`` call :func:`start_embedded_broker`
to get a broker on a free loopback port and print its URL.

Why this broker: it is rumqttd (Rust), shipped compiled inside the ``iotcore``
wheel, run in a **child process**. Measured here it carries ~8–9k QoS 1
messages/s from one paho publisher (pure-Python amqtt: ~2.8k), it delivers
``$share/{group}/…`` shared subscriptions (amqtt delivers none), and with a
listener configured for MQTT 5 it accepts MQTT 5 clients, keeps persistent
sessions (clean start off + session expiry) and queues QoS 1 messages for an
offline subscriber until it reconnects. A child process because rumqttd has
no shutdown API: ``stop()`` terminates the process, which frees the ports,
and the child also exits by itself when its parent dies (it watches a pipe
from the parent), so a crashed demo leaves no broker behind; at normal
interpreter exit an ``atexit`` hook stops it.

Two listeners, because rumqttd serves one protocol version per listener:
``url`` is the MQTT 5 listener (use ``protocol=MQTTv5`` in paho — the
project's clients should, Mosquitto accepts it too); ``url_v311`` is an
MQTT 3.1.1 listener on another port for clients that cannot speak 5. Both
share one router, so a message published on one reaches subscribers on the
other. MQTT 3.1 (paho's ``MQTTv31``) is not served.

Limits to know: sessions and queued messages live in the broker's memory
only (a restarted embedded broker starts empty — fine for a demo; the real
stack is Mosquitto with persistence); the per-filter commit log keeps at
most ``max_segment_count × max_segment_size`` bytes.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from core.settings import get_settings

__all__ = ["EmbeddedBroker", "EmbeddedBrokerError", "start_embedded_broker"]

# The child: drop the working directory from sys.path (a folder named like a package in
# the user's tree must not shadow it), silence rumqttd's per-packet tracing records,
# exit when the parent's end of the stdin pipe closes, run the broker until killed.
_CHILD = """# coldchain embedded MQTT broker (rumqttd via iotcore)
import logging, os, shutil, sys, threading
sys.path[:] = [p for p in sys.path if p not in ("", ".")]
level = sys.argv[2]
logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logging.getLogger("rumqttd").setLevel(logging.DEBUG if level == "DEBUG" else logging.CRITICAL)
from iotcore.iotcore import IotCoreBroker
def _watch_parent():
    try:
        sys.stdin.buffer.read()
    finally:
        shutil.rmtree(os.path.dirname(os.path.abspath(sys.argv[1])), ignore_errors=True)
        os._exit(0)
threading.Thread(target=_watch_parent, daemon=True).start()
IotCoreBroker(config_path=sys.argv[1]).run_forever()
"""

_CONFIG = """\
id = 0

[router]
id = 0
max_connections = 10010
max_outgoing_packet_count = 200
max_segment_size = {segment_size}
max_segment_count = {segment_count}

[v4.1]
name = "v4-1"
listen = "{host}:{port_v311}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = {max_payload}
max_inflight_count = {max_inflight}
dynamic_filters = true

[v5.1]
name = "v5-1"
listen = "{host}:{port}"
next_connection_delay_ms = 1
[v5.1.connections]
connection_timeout_ms = 60000
max_payload_size = {max_payload}
max_inflight_count = {max_inflight}
"""


class EmbeddedBrokerError(RuntimeError):
    """The embedded broker could not be started."""


class EmbeddedBroker:
    """A running embedded broker (a child process). Use as a context manager or call :meth:`stop`."""

    def __init__(self, process: subprocess.Popen, host: str, port: int, port_v311: int, workdir: Path,
                 log: IO[bytes] | None) -> None:
        self._process: subprocess.Popen | None = process
        self.host = host
        self.port = port
        self.port_v311 = port_v311
        self._workdir = workdir
        self._log = log

    @property
    def url(self) -> str:
        """``mqtt://host:port`` of the MQTT 5 listener."""
        return f"mqtt://{_url_host(self.host)}:{self.port}"

    @property
    def url_v311(self) -> str:
        """``mqtt://host:port`` of the MQTT 3.1.1 listener."""
        return f"mqtt://{_url_host(self.host)}:{self.port_v311}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker and free its ports. Safe to call twice."""
        process, self._process = self._process, None
        if process is None:
            return
        atexit.unregister(self.stop)
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if process.stdin is not None:
            process.stdin.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> EmbeddedBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<EmbeddedBroker {self.url} (3.1.1: {self.url_v311}) {state}>"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _accepts(host: str, port: int) -> bool:
    connect_host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    try:
        with socket.create_connection((connect_host, port), timeout=0.2):
            return True
    except OSError:
        return False


def start_embedded_broker(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    port_v311: int = 0,
    timeout: float = 10.0,
    max_payload: int = 4 * 1024 * 1024,
    max_inflight: int = 100,
    segment_size: int = 32 * 1024 * 1024,
    segment_count: int = 10,
    log_path: str | os.PathLike[str] | None = None,
) -> EmbeddedBroker:
    """Start an embedded broker; ``port=0`` (and ``port_v311=0``) picks free ports.

    Returns once both listeners accept connections. Raises
    :class:`EmbeddedBrokerError` if ``iotcore`` is missing or the broker does
    not come up (with free ports chosen here it retries a few times, since a
    free port can be taken between choosing and binding). Broker logs go to
    ``log_path`` (default: discarded; stdout is never used, so ``--json``
    output stays clean).
    """
    try:
        import iotcore.iotcore  # noqa: F401  (checked here so the error is clear)
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise EmbeddedBrokerError(
            "the embedded MQTT broker needs the 'iotcore' package; install it or set COLDCHAIN_MQTT_URL"
        ) from exc

    attempts = 5 if (port == 0 or port_v311 == 0) else 1
    last_error = "unknown"
    for _ in range(attempts):
        p5 = port or _free_port(host)
        p4 = port_v311 or _free_port(host)
        while p4 == p5:
            p4 = _free_port(host)
        workdir = Path(tempfile.mkdtemp(prefix="coldchain-mqtt-"))
        config = workdir / "rumqttd.toml"
        config.write_text(
            _CONFIG.format(host=host, port=p5, port_v311=p4, max_payload=int(max_payload),
                           max_inflight=int(max_inflight), segment_size=int(segment_size),
                           segment_count=int(segment_count)),
            encoding="utf-8",
        )
        log = open(log_path, "ab") if log_path is not None else None  # noqa: SIM115 (owned by the broker)
        process = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(config), get_settings().mqtt_broker_log],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=log if log is not None else subprocess.DEVNULL,
            cwd=workdir,
        )
        broker = EmbeddedBroker(process, host, p5, p4, workdir, log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = process.poll()
            if code is not None:
                last_error = f"broker process exited with code {code} (port in use?)"
                break
            if _accepts(host, p5) and _accepts(host, p4):
                # Stopped at interpreter exit at the latest (this also keeps a broker whose
                # object was dropped running until then, never stopping it behind the caller's
                # back); if the parent is killed, the child notices its stdin closing and exits.
                atexit.register(broker.stop)
                return broker
            time.sleep(0.05)
        else:
            last_error = f"broker did not accept connections within {timeout} s"
        broker.stop()
    raise EmbeddedBrokerError(f"could not start the embedded MQTT broker: {last_error}")


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - manual use
    """``python -m telemetry.broker``: run an embedded broker until Ctrl+C and print its URLs."""
    import argparse

    parser = argparse.ArgumentParser(description="Run the embedded MQTT broker.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    with start_embedded_broker(args.host, args.port) as broker:
        print(broker.url, flush=True)
        print(f"MQTT 3.1.1 clients: {broker.url_v311}", file=sys.stderr, flush=True)
        try:
            while broker.running:
                time.sleep(1)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":  # pragma: no cover
    main()

"""Ingestion benchmark: samples/s stored end to end, and the time from publish to alert.

    python -m benchmarks.ingest [--samples 200000] [--per-message 10] [--database URL] [--mqtt URL]
    python -m benchmarks.ingest --per-message 1 --samples 60000 --processes 2 --publisher mosquitto_pub
    python -m benchmarks.ingest --per-message 1 --samples 60000 --ingestors 1,2 --publisher mosquitto_pub

A publisher in a separate process sends N samples (QoS 1) for 60 vans to the broker;
`coldchain ingest` (a separate process, as in production) stores them; this process
counts what is stored in the database until every sample is there, then counts the readings
per (device, seq, kind, compartment) against what was sent: none lost, none stored twice
(telemetry.service.reading_counts; readings have no key, so that is where a repeat would
land). Then 100 probes each publish a 16-minute chilled excursion for one van and time the
alert's arrival on coldchain/v1/alerts/{van}.

Without --mqtt it starts Mosquitto with the repository's deploy/mosquitto.conf on a free
port (the machine's default configuration drops QoS 1 messages beyond 1000 queued).
Without --database it uses $COLDCHAIN_BENCH_DATABASE_URL, else the machine's PostgreSQL.
A database is made for the run and dropped after it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from scripts.console import free_port

ROOT = Path(__file__).resolve().parent.parent


def start_mosquitto(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    conf = (ROOT / "deploy" / "mosquitto.conf").read_text()
    conf = conf.replace("listener 1883 0.0.0.0", f"listener {port} 127.0.0.1").replace(
        "persistence_location /mosquitto/data/", f"persistence_location {workdir}/")
    path = workdir / "mosquitto.conf"
    path.write_text(conf)
    proc = subprocess.Popen(["mosquitto", "-c", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"mqtt://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


def cpu_seconds(roots: list[int]) -> float:
    """User + system CPU seconds of these processes and all their descendants, now (Linux /proc): the
    ingestors' own cost, which the load other sessions put on the machine does not inflate."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    wanted, total, frontier = set(roots), 0.0, list(roots)
    while frontier:
        pid = frontier.pop()
        for child, (ppid, _cpu) in stats.items():
            if ppid == pid and child not in wanted:
                wanted.add(child)
                frontier.append(child)
    for pid in wanted:
        total += stats.get(pid, (0, 0.0))[1]
    return total


def pid_cpu(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each of these processes (not their children), now; gone ones omitted."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def backend_pids(engine, database: str) -> list[int]:  # noqa: ANN001
    """The PostgreSQL backends serving this database (the ingestors' connections), but not this one."""
    from sqlalchemy import text

    with engine.connect() as conn:
        sql = "SELECT pid FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"
        return list(conn.scalars(text(sql), {"d": database}))


def _client(url: str, name: str):  # noqa: ANN202
    from urllib.parse import urlparse

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    u = urlparse(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:6]}",
                         protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(200)
    client.max_queued_messages_set(0)
    client.connect(u.hostname, u.port or 1883)
    client.loop_start()
    return client


def messages_of(vans: list[tuple[str, str]], samples: int, per_message: int,
                start: str) -> Iterator[tuple[str, list[dict]]]:
    """The benchmark's stream, as (van, samples of one message): vans round robin, consecutive seqs.

    Deterministic, so that the counting after the run regenerates exactly what the publisher sent."""
    base = datetime.fromisoformat(start)
    seq = dict.fromkeys((d for _v, d in vans), 0)
    sent, i = 0, 0
    while sent < samples:
        van, device = vans[i % len(vans)]
        i += 1
        n = min(per_message, samples - sent)
        batch = []
        for _ in range(n):
            s = seq[device]
            seq[device] += 1
            ts = base + timedelta(seconds=5 * s)
            batch.append({"device": device, "seq": s, "ts": ts.isoformat(), "temp_c": {"chilled": 3.5, "frozen": -19.0},
                          "door": {"chilled": "closed"}, "pos": [30.65, 104.06], "battery": 0.9})
        yield van, batch
        sent += n


def publisher(url: str, vans: list[tuple[str, str]], samples: int, per_message: int, start: str,
              done: mp.Queue) -> None:
    """Send `samples` samples for the vans, round robin, `per_message` per MQTT message.

    Payloads are built before the clock starts, so the publisher's share of this 2-core machine
    during the run is paho's publishing, not JSON building; it reports the wall-clock time of its
    first publish (the benchmark's start) and how long publishing took."""
    client = _client(url, "bench-pub")
    messages = [(f"coldchain/v1/vehicles/{van}/telemetry", json.dumps(batch if per_message > 1 else batch[0]))
                for van, batch in messages_of(vans, samples, per_message, start)]
    infos = []
    import resource

    r0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = r0.ru_utime + r0.ru_stime  # building the payloads is not counted
    first, t0 = time.time(), time.perf_counter()
    for topic, payload in messages:
        infos.append(client.publish(topic, payload, qos=1))
        if len(infos) >= 500:
            for info in infos:
                info.wait_for_publish(60)
            infos = []
    for info in infos:
        info.wait_for_publish(60)
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    done.put((first, time.perf_counter() - t0, r.ru_utime + r.ru_stime - cpu0))
    client.loop_stop()
    client.disconnect()


def wire_publisher(url: str, vans: list[tuple[str, str]], samples: int, per_message: int, start: str,
                   done: mp.Queue) -> None:
    """The same stream as :func:`publisher` at a fraction of its CPU: real MQTT 5 QoS 1 PUBLISH packets
    (the contract's payload, one message per line of the stream) built before the clock starts, written
    a few hundred per send() on one connection with as many in flight as the broker's Receive Maximum
    allows, and the broker's PUBACKs read back in bulk; it finishes when every message is acknowledged
    (a PUBACK with a failure reason counts as not sent: the run then reports missing samples).
    Measured here: a few µs of CPU a message, against ~100 for paho and ~35 for mosquitto_pub."""
    import resource
    import select as select_mod
    import struct
    from urllib.parse import urlparse

    from telemetry import wire

    u = urlparse(url)
    sock = socket.create_connection((u.hostname or "127.0.0.1", u.port or 1883))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(wire.connect_packet(f"bench-wire-{uuid.uuid4().hex[:6]}", 60, 0, 65535, clean_start=True))
    buf = b""
    while True:
        buf += sock.recv(65536)
        if len(buf) >= 2:
            length, i = wire._read_vbi(buf, 1)
            if len(buf) >= i + length:
                break
    body = buf[i : i + length]
    buf = buf[i + length :]
    if body[1] >= 0x80:
        raise RuntimeError(f"the broker refused the publisher: 0x{body[1]:02x}")
    window = int(wire.parse_properties(body, 2)[0].get(0x21, 65535)) if len(body) > 2 else 65535
    u16 = struct.Struct("!H").pack
    packets = []
    for k, (van, batch) in enumerate(messages_of(vans, samples, per_message, start)):
        topic = f"coldchain/v1/vehicles/{van}/telemetry".encode()
        payload = json.dumps(batch if per_message > 1 else batch[0]).encode()
        rest = u16(len(topic)) + topic + u16(k % 65535 + 1) + b"\x00" + payload
        packets.append(b"\x32" + wire._vbi(len(rest)) + rest)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    first, t0 = time.time(), time.perf_counter()
    sent = acked = refused = 0
    total = len(packets)
    while acked + refused < total:
        if sent < total and sent - acked - refused < window:
            n = min(window - (sent - acked - refused), 500, total - sent)
            sock.sendall(b"".join(packets[sent : sent + n]))
            sent += n
            if not select_mod.select([sock], [], [], 0)[0]:
                continue
        data = sock.recv(262144)
        if not data:
            raise RuntimeError("the broker closed the publisher's connection")
        buf += data
        pos = 0
        while len(buf) - pos >= 2:
            length, i = wire._read_vbi(buf, pos + 1)
            if i + length > len(buf):
                break
            if buf[pos] >> 4 == 4:  # PUBACK: packet id, then a reason code if not success
                if length >= 3 and buf[i + 2] >= 0x80:
                    refused += 1
                else:
                    acked += 1
            pos = i + length
        buf = buf[pos:]
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    seconds = time.perf_counter() - t0
    sock.sendall(b"\xe0\x00")
    sock.close()
    done.put((first, seconds, r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime))


class CPublisher:
    """The stream published by Mosquitto's own C client, one ``mosquitto_pub -l -q 1`` per van fed from a
    file of that van's messages (one per line), all started together: at one sample per message the
    Python publisher (paho, ~100 µs a message) cannot send faster than ~10,000 messages/s on this
    machine and takes a core from the ingestors; the vans are other machines. Same messages, same
    order per van, same QoS as :func:`publisher`."""

    def __init__(self, url: str, vans: list[tuple[str, str]], samples: int, per_message: int, start: str,
                 work: Path) -> None:
        from urllib.parse import urlparse

        u = urlparse(url)
        self.host, self.port = u.hostname or "127.0.0.1", str(u.port or 1883)
        folder = work / "cpub"
        folder.mkdir(exist_ok=True)
        files: dict[str, list[str]] = {}
        for van, batch in messages_of(vans, samples, per_message, start):
            files.setdefault(van, []).append(json.dumps(batch if per_message > 1 else batch[0]))
        self.files = {}
        for van, lines in files.items():
            path = folder / f"{van}.jsonl"
            path.write_text("\n".join(lines) + "\n")
            self.files[van] = path
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        self.first = time.time()
        self.t0 = time.perf_counter()
        for van, path in self.files.items():
            with path.open("rb") as stdin:
                self.procs.append(subprocess.Popen(
                    ["mosquitto_pub", "-h", self.host, "-p", self.port, "-V", "mqttv5", "-q", "1", "-l",
                     "-t", f"coldchain/v1/vehicles/{van}/telemetry", "-i", f"bench-cpub-{van}"],
                    stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    cpu = 0.0  # CPU seconds of the mosquitto_pub processes that have exited (their rusage, from wait4)

    def _reap(self, block: bool) -> None:
        for p in self.procs:
            if p.returncode is None:
                pid, status, usage = os.wait4(p.pid, 0 if block else os.WNOHANG)
                if pid:
                    p.returncode = os.waitstatus_to_exitcode(status)
                    self.cpu += usage.ru_utime + usage.ru_stime

    def is_alive(self) -> bool:
        self._reap(block=False)
        alive = any(p.returncode is None for p in self.procs)
        if not alive and not hasattr(self, "seconds"):
            self.seconds = time.perf_counter() - self.t0
        return alive

    def join(self, timeout: float) -> None:
        self._reap(block=True)
        self.is_alive()


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=200_000)
    ap.add_argument("--per-message", type=int, default=10)
    ap.add_argument("--probes", type=int, default=100)
    ap.add_argument("--database", default=os.environ.get("COLDCHAIN_BENCH_DATABASE_URL",
                                                          "postgresql://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--mqtt", default=None)
    ap.add_argument("--ingestors", default="1", help="ingestor commands sharing the stream ($share); a list "
                    "such as 1,2 runs once per entry (a fresh broker and database each) and compares them")
    ap.add_argument("--batch-size", type=int, default=None, help="`coldchain ingest --batch-size` (default: its own)")
    ap.add_argument("--processes", type=int, default=1, help="`coldchain ingest --processes N` for each command")
    ap.add_argument("--publisher", choices=("paho", "mosquitto_pub", "wire"), default="paho",
                    help="who publishes the stream: a Python paho process, one mosquitto_pub (C) per van, or "
                    "one Python process writing pre-built QoS 1 PUBLISH packets in bulk (wire_publisher)")
    args = ap.parse_args(argv)
    con = Console(stderr=True, width=max(Console(stderr=True).width, 110))
    runs = [int(n) for n in str(args.ingestors).split(",")]
    results = []
    for n in runs:
        args.ingestors = n
        results.append(_one(args, con))
    if len(results) > 1:
        from rich.table import Table

        table = Table(title=f"1 vs 2 ingestors on $share/ingest/{TOPIC_FILTER} ({args.per_message} per message)",
                      title_justify="left")
        for col in ("ingestors × processes", "published", "stored", "lost", "twice",
                    "samples/s", "ingest µs/sample", "pub/broker/PG µs", "load"):
            table.add_column(col, justify="right")
        for r in results:
            table.add_row(r["who"], f"{r['published']:,}", f"{r['stored']:,}", f"{r['lost']:,}", f"{r['twice']:,}",
                          f"{r['rate']:,.0f}", f"{r.get('cpu_us', 0):.0f}",
                          f"{r.get('pub_us', 0):.0f}/{r.get('broker_us') or 0:.0f}/{r.get('pg_us', 0):.0f}",
                          r["load"])
        con.print(table)
        first = results[0]["rate"]
        for r in results[1:]:
            con.print(f"{r['who']}: {r['rate'] / first:.2f}× the samples/s of {results[0]['who']}")
    return max(r["rc"] for r in results)


TOPIC_FILTER = "coldchain/v1/vehicles/+/telemetry"


def _one(args, con) -> dict:  # noqa: ANN001
    from benchmarks.throwaway import throwaway_database

    work = Path(tempfile.mkdtemp(prefix="coldchain-ingest-bench-"))
    broker = None
    url = args.mqtt
    if url is None:
        if not shutil.which("mosquitto"):
            con.print("[red]no mosquitto binary; pass --mqtt URL")
            return {"rc": 2, "who": "-", "published": 0, "stored": 0, "lost": 0, "twice": 0, "rate": 0, "load": "-"}
        broker, url = start_mosquitto(work)
    ingest: list[subprocess.Popen] = []
    try:
        with throwaway_database(args.database, "bench_ingest") as (db_url, engine):
            try:
                return _run(args, con, url, work, db_url, engine, ingest, broker.pid if broker else None)
            finally:
                for proc in ingest:
                    proc.send_signal(signal.SIGTERM)
                for proc in ingest:
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
    finally:
        if broker is not None:
            broker.terminate()
        if os.environ.get("BENCH_KEEP"):
            con.print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _run(args, con, url: str, work: Path, db_url: str, engine, ingest: list,  # noqa: ANN001
         broker_pid: int | None) -> dict:
    from rich.table import Table
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from fulfillment.scenario import load_scenario
    from telemetry.models import TelemetrySample
    from telemetry.service import reading_counts
    from warehouses import samplegen

    name = db_url.rsplit("/", 1)[-1]
    scenario = samplegen.synthetic(60, 10, date(2026, 11, 24), seed=3)
    samplegen.write_scenario(scenario, work / "scenario")

    with Session(engine) as session:
        load_scenario(session, work / "scenario")
        session.commit()
    vans = [(v["code"], v["device"]) for v in scenario.vehicles if v["device"]][:60]
    env = {**os.environ, "COLDCHAIN_DATABASE_URL": db_url, "COLDCHAIN_MQTT_URL": url,
           "COLDCHAIN_DATA_DIR": str(work)}
    shared = ["--shared-group", "ingest"] if args.ingestors > 1 else []
    shared += ["--processes", str(args.processes)]
    if args.batch_size:
        shared += ["--batch-size", str(args.batch_size)]
    ingest.extend(subprocess.Popen([sys.executable, "-m", "scripts.cli", "ingest", "--client-id", f"bench-{name}-{k}",
                                "--tick-every", "5", "--session-expiry", "300", *shared], env=env,
                               stdout=subprocess.DEVNULL,
                               stderr=open(work / f"ingest-{k}.log", "w"), cwd=ROOT)  # noqa: SIM115
              for k in range(args.ingestors))
    # a $share group holds nothing for members that have not joined: publish only once all have
    subscribers = args.ingestors * max(1, args.processes)
    deadline = time.monotonic() + 120
    while sum((work / f"ingest-{k}.log").read_text().count("subscribed to") for k in range(args.ingestors)) \
            < subscribers:
        if time.monotonic() > deadline or any(p.poll() is not None for p in ingest):
            con.print(f"[red]the ingestors did not all subscribe; see {work}/ingest-*.log (BENCH_KEEP=1 keeps it)")
            return {"rc": 2, "who": f"{args.ingestors} × {args.processes}", "published": args.samples, "stored": 0,
                    "lost": 0, "twice": 0, "rate": 0, "load": "-"}
        time.sleep(0.2)
    time.sleep(1)
    con.print(f"broker {url}; database {name}; {len(vans)} vans; publishing {args.samples:,} samples, "
              f"{args.per_message} per message")
    # the load's samples end an hour ago, so the probes' excursions are not mixed with them
    start = (datetime.now(UTC) - timedelta(hours=1, seconds=5 * (args.samples // len(vans) + 10))).isoformat()
    done: mp.Queue = mp.get_context("spawn").Queue()
    if args.publisher == "mosquitto_pub":
        pub = CPublisher(url, vans, args.samples, args.per_message, start, work)
    else:
        pub = mp.get_context("spawn").Process(target=wire_publisher if args.publisher == "wire" else publisher,
                                              args=(url, vans, args.samples, args.per_message, start, done))
    cpu_before = cpu_seconds([p.pid for p in ingest])
    backends = backend_pids(engine, name)
    others_before = pid_cpu(backends + ([broker_pid] if broker_pid else []))
    pub.start()
    stored = 0
    deadline = time.monotonic() + 600
    changed = time.monotonic()
    while stored < args.samples and time.monotonic() < deadline:
        time.sleep(0.1)
        with engine.connect() as conn:
            now_stored = conn.scalar(select(func.count()).select_from(TelemetrySample))
        if now_stored != stored:
            stored, changed = now_stored, time.monotonic()
        elif not pub.is_alive() and time.monotonic() - changed > 30:
            break  # published, and nothing more for 30 s: what is missing is lost (counted below)
    last_stored = time.time()
    load_at_end = os.getloadavg()
    ingest_cpu = cpu_seconds([p.pid for p in ingest]) - cpu_before
    backends = sorted(set(backends) | set(backend_pids(engine, name)))
    others_after = pid_cpu(backends + ([broker_pid] if broker_pid else []))
    pg_cpu = sum(others_after.get(p, 0.0) - others_before.get(p, 0.0) for p in backends)
    broker_cpu = (others_after.get(broker_pid, 0.0) - others_before.get(broker_pid, 0.0)) if broker_pid else None
    pub.join(60)
    if args.publisher == "mosquitto_pub":
        first_publish, publish_s, pub_cpu = pub.first, pub.seconds, pub.cpu
    else:
        first_publish, publish_s, pub_cpu = done.get(timeout=10)
    elapsed = last_stored - first_publish
    time.sleep(1)
    with engine.connect() as conn:
        final = conn.scalar(select(func.count()).select_from(TelemetrySample))
        counts = reading_counts(conn, (s for _van, batch in messages_of(vans, args.samples, args.per_message,
                                                                         start) for s in batch))
    latencies = probe_alerts(url, vans, args.probes)
    table = Table(title="ingestion, end to end", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("samples published", f"{args.samples:,} ({args.per_message} per message)")
    table.add_row("ingestor processes", f"{args.ingestors} × {args.processes}")
    table.add_row(f"publisher ({args.publisher}) finished after", f"{publish_s:.1f} s")
    table.add_row("samples stored", f"{final:,}")
    table.add_row("readings sent / stored", f"{counts.sent:,} / {counts.stored:,}")
    table.add_row("lost (readings sent, none stored)", f"{counts.lost:,}")
    table.add_row("stored twice (readings with a second row)", f"{counts.twice:,}")
    table.add_row("readings never sent", f"{counts.unexpected:,}")
    table.add_row("[bold]samples/s stored (first publish to last stored)", f"[bold]{final / elapsed:,.0f}")
    table.add_row("ingestors' CPU per sample (all their processes)",
                  f"{ingest_cpu / max(final, 1) * 1e6:.0f} µs = {max(final, 1) / max(ingest_cpu, 1e-9):,.0f} "
                  "samples per CPU-second")
    per = 1e6 / max(final, 1)
    table.add_row("CPU µs per sample: publisher / mosquitto / PostgreSQL backends",
                  f"{pub_cpu * per:.1f} / {'-' if broker_cpu is None else f'{broker_cpu * per:.1f}'} / "
                  f"{pg_cpu * per:.1f}")
    if latencies:
        q = statistics.quantiles(latencies, n=100, method="inclusive")
        table.add_row("alert latency p50 / p99 / max (ms)",
                      f"{q[49] * 1000:.0f} / {q[98] * 1000:.0f} / {max(latencies) * 1000:.0f}")
    table.add_row("alerts received", f"{len(latencies)} of {min(args.probes, len(vans))} probes")
    table.add_row("load average (1 / 5 min), 2 cores shared", f"{load_at_end[0]:.2f} / {load_at_end[1]:.2f}")
    con.print(table)
    figures = {"who": f"{args.ingestors} × {args.processes}", "published": args.samples, "stored": final,
               "cpu_us": ingest_cpu / max(final, 1) * 1e6, "pub_us": pub_cpu * per, "pg_us": pg_cpu * per,
               "broker_us": None if broker_cpu is None else broker_cpu * per,
               "lost": counts.lost, "twice": counts.twice, "rate": final / elapsed,
               "load": f"{load_at_end[0]:.1f}", "rc": 0}
    if not counts.ok or final != args.samples:
        con.print(f"[red]FAILED: {args.samples - final:,} samples missing; {counts}")
        figures["rc"] = 1
    return figures


def probe_alerts(url: str, vans: list[tuple[str, str]], probes: int) -> list[float]:
    """Publish a 16-minute excursion per probe and time its alert (publish → alert message received)."""
    sub = _client(url, "bench-alerts")
    got: dict[str, float] = {}
    lock = threading.Lock()

    def on_message(_c, _u, msg) -> None:  # noqa: ANN001
        alert = json.loads(msg.payload)
        if alert.get("kind") == "temperature":
            with lock:
                got.setdefault(alert["vehicle"], time.perf_counter())

    sub.on_message = on_message
    sub.subscribe("coldchain/v1/alerts/+", qos=1)
    time.sleep(1)
    pub = _client(url, "bench-probe")
    sent: dict[str, float] = {}
    now = datetime.now(UTC)
    for k in range(min(probes, len(vans))):
        van, device = vans[k % len(vans)]
        if van in sent:
            break
        start = now - timedelta(minutes=20)
        batch = [{"device": device, "seq": 10_000_000 + k * 100 + i, "ts": (start + timedelta(minutes=i)).isoformat(),
                  "temp_c": {"chilled": 12.0}} for i in range(17)]
        sent[van] = time.perf_counter()
        pub.publish(f"coldchain/v1/vehicles/{van}/telemetry", json.dumps(batch), qos=1).wait_for_publish(10)
        time.sleep(0.05)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(got) < len(sent):
        time.sleep(0.1)
    for c in (pub, sub):
        c.loop_stop()
        c.disconnect()
    return [got[v] - t for v, t in sent.items() if v in got]


if __name__ == "__main__":
    sys.exit(main())

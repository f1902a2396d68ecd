"""The exports auditors use: the FSMA 204 sortable spreadsheet (CSV), a GS1 EPCIS 2.0 JSON-LD document
and a PDF report, per order (``GET /api/v1/trace/orders/{order_ref}/export?format=epcis|fsma|pdf``,
CONTRACTS.md section 3), per lot (``GET /api/v1/trace/lots/{lot}/export?format=epcis|fsma|pdf``: the
recall's view) and per period (``GET /api/v1/trace/export?from=&to=&format=epcis|fsma``, streamed).

The exporters are pure functions of plain data: an order's trace (the dict of CONTRACTS.md section 3 that
``traceability.trace.order_trace`` returns: ``custody``, ``legs`` with ``readings``, ``door_openings``
and ``shocks``, ``spoilage_risk`` and ``breakage_risk``) or a custody list (``traceability.custody``'s
``event_views`` rows), plus a :class:`Directory` of the names, limits and places the rows name by code.
The functions that read the database are :func:`directory_for` and the entry points the API routes
and the CLI call: :func:`export_order`, :func:`export_lot` (with :func:`lot_bundle`), and
:func:`period_chunks` (a period read and written in batches, never whole).

Identifiers (EPCIS). The business has no GS1 company prefix, so nodes, compartments, devices, lots and
orders get HTTP URIs under ``ID_BASE`` (CBV 2.0 allows HTTP URIs for every identifier as long as the
organisation controls the domain): ``{ID_BASE}node/FS-01``, ``{ID_BASE}vehicle/VAN-01/compartment/chilled``,
``{ID_BASE}device/TL-0001``, a lot as a class-level id ``{ID_BASE}lot/EGG-30/L-E1`` (the role an LGTIN
plays: product and lot, not one item), ``{ID_BASE}order/A1``. ``ID_BASE`` is ``https://coldchain.example/id/``
(a reserved example domain) until the business names its own; a consumer's door is a ``geo:`` URI (RFC
5870) from the position the driver reported.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import tempfile
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlencode

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from core.errors import Invalid, NotFound
from core.settings import get_settings
from core.timeutil import local_datetime, utcnow
from fulfillment.models import Order
from telemetry.models import TelemetryReading
from telemetry.service import readings_query
from traceability import custody as custody_mod
from traceability.models import CustodyEvent
from warehouses.models import Node, Product, StockLot, Vehicle

ID_BASE = "https://coldchain.example/id/"
API_BASE = "https://coldchain.example"
FORMATS = ("fsma", "epcis", "pdf")
EPCIS_CONTEXT = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"


# ----------------------------------------------------------------------------- what the codes stand for


@dataclass
class Directory:
    """Names, limits and places behind the codes that custody rows carry (sku, node, lot, order)."""

    products: dict[str, dict] = field(default_factory=dict)  # sku -> name, temp_class, min_c, max_c, unit_kg
    nodes: dict[str, dict] = field(default_factory=dict)  # code -> name, kind, lat, lon
    lot_sources: dict[tuple[str, str], str] = field(default_factory=dict)  # (sku, lot) -> node that assigned it
    orders: dict[str, dict] = field(default_factory=dict)  # ref -> address, lat, lon
    devices: dict[str, str | None] = field(default_factory=dict)  # vehicle code -> its logger
    vehicle_codes: dict[int, str] = field(default_factory=dict)  # vehicle id -> code (a return names the id)

    def returned_from(self, e: dict) -> tuple[str | None, str | None]:
        """The van and compartment a returned line came off: custody keeps the vehicle's id in its data."""
        data = e.get("data") or {}
        van = data.get("from_vehicle")
        return (self.vehicle_codes.get(van, str(van)) if isinstance(van, int) else van), data.get("from_compartment")

    def product_name(self, sku: str | None) -> str:
        return (self.products.get(sku or "") or {}).get("name") or (sku or "")

    def band(self, skus: Iterable[str | None]) -> tuple[float | None, float | None]:
        """The tightest allowed range of these products: the highest minimum and the lowest maximum."""
        found = [self.products[s] for s in skus if s in self.products]
        mins = [p["min_c"] for p in found if p.get("min_c") is not None]
        maxes = [p["max_c"] for p in found if p.get("max_c") is not None]
        return (max(mins) if mins else None, min(maxes) if maxes else None)

    def node_text(self, code: str | None) -> str:
        """An FSMA "location description": the business name, its code and where it is."""
        node = self.nodes.get(code or "")
        if node is None:
            return code or ""
        return f"{node['name']} ({code}), {node['lat']:.5f}, {node['lon']:.5f}"


def directory_for(session: Session, custody: Sequence[dict]) -> Directory:
    """Everything the custody rows name, read in one query per table."""
    skus = {e["sku"] for e in custody if e.get("sku")}
    lots = {e["lot"] for e in custody if e.get("lot")}
    refs = {e["order_ref"] for e in custody if e.get("order_ref")}
    vans = {e["vehicle"] for e in custody if e.get("vehicle")}
    d = Directory()
    for p in session.scalars(select(Product).where(Product.sku.in_(skus))) if skus else ():
        d.products[p.sku] = {"name": p.name, "temp_class": p.temp_class, "min_c": p.min_c, "max_c": p.max_c,
                             "unit_kg": p.unit_kg, "fragile": p.fragile}
    if lots:
        rows = session.execute(select(Product.sku, StockLot.lot, Node.code)
                               .join(Product, Product.id == StockLot.product_id)
                               .join(Node, Node.id == StockLot.node_id).where(StockLot.lot.in_(lots))
                               .order_by(StockLot.id)).all()
        for sku, lot, node in rows:
            d.lot_sources.setdefault((sku, lot), node)
    for e in custody:  # a lot's first receipt names the node that assigned its code, if the stock row moved on
        if e["type"] == "received" and e.get("node"):
            d.lot_sources.setdefault((e["sku"], e["lot"]), e["node"])
    codes = {e["node"] for e in custody if e.get("node")} | set(d.lot_sources.values())
    for n in session.scalars(select(Node).where(Node.code.in_(codes))) if codes else ():
        d.nodes[n.code] = {"name": n.name, "kind": n.kind, "lat": n.lat, "lon": n.lon}
    for o in session.scalars(select(Order).where(Order.ref.in_(refs))) if refs else ():
        d.orders[o.ref] = {"address": o.address, "lat": o.lat, "lon": o.lon}
    ids = {(e.get("data") or {}).get("from_vehicle") for e in custody if e["type"] == "returned"} - {None}
    for vid, code, device in session.execute(select(Vehicle.id, Vehicle.code, Vehicle.device)
                                             .where(or_(Vehicle.code.in_(vans), Vehicle.id.in_(ids)))):
        d.devices[code], d.vehicle_codes[vid] = device, code
    return d


# ----------------------------------------------------------------------------- small helpers


def _t(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _local(moment: datetime) -> datetime:
    return moment.astimezone(get_settings().tz)


def _offset(moment: datetime) -> str:
    """±HH:MM of the business zone at that moment (EPCIS eventTimeZoneOffset)."""
    text = _local(moment).strftime("%z")
    return f"{text[:3]}:{text[3:]}"


def _event_time(moment: datetime) -> str:
    return _local(moment).isoformat(timespec="milliseconds")


def _id(base: str, *parts: object) -> str:
    return base + "/".join(quote(str(p), safe="") for p in parts)


def temperatures(leg: dict) -> list[tuple[datetime, float]]:
    """The leg's temperature readings as (time, °C), in time order."""
    out = [(_t(r["ts"]), float(r["value"])) for r in leg.get("readings", ())
           if r.get("kind", "temperature") == "temperature" and r.get("value") is not None]
    return sorted(out, key=lambda x: x[0])


def excursions(readings: Sequence[tuple[datetime, float]], band: tuple[float | None, float | None],
               end: datetime | None = None) -> list[dict]:
    """Runs of readings outside the band: each from its first reading outside until the next one inside (or
    the leg's end), with its peak. The same sample-and-hold view as traceability.risk."""
    lo, hi = band
    runs: list[dict] = []
    current: dict | None = None
    for at, value in readings:
        side = "above" if hi is not None and value > hi else "below" if lo is not None and value < lo else None
        if current is not None and side != current["side"]:
            current["to"] = at
            runs.append(current)
            current = None
        if side is not None and current is None:
            current = {"side": side, "from": at, "to": None, "peak": value, "peak_at": at,
                       "bound": hi if side == "above" else lo}
        elif side is not None and current is not None:
            worse = value > current["peak"] if side == "above" else value < current["peak"]
            if worse:
                current["peak"], current["peak_at"] = value, at
    if current is not None:
        current["to"] = end or (readings[-1][0] if readings else current["from"])
        runs.append(current)
    for run in runs:
        run["minutes"] = max((run["to"] - run["from"]).total_seconds() / 60, 0.0)
    return runs


def _leg_skus(leg: dict) -> list[str]:
    return [ln["sku"] for ln in leg.get("lines", ()) if ln.get("sku")] or ([leg["sku"]] if leg.get("sku") else [])


# ----------------------------------------------------------------------------- FSMA 204 sortable spreadsheet

FSMA_COLUMNS = (
    "Critical tracking event", "FSMA 204 scope", "Traceability lot code", "Traceability lot code source",
    "TLC source reference", "Product description", "SKU", "Quantity", "Unit of measure", "Ship-from location",
    "Ship-from location ID", "Ship-to or receiving location", "Ship-to or receiving location ID", "Event date",
    "Event time", "Reference document type", "Reference document number", "Order", "Vehicle", "Compartment",
    "Recorded by", "Custody record", "Note")
FSMA_KDES = FSMA_COLUMNS[2:17]  # the key data elements of 21 CFR 1.1340(a) and 1.1345(a), every row has all
CTE_RECEIVING = "CTE: receiving, 21 CFR 1.1345"
CTE_SHIPPING = "CTE: shipping, 21 CFR 1.1340"
EXTENSION = "business extension: not a CTE (last mile to the consumer)"


def fsma_rows(custody: Sequence[dict], directory: Directory, seen: set[tuple] | None = None) -> list[dict]:
    """One row per critical tracking event with its key data elements, then the business's own rows.

    CTEs (21 CFR 1 subpart S): receiving at a node (1.1345) and shipping between the business's own nodes
    (1.1340; intracompany shipments count, direct-to-consumer sales do not). Custody has no transfer row of
    its own: a line whose lot was assigned at one node and loaded into a van at another went from the
    first to the second, so that pair yields a shipping and a receiving row, dated when it was loaded (the
    transfer's own time is not recorded; the note says so). Loading, delivery to the consumer, failed
    attempts, returns to a node and disposal are outside the rule and marked ``EXTENSION`` in the scope
    column: a recall still needs them. Picking is internal and not listed.

    The traceability lot code's source is the node that assigned the code (the lot is kept per node), and
    the location the goods came from before their receipt is named as custody knows it (a scenario load
    names no supplier: the row says so rather than leaving the KDE empty).

    ``seen``: the transfers already listed, shared between the batches of one streamed sheet.
    """
    rows: list[dict] = []
    seen_transfer: set[tuple] = seen if seen is not None else set()
    for e in custody:
        kind = e["type"]
        if kind == "picked":
            continue
        at = _t(e["at"])
        source = directory.lot_sources.get((e.get("sku"), e.get("lot")), e.get("node") if kind == "received" else None)
        base = {
            "Traceability lot code": e.get("lot") or "", "Traceability lot code source": directory.node_text(source),
            "TLC source reference": _id(ID_BASE, "node", source) if source else "",
            "Product description": f"{directory.product_name(e.get('sku'))} ({e.get('sku')})",
            "SKU": e.get("sku") or "", "Quantity": e.get("qty"), "Unit of measure": "each",
            "Event date": _local(at).date().isoformat(), "Event time": _local(at).strftime("%H:%M:%S%z"),
            "Order": e.get("order_ref") or "", "Vehicle": e.get("vehicle") or "",
            "Compartment": e.get("compartment") or "", "Recorded by": e.get("actor") or "",
            "Custody record": e.get("id") or "", "Note": e.get("reason") or "",
        }
        order = directory.orders.get(e.get("order_ref") or "", {})
        consumer = (f"consumer of order {e.get('order_ref')}: {order.get('address') or 'address not given'}"
                    + (f", {e['position'][0]:.5f}, {e['position'][1]:.5f}" if e.get("position") else ""))
        van = f"{e.get('vehicle')} {e.get('compartment')} compartment" if e.get("vehicle") else ""
        doc = _document(e)
        if kind == "received":
            src = (e.get("data") or {}).get("source") or "not recorded"
            rows.append({**base, "Critical tracking event": "Receiving", "FSMA 204 scope": CTE_RECEIVING,
                         "Ship-from location": f"supplier not recorded (stock entered by {src} load)",
                         "Ship-from location ID": f"source:{src}",
                         "Ship-to or receiving location": directory.node_text(e.get("node")),
                         "Ship-to or receiving location ID": e.get("node") or "", **doc})
            continue
        if kind == "loaded" and source and e.get("node") and source != e["node"]:
            key = (e.get("order_ref"), e.get("line_no"), e.get("lot"), e["node"])
            if key not in seen_transfer:
                seen_transfer.add(key)
                note = (f"transfer {source} → {e['node']} inferred from custody (lot of {source} loaded at "
                        f"{e['node']}); dated when loaded, the transfer's own time is not recorded")
                moved = {"Ship-from location": directory.node_text(source), "Ship-from location ID": source,
                         "Ship-to or receiving location": directory.node_text(e["node"]),
                         "Ship-to or receiving location ID": e["node"], "Reference document type": "custody record",
                         "Reference document number":
                             f"transfer {e.get('order_ref')}/{e.get('line_no')}/{e.get('lot')}",
                         "Note": note, "Vehicle": "", "Compartment": ""}
                rows.append({**base, **moved, "Critical tracking event": "Shipping", "FSMA 204 scope": CTE_SHIPPING})
                rows.append({**base, **moved, "Critical tracking event": "Receiving", "FSMA 204 scope": CTE_RECEIVING})
        where = {
            "loaded": ("Loading into a van", directory.node_text(e.get("node")), e.get("node"), van, e.get("vehicle")),
            "delivered": ("Delivery to the consumer", van, e.get("vehicle"), consumer, _id(ID_BASE, "order",
                                                                                             e.get("order_ref"))),
            "failed": ("Failed delivery attempt (goods stay aboard)", van, e.get("vehicle"), van, e.get("vehicle")),
            "returned": ("Return to a node", "van {} {} compartment".format(*directory.returned_from(e)),
                         directory.returned_from(e)[0], directory.node_text(e.get("node")), e.get("node")),
            "disposed": ("Disposal", directory.node_text(e.get("node")) or van, e.get("node") or e.get("vehicle"),
                         "destroyed", "destroyed"),
        }.get(kind)
        if where is None:
            continue
        name, src_text, src_id, dst_text, dst_id = where
        rows.append({**base, "Critical tracking event": name, "FSMA 204 scope": EXTENSION,
                     "Ship-from location": src_text or "", "Ship-from location ID": str(src_id or ""),
                     "Ship-to or receiving location": dst_text or "",
                     "Ship-to or receiving location ID": str(dst_id or ""),
                     **doc})
    return rows


def _document(e: dict) -> dict:
    """The reference document type and number: the pick list, the route stop, else the custody record."""
    data = e.get("data") or {}
    if e["type"] in ("loaded", "delivered", "failed") and e.get("stop_id"):
        kind = {"loaded": "route manifest (stop)", "delivered": "proof of delivery (stop)",
                "failed": "delivery attempt record (stop)"}[e["type"]]
        return {"Reference document type": kind, "Reference document number": e["stop_id"]}
    if data.get("document"):
        return {"Reference document type": "pick list", "Reference document number": data["document"]}
    number = f"custody {e['id']}" if e.get("id") else f"{e['type']} {e.get('lot')} {e.get('at')}"
    return {"Reference document type": "custody record (audit log)", "Reference document number": number}


def fsma_csv(rows: Sequence[dict], *, header: bool = True) -> bytes:
    """The rows as a CSV file: UTF-8 with a byte-order mark, a header row, CRLF line ends.

    Why the BOM: Excel, which most auditors open a .csv with, reads a CSV without one in the machine's ANSI
    code page (cp1252, or GBK on Chinese Windows), so every 土鸡蛋 turns to mojibake; with the BOM it reads
    UTF-8. LibreOffice, pandas and Python's csv (``encoding="utf-8-sig"``) read both; the cost is three
    bytes a naive reader shows before the first header. CRLF is RFC 4180's line end.
    """
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FSMA_COLUMNS, lineterminator="\r\n", extrasaction="raise")
    if header:
        writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in FSMA_COLUMNS})
    return (("\ufeff" if header else "") + out.getvalue()).encode("utf-8")


# ----------------------------------------------------------------------------- EPCIS 2.0

_CUSTODY_STEP = {
    # custody type: (bizStep, disposition), CBV 2.0 bare names
    "received": ("receiving", "sellable_not_accessible"),  # in the node's cold room, not yet for sale
    "picked": ("picking", "in_progress"),
    "loaded": ("departing", "in_transit"),  # the ObjectEvent of the van leaving; the AggregationEvent says loading
    "failed": ("arriving", "in_transit"),  # at the door, nobody took it: still in the van
    "delivered": ("retail_selling", "retail_sold"),  # the retailer hands it to the consumer
    "returned": ("receiving", "returned"),
    "disposed": ("destroying", "destroyed"),
}


def epcis_document(trace: dict, directory: Directory, *, id_base: str = ID_BASE, api_base: str = API_BASE,
                   created: datetime | None = None) -> dict:
    """The order's custody and temperature history as an EPCIS 2.0 JSON-LD document, events in time order.

    Per custody step an ObjectEvent (CBV bizSteps ``receiving``, ``picking``, ``departing``, ``arriving``
    for a failed attempt, ``retail_selling`` at the door, ``destroying``); loading into a compartment is
    also an AggregationEvent (ADD, bizStep ``loading``, parentID the compartment, the lines as
    childQuantityList) that delivery or return undoes (DELETE, ``unloading``). Each leg adds an ObjectEvent
    (``transporting``, at the leg's end) whose sensorElementList gives the van's logger (deviceID), the
    interval, and a ``gs1:Temperature`` report in CEL with the minimum, maximum and mean (arithmetic, over
    the readings). An excursion puts ``"exception": "ALARM_CONDITION"`` on that report and adds one report
    per excursion (its peak, its start time, a stringValue in words). Raw readings are not dumped, as
    GS1's guideline asks: ``rawData`` points at the readings API for the leg's interval.
    """
    created = created or utcnow()
    ctx = [EPCIS_CONTEXT, {"cc": id_base + "vocab#"}]
    events: list[tuple[datetime, int, dict]] = []
    order_ref = trace.get("order_ref")  # None for a lot's or a period's document: each event names its own

    def pos(*refs: str | None) -> list[dict]:
        return [{"type": "po", "bizTransaction": _id(id_base, "order", r)}
                for r in dict.fromkeys(r for r in (order_ref, *refs) if r)]

    def add(at: datetime, rank: int, body: dict) -> None:
        # a stable id: the same record exported twice is the same event to the receiving repository
        key = json.dumps([order_ref, body], sort_keys=True, default=str)
        body.setdefault("eventID", f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, key)}")
        events.append((at, rank, body))

    def place(e: dict) -> str:
        if e.get("node"):
            return _id(id_base, "node", e["node"])
        if e.get("vehicle"):
            return _id(id_base, "vehicle", e["vehicle"], "compartment", e.get("compartment") or "")
        return _id(id_base, "order", e.get("order_ref") or order_ref)

    for e in trace.get("custody", ()):
        po = pos(e.get("order_ref"))
        at = _t(e["at"])
        step, disposition = _CUSTODY_STEP[e["type"]]
        qty = [{"epcClass": _id(id_base, "lot", e["sku"], e["lot"]), "quantity": e["qty"], "uom": "H87"}]
        read_point = place(e)
        if e["type"] in ("delivered", "failed") and e.get("position"):
            read_point = f"geo:{e['position'][0]:.6f},{e['position'][1]:.6f}"
        body = {"type": "ObjectEvent", "eventTime": _event_time(at), "eventTimeZoneOffset": _offset(at),
                "action": "DELETE" if e["type"] == "disposed" else "OBSERVE", "bizStep": step,
                "disposition": disposition, "quantityList": qty, "readPoint": {"id": read_point}}
        if e["type"] == "delivered":
            body["bizLocation"] = {"id": _id(id_base, "order", e.get("order_ref") or order_ref, "destination")}
        elif e["type"] != "failed" and e["type"] != "disposed":
            body["bizLocation"] = {"id": place(e)}
        if po and e["type"] != "received":
            body["bizTransactionList"] = po
        if e["type"] == "loaded":
            body["destinationList"] = [{"type": "location", "destination": _id(
                id_base, "order", e.get("order_ref") or order_ref, "destination")}]
        if e.get("reason"):
            body["cc:reason"] = e["reason"]
        if e.get("id"):
            body["cc:custodyRecord"] = _id(id_base, "custody", e["id"])
        add(at, 1, body)
    # loading into a compartment, and out again, as aggregations (one per compartment and moment)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for e in trace.get("custody", ()):
        if e["type"] == "loaded" and e.get("vehicle"):
            groups[("ADD", e["at"], e["vehicle"], e.get("compartment"), e.get("node"))].append(e)
        elif e["type"] in ("delivered", "returned"):
            van, cls = (e.get("vehicle"), e.get("compartment")) if e["type"] == "delivered" else \
                directory.returned_from(e)
            if van:
                groups[("DELETE", e["at"], van, cls, e.get("node"))].append(e)
    for (action, at_text, van, cls, node), members in groups.items():
        at = _t(at_text)
        body = {"type": "AggregationEvent", "eventTime": _event_time(at), "eventTimeZoneOffset": _offset(at),
                "parentID": _id(id_base, "vehicle", van, "compartment", cls or ""),
                "childQuantityList": [{"epcClass": _id(id_base, "lot", m["sku"], m["lot"]), "quantity": m["qty"],
                                       "uom": "H87"} for m in members],
                "action": action, "bizStep": "loading" if action == "ADD" else "unloading",
                "disposition": "in_transit" if action == "ADD" else
                ("returned" if members[0]["type"] == "returned" else "retail_sold"),
                "readPoint": {"id": _id(id_base, "node", node) if node else
                              _id(id_base, "vehicle", van, "compartment", cls or "")}}
        po = pos(*(m.get("order_ref") for m in members))
        if po:
            body["bizTransactionList"] = po
        add(at, 0 if action == "ADD" else 2, body)
    for leg in trace.get("legs", ()):
        ev = leg_sensor_event(leg, directory, id_base=id_base, api_base=api_base, now=created)
        if ev is not None:
            po = pos(*leg.get("orders", ()))
            if po:
                ev["bizTransactionList"] = po
            add(_t(ev["eventTime"]), 0, ev)
    events.sort(key=lambda x: (x[0], x[1]))
    return {"@context": ctx, "type": "EPCISDocument", "schemaVersion": "2.0",
            "creationDate": created.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "epcisBody": {"eventList": [body for _at, _rank, body in events]}}


def leg_sensor_event(leg: dict, directory: Directory, *, id_base: str = ID_BASE, api_base: str = API_BASE,
                     now: datetime | None = None) -> dict | None:
    """The ``transporting`` ObjectEvent of one leg with its aggregated temperature report (None: no lines)."""
    skus = _leg_skus(leg)
    if not skus:
        return None
    start = _t(leg.get("from"))
    end = _t(leg.get("to")) or _t(leg.get("assessed_at")) or now or utcnow()
    readings = temperatures(leg)
    band = directory.band(skus)
    van, cls = leg.get("vehicle"), leg.get("compartment")
    device = leg.get("device") or directory.devices.get(van or "")
    meta = {"startTime": _z(start), "endTime": _z(end),
            "rawData": f"{api_base}/api/v1/telemetry/vehicles/{quote(van or '', safe='')}/readings?"
                       + urlencode({"from": _z(start), "to": _z(end), "kind": "temperature", "compartment": cls or ""}),
            "dataProcessingMethod": id_base + "vocab#arithmeticMeanOfReadings"}
    if device:
        meta["deviceID"] = _id(id_base, "device", device)
    if band != (None, None):
        meta["bizRules"] = _id(id_base, "limits", f"{_num(band[0])}..{_num(band[1])}CEL")
    reports: list[dict] = []
    if readings:
        values = [v for _at, v in readings]
        summary = {"type": "gs1:Temperature", "uom": "CEL", "minValue": min(values), "maxValue": max(values),
                   "meanValue": round(statistics.fmean(values), 3)}
        if len(values) > 1:
            summary["sDev"] = round(statistics.stdev(values), 3)
        runs = excursions(readings, band, end)
        if runs:
            summary["exception"] = "ALARM_CONDITION"
        reports.append(summary)
        for run in runs:
            reports.append({"type": "gs1:Temperature", "exception": "ALARM_CONDITION", "uom": "CEL",
                            "value": run["peak"], "time": _z(run["peak_at"]),
                            "uriValue": f"{id_base}vocab#temperature{run['side'].title()}Limit",
                            "stringValue": f"{run['minutes']:.0f} min {run['side']} {_num(run['bound'])} °C from "
                                           f"{_local(run['from']):%H:%M} (peak {run['peak']:.1f} °C)"})
    else:
        reports.append({"type": "gs1:Temperature", "uom": "CEL", "exception": "ERROR_CONDITION",
                        "stringValue": "no temperature reading for the time aboard"})
    compartment = _id(id_base, "vehicle", van or "", "compartment", cls or "")
    return {"type": "ObjectEvent", "eventTime": _event_time(end), "eventTimeZoneOffset": _offset(end),
            "action": "OBSERVE", "bizStep": "transporting", "disposition": "in_transit",
            "quantityList": [{"epcClass": _id(id_base, "lot", ln["sku"], ln.get("lot") or ""), "quantity": ln.get("qty")
                              or 0, "uom": "H87"} for ln in leg.get("lines", ()) if ln.get("sku")],
            "readPoint": {"id": compartment}, "bizLocation": {"id": compartment},
            "sensorElementList": [{"sensorMetadata": meta, "sensorReport": reports}]}


def _z(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


# ----------------------------------------------------------------------------- PDF

_font_lock = threading.Lock()
_font_family: list[str] = []


def chart_font() -> str:
    """Register the PDFs' embedded font (core.pdf.font_path()) with matplotlib once; its family name."""
    from matplotlib import font_manager

    from core.pdf import font_path

    with _font_lock:
        if not _font_family:
            path = str(font_path())
            font_manager.fontManager.addfont(path)
            # matplotlib takes a collection's first face: WenQuanYi Micro Hei, the one core.pdf embeds
            _font_family.append(font_manager.FontProperties(fname=path).get_name())
    return _font_family[0]


def leg_chart_png(leg: dict, directory: Directory, *, dpi: int = 150, now: datetime | None = None) -> bytes:
    """A leg's temperature over time: the allowed band shaded green, excursions red, door openings and
    shocks marked. matplotlib's object API (no pyplot), so API threads do not share a figure."""
    from matplotlib.dates import DateFormatter
    from matplotlib.figure import Figure

    family = chart_font()
    tz = get_settings().tz
    readings = temperatures(leg)
    start = _t(leg.get("from"))
    end = _t(leg.get("to")) or _t(leg.get("assessed_at")) or now or (readings[-1][0] if readings else start)
    band = directory.band(_leg_skus(leg))
    fig = Figure(figsize=(7.2, 2.6), dpi=dpi)
    ax = fig.add_subplot()
    for text in (ax.title, ax.xaxis.label, ax.yaxis.label):
        text.set_family(family)
    lo, hi = band
    if lo is not None or hi is not None:
        values = [v for _a, v in readings] or [0.0]
        bottom = lo if lo is not None else min(values) - 5
        top = hi if hi is not None else max(values) + 5
        ax.axhspan(bottom, top, color="#2e7d32", alpha=0.12, label=f"允许范围 {_num(lo)} 至 {_num(hi)} °C")
    for run in excursions(readings, band, end):
        ax.axvspan(run["from"], run["to"], color="#c62828", alpha=0.25)
    if readings:
        ax.plot([a for a, _v in readings], [v for _a, v in readings], color="#1565c0", linewidth=1.2, label="温度")
    for door in leg.get("door_openings", ()):
        opened = _t(door.get("opened"))
        if opened is not None:
            ax.axvline(opened, color="#ef6c00", linestyle="--", linewidth=0.9)
            ax.annotate("门开", (opened, 0.97), xycoords=("data", "axes fraction"), xytext=(3, 0),
                        textcoords="offset points", fontsize=7, family=family, color="#ef6c00", ha="left",
                        va="top")
    for shock in leg.get("shocks", ()):
        at = _t(shock.get("ts"))
        if at is not None:
            ax.plot([at], [1.0], marker="v", color="#6a1b9a", transform=ax.get_xaxis_transform(), clip_on=False)
            ax.annotate(f"震动 {float(shock['value']):.1f} g", (at, 0.93), xycoords=("data", "axes fraction"),
                        fontsize=7, family=family, color="#6a1b9a", ha="center", va="top")
    if start and end and end > start:
        ax.set_xlim(start, end)
    ax.xaxis.set_major_formatter(DateFormatter("%H:%M", tz=tz))
    names = "、".join(dict.fromkeys(directory.product_name(s) for s in _leg_skus(leg)))
    ax.set_title(f"{leg.get('vehicle')} {_CLASS_ZH.get(leg.get('compartment') or '', leg.get('compartment'))}"
                 f"（{names}）", fontsize=9, family=family)
    ax.set_ylabel("°C", family=family)
    ax.grid(True, alpha=0.3)
    if readings:
        ax.legend(loc="lower right", prop={"family": family, "size": 7})
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


_CLASS_ZH = {"frozen": "冷冻舱", "chilled": "冷藏舱", "ambient": "常温舱"}
_TYPE_ZH = {"received": "入库", "picked": "拣货", "loaded": "装车", "delivered": "签收", "failed": "投递失败",
            "returned": "退回", "disposed": "销毁"}
_LEVEL_ZH = {"ok": "正常", "watch": "关注", "at_risk": "有风险", "reject": "拒收"}


class _Kit:
    """The report's styles, in core.pdf's embedded font (one set per document)."""

    def __init__(self) -> None:
        from core.pdf import paragraph_style, styles

        sheet = styles()
        self.h1 = paragraph_style("h1", sheet["Title"], fontSize=16)
        self.h2 = paragraph_style("h2", sheet["Heading2"], fontSize=12, keepWithNext=1)
        self.h3 = paragraph_style("h3", sheet["Heading3"], fontSize=10, keepWithNext=1)
        self.body = paragraph_style("body", sheet["BodyText"], fontSize=9, leading=12)
        self.small = paragraph_style("small", sheet["BodyText"], fontSize=7.5, leading=9.5)

    def p(self, text: object, style: str = "body"):  # noqa: ANN201 - a reportlab Paragraph
        from reportlab.platypus import Paragraph

        from core.pdf import escape

        return Paragraph(escape(text), getattr(self, style))

    def grid(self, head: Sequence[str], rows: Iterable[Sequence[object]], widths_mm: Sequence[float]):  # noqa: ANN201
        """A table with a shaded header row repeated on every page, every cell a wrapped Paragraph."""
        from reportlab.lib import colors
        from reportlab.lib.units import mm
        from reportlab.platypus import Table

        from core.pdf import table_style

        data = [[self.p(h, "small") for h in head]] + [[self.p(x, "small") for x in row] for row in rows]
        return Table(data, colWidths=[w * mm for w in widths_mm], repeatRows=1, style=table_style(
            ("GRID", (0, 0), (-1, -1), 0.3, colors.grey), ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e3f2fd")),
            ("VALIGN", (0, 0), (-1, -1), "TOP"), size=7.5))

    def facts(self, pairs: Sequence[tuple[str, str]]):  # noqa: ANN201
        from reportlab.lib.units import mm
        from reportlab.platypus import Table

        from core.pdf import table_style

        return Table([[self.p(k, "small"), self.p(v)] for k, v in pairs], colWidths=[35 * mm, 140 * mm],
                     style=table_style(size=8))


def _risk_story(kit: _Kit, trace: dict, heading: str = "h2") -> list:
    out: list = []
    for title, key in (("变质风险 Spoilage risk", "spoilage_risk"), ("破损风险 Breakage risk", "breakage_risk")):
        risk = trace.get(key) or {}
        level = risk.get("level", "—")
        out.append(kit.p(f"{title}: {_LEVEL_ZH.get(level, level)} ({level})", heading))
        out += [kit.p("• " + reason) for reason in risk.get("reasons", ()) or ["—"]]
    return out


def _legs_story(kit: _Kit, legs: Sequence[dict], directory: Directory, now: datetime | None) -> list:
    """A chart per leg (band green, excursions red, doors and shocks marked) with its figures in words."""
    from reportlab.lib.units import mm
    from reportlab.platypus import Image, Spacer

    out: list = []
    for leg in legs:
        png = leg_chart_png(leg, directory, now=now)
        out.append(Image(io.BytesIO(png), width=175 * mm, height=175 * mm * 2.6 / 7.2))
        readings = temperatures(leg)
        runs = excursions(readings, directory.band(_leg_skus(leg)), _t(leg.get("to")) or now)
        lines = "；".join(f"{directory.product_name(ln.get('sku'))} × {ln.get('qty')}（批次 {ln.get('lot')}）"
                         for ln in leg.get("lines", ()))
        orders = f"订单 {'、'.join(leg['orders'])}：" if leg.get("orders") else ""
        text = (f"{leg.get('vehicle')} / {leg.get('device') or '—'} / "
                f"{_CLASS_ZH.get(leg.get('compartment') or '', leg.get('compartment'))}："
                f"{_hm(leg.get('from'))}–{_hm(leg.get('to')) if leg.get('to') else '在途'}，{len(readings)} 条读数"
                + (f"，最低 {min(v for _a, v in readings):.1f} °C，最高 {max(v for _a, v in readings):.1f} °C"
                   if readings else "") + f"。{orders}{lines}")
        out.append(kit.p(text, "small"))
        out += [kit.p(f"超温 excursion: {_local(run['from']):%H:%M}–{_local(run['to']):%H:%M}，"
                      f"{run['minutes']:.0f} 分钟{'高于' if run['side'] == 'above' else '低于'} "
                      f"{_num(run['bound'])} °C，峰值 {run['peak']:.1f} °C", "small") for run in runs]
        out.append(Spacer(1, 3 * mm))
    return out


def _custody_story(kit: _Kit, custody: Sequence[dict], directory: Directory, with_order: bool = False) -> list:
    head = ["时间 Time", "环节 Step", "商品 Product", "批次 Lot", "数量 Qty", "地点 Where", "经手 By", "备注 Note"]
    widths = [20, 24, 28, 18, 12, 40, 17, 26]
    if with_order:
        head, widths = [*head[:4], "订单 Order", *head[4:]], [22, 22, 22, 14, 14, 10, 34, 15, 22]
    rows = []
    for e in custody:
        where = e.get("node") or (f"{e.get('vehicle')} {_CLASS_ZH.get(e.get('compartment') or '', '')}"
                                  if e.get("vehicle") else "")
        if e.get("position"):
            where += f" ({e['position'][0]:.4f}, {e['position'][1]:.4f})"
        row = [f"{_local(_t(e['at'])):%m-%d %H:%M}", f"{_TYPE_ZH.get(e['type'], e['type'])} {e['type']}",
               directory.product_name(e.get("sku")), e.get("lot"), e.get("qty"), where, e.get("actor"),
               e.get("reason") or ""]
        if with_order:
            row.insert(4, e.get("order_ref") or "")
        rows.append(row)
    return [kit.grid(head, rows, widths)]


def _build_pdf(story: list, title: str) -> bytes:
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import mm

    from core.pdf import document

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "report.pdf"
        doc = document(path, pagesize=A4, leftMargin=15 * mm, rightMargin=15 * mm, topMargin=15 * mm,
                       bottomMargin=15 * mm, title=title, author="coldchain")
        doc.build(story)
        return path.read_bytes()


def order_pdf(trace: dict, directory: Directory, *, now: datetime | None = None) -> bytes:
    """The order's report: risk with reasons, a temperature chart per leg, the custody timeline as a table.

    Headings are Chinese with the English term beside them (the quality team reads Chinese, an auditor
    abroad may not); data stays as recorded. Set in core.pdf's embedded font, charts drawn by
    :func:`leg_chart_png` in the same font.
    """
    kit = _Kit()
    ref = trace.get("order_ref")
    story: list = [kit.p(f"订单追溯报告 Order trace report — {ref}", "h1")]
    order = directory.orders.get(ref or "", {})
    skus = list(dict.fromkeys(e["sku"] for e in trace.get("custody", ()) if e.get("sku")))
    story.append(kit.facts([("送货地址 Address", order.get("address") or trace.get("address") or "—"),
                            ("商品 Products", "；".join(f"{directory.product_name(s)} ({s})" for s in skus) or "—"),
                            ("生成时间 Generated", f"{_local(now or utcnow()):%Y-%m-%d %H:%M %Z}")]))
    story += _risk_story(kit, trace)
    story.append(kit.p("温度记录 Temperature per leg", "h2"))
    if not trace.get("legs"):
        story.append(kit.p("尚未装车：没有温度记录。Not yet aboard a van: no temperature history."))
    story += _legs_story(kit, trace.get("legs", ()), directory, now)
    story.append(kit.p("交接记录 Custody timeline", "h2"))
    story += _custody_story(kit, trace.get("custody", ()), directory)
    return _build_pdf(story, f"Order trace {ref}")


def lot_pdf(bundle: dict, directory: Directory, *, now: datetime | None = None) -> bytes:
    """A lot's report, for a recall: every order and customer the lot went into (with phone and address),
    where the rest of it is (on hand per node, promised, aboard vans, delivered, disposed), its holds,
    each order's spoilage and breakage risk with reasons, a temperature chart per leg the lot rode
    (band and excursions shaded), and the lot's custody timeline. ``bundle``: :func:`lot_bundle`."""
    kit = _Kit()
    lot = bundle["lot"]
    totals = bundle["remainder"]["totals"]
    story: list = [kit.p(f"批次追溯报告 Lot trace report — {lot}", "h1")]
    holds = [h for h in bundle.get("holds", ()) if h.get("active")]
    story.append(kit.facts([
        ("商品 Products", "；".join(f"{directory.product_name(s)} ({s})" for s in bundle.get("skus", ())) or "—"),
        ("质量冻结 Hold", "；".join(f"冻结中 on hold: {h['reason']}（{h['held_by']}）" for h in holds) or "无 none"),
        ("数量 Quantities", f"入库 received {totals['received']}，在库 on hand {totals['on_hand']}（已承诺 reserved "
                           f"{totals['reserved']}），在车 aboard {totals['aboard']}，已签收 delivered "
                           f"{totals['delivered']}，销毁 disposed {totals['disposed']}"),
        ("生成时间 Generated", f"{_local(now or utcnow()):%Y-%m-%d %H:%M %Z}")]))
    story.append(kit.p("召回名单 Recall list: orders and customers", "h2"))
    rows = [(o["order_ref"], o.get("customer") or "", o.get("phone") or "", o.get("address") or "", o["status"],
             "；".join(f"{ln['sku']} × {ln['qty']} {_TYPE_ZH.get(ln['state'], ln['state'])}"
                      + (f" {ln['vehicle']}" if ln.get("vehicle") else "") for ln in o["lines"]))
            for o in bundle.get("orders", ())]
    story.append(kit.grid(["订单 Order", "客户 Customer", "电话 Phone", "地址 Address", "状态 Status",
                           "本批次 This lot"], rows or [("—", "", "", "", "", "")], [20, 22, 24, 50, 20, 44]))
    story.append(kit.p("其余去向 Where the rest of the lot is", "h2"))
    on_hand = [(r["node"], f"{r['name']} ({r['sku']})", r["received"], r["on_hand"], r["reserved"], r["free"],
                r["expires"], "是 yes" if r["on_hold"] else "否 no") for r in bundle["remainder"]["on_hand"]]
    story.append(kit.grid(["门店 Node", "商品 Product", "入库 Received", "在库 On hand", "已承诺 Reserved",
                           "可用 Free", "到期 Expires", "冻结 Held"], on_hand or [("—",) + ("",) * 7],
                          [20, 40, 18, 18, 20, 16, 22, 26]))
    aboard = [(a.get("vehicle") or "", _CLASS_ZH.get(a.get("compartment") or "", a.get("compartment") or ""),
               a["qty"], a.get("order_ref") or "", _hm(a.get("since")), _TYPE_ZH.get(a["state"], a["state"]))
              for a in bundle["remainder"]["aboard"]]
    if aboard:
        story.append(kit.p("在车 Aboard vans", "h3"))
        story.append(kit.grid(["车辆 Van", "舱 Compartment", "数量 Qty", "订单 Order", "自 Since", "状态 State"],
                              aboard, [25, 25, 18, 30, 25, 57]))
    story.append(kit.p("各订单风险 Risk per order", "h2"))
    if not bundle.get("risks"):
        story.append(kit.p("没有订单：没有风险评估。No order took this lot: nothing to assess."))
    for r in bundle.get("risks", ()):
        story.append(kit.p(f"订单 Order {r['order_ref']}" + (f"（{r['customer']}）" if r.get("customer") else ""),
                           "h3"))
        story += _risk_story(kit, r, heading="body")
    story.append(kit.p("温度记录 Temperature per leg", "h2"))
    if not bundle.get("legs"):
        story.append(kit.p("尚未装车：没有温度记录。Never aboard a van: no temperature history."))
    story += _legs_story(kit, bundle.get("legs", ()), directory, now)
    story.append(kit.p("交接记录 Custody timeline", "h2"))
    story += _custody_story(kit, bundle.get("custody", ()), directory, with_order=True)
    return _build_pdf(story, f"Lot trace {lot}")


def _hm(text: str | None) -> str:
    return f"{_local(_t(text)):%H:%M}" if text else "—"


# ----------------------------------------------------------------------------- what the route and the CLI call


def export_order(session: Session, order_ref: str, fmt: str, *, api_base: str = API_BASE,
                 now: datetime | None = None) -> tuple[bytes, str, str]:
    """One order's export as (bytes, media type, file name); the route and ``coldchain trace export`` share it."""
    if fmt not in FORMATS:
        raise Invalid(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}", pointer="/format")
    trace = _trace_for_export(session, order_ref, now=now)
    # every export starts where the order's lots came in: their receipts join the order's own custody
    custody = sorted(order_receipts(session, trace["custody"]) + list(trace["custody"]), key=lambda e: _t(e["at"]))
    trace = {**trace, "custody": custody}
    directory = directory_for(session, custody)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in order_ref)
    if fmt == "fsma":
        return fsma_csv(fsma_rows(custody, directory)), "text/csv; charset=utf-8", f"{safe}-fsma204.csv"
    if fmt == "epcis":
        doc = epcis_document(trace, directory, api_base=api_base, created=now)
        return (json.dumps(doc, ensure_ascii=False, indent=2).encode("utf-8"), "application/ld+json",
                f"{safe}-epcis.jsonld")
    return order_pdf(trace, directory, now=now), "application/pdf", f"{safe}-trace.pdf"


def _custody_rows(session: Session, query) -> list[dict]:  # noqa: ANN001
    """event_views rows with the custody record's id (the audit log's entity_id), for the FSMA reference column."""
    events = session.scalars(query.order_by(CustodyEvent.at, CustodyEvent.id)).all()
    return [{**view, "id": ev.id} for ev, view in zip(events, custody_mod.event_views(session, events), strict=True)]


def order_receipts(session: Session, custody: Sequence[dict]) -> list[dict]:
    """The receipts of the lots an order's lines hold: an order's sheet starts where its lots came in."""
    pairs = {(e["sku"], e["lot"]) for e in custody if e.get("lot")}
    if not pairs:
        return []
    rows = _custody_rows(session, select(CustodyEvent).where(CustodyEvent.type == "received",
                                                             CustodyEvent.lot.in_({lot for _s, lot in pairs})))
    return [r for r in rows if (r["sku"], r["lot"]) in pairs]


def fsma_for_lot(session: Session, lot: str) -> bytes:
    """The spreadsheet of every custody row of a lot code (all nodes): a recall's list."""
    rows = _custody_rows(session, select(CustodyEvent).where(CustodyEvent.lot == lot))
    if not rows:
        raise NotFound(f"no custody recorded for lot {lot}")
    return fsma_csv(fsma_rows(rows, directory_for(session, rows)))


def fsma_for_period(session: Session, first: date, last: date) -> bytes:
    """The spreadsheet of every custody row from local day ``first`` through ``last`` (FDA asks by date range),
    whole; :func:`period_chunks` gives the same bytes piece by piece for a large period."""
    return b"".join(period_chunks(session, first, last, "fsma"))


# ----------------------------------------------------------------------------- per lot


def lot_bundle(session: Session, lot: str, now: datetime | None = None) -> dict:
    """What a lot's EPCIS document and PDF report show: ``traceability.trace.lot_trace`` (the orders and
    customers it went into, where the rest is, its holds) plus its custody rows with their record ids,
    ``legs`` (each interval the lot rode in a compartment, with its readings; lines of the lot only, one leg
    per van, compartment and interval whichever orders shared it, ``orders`` naming them) and ``risks``
    (each order's spoilage and breakage risk for the lot's products, with reasons). NotFound for a lot code
    no stock and no custody has. One order trace per order the lot went into: a lot goes into tens or
    hundreds of orders, not a day's thousands (that is :func:`period_chunks`)."""
    from traceability.trace import lot_trace, order_trace

    now = now or utcnow()
    bundle = lot_trace(session, lot)
    skus = set(bundle["skus"])
    custody = _custody_rows(session, select(CustodyEvent).where(CustodyEvent.lot == lot))
    legs: dict[tuple, dict] = {}
    risks = []
    for entry in bundle["orders"]:
        ref = entry["order_ref"]
        trace = order_trace(session, ref, now=now)
        risks.append({"order_ref": ref, "customer": trace["customer"],
                      "spoilage_risk": _risk_for(trace["spoilage_risk"], skus),
                      "breakage_risk": _risk_for(trace["breakage_risk"], skus)})
        for leg in trace["legs"]:
            mine = [ln for ln in leg["lines"] if ln["lot"] == lot]
            if not mine:
                continue
            key = (leg["vehicle"], leg["compartment"], leg["from"], leg["to"])
            if key in legs:
                legs[key]["lines"] += mine
                legs[key]["orders"].append(ref)
            else:
                legs[key] = {**leg, "lines": list(mine), "orders": [ref]}
    return {**bundle, "custody": custody, "legs": sorted(legs.values(), key=lambda g: (g["from"], g["vehicle"] or "")),
            "risks": risks, "assessed_at": _z(now)}


def _risk_for(risk: dict, skus: set[str]) -> dict:
    """An order's risk narrowed to the lot's products (the order's other lines came from other lots)."""
    mine = [p for p in risk.get("products", ()) if p["sku"] in skus]
    if not mine:
        return risk
    worst = max(mine, key=lambda p: _LEVELS.index(p["level"]))["level"]
    shown = [p for p in mine if p["level"] != "ok"] or mine
    return {"level": worst, "reasons": [f"{p['sku']} {p.get('name') or ''}: {r}".replace(" :", ":")
                                        for p in shown for r in p["reasons"]], "products": mine}


_LEVELS = ("ok", "watch", "at_risk", "reject")


def export_lot(session: Session, lot: str, fmt: str, *, api_base: str = API_BASE,
               now: datetime | None = None) -> tuple[bytes, str, str]:
    """One lot's export as (bytes, media type, file name); ``GET /trace/lots/{lot}/export`` and
    ``coldchain trace export --lot`` share it. FSMA: every custody row of the lot code; EPCIS: those rows,
    the loading aggregations and a sensor event per leg the lot rode; PDF: :func:`lot_pdf`."""
    if fmt not in FORMATS:
        raise Invalid(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}", pointer="/format")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in lot)
    if fmt == "fsma":
        return fsma_for_lot(session, lot), "text/csv; charset=utf-8", f"lot-{safe}-fsma204.csv"
    bundle = lot_bundle(session, lot, now=now)
    directory = directory_for(session, bundle["custody"])
    if fmt == "epcis":
        doc = epcis_document({"order_ref": None, "custody": bundle["custody"], "legs": bundle["legs"]}, directory,
                             api_base=api_base, created=now)
        return (json.dumps(doc, ensure_ascii=False, indent=2).encode("utf-8"), "application/ld+json",
                f"lot-{safe}-epcis.jsonld")
    return lot_pdf(bundle, directory, now=now), "application/pdf", f"lot-{safe}-trace.pdf"


# ----------------------------------------------------------------------------- per period, streamed

PERIOD_FORMATS = ("fsma", "epcis")
MAX_PERIOD_DAYS = 366
PERIOD_BATCH = 1000


def period_bounds(first: date, last: date) -> tuple[datetime, datetime]:
    """[start, end) of local days ``first`` through ``last``; Invalid for a period backwards or over a year."""
    if last < first:
        raise Invalid(f"the period ends ({last}) before it starts ({first})", pointer="/to")
    if (last - first).days + 1 > MAX_PERIOD_DAYS:
        raise Invalid(f"a period is at most {MAX_PERIOD_DAYS} days; {first} to {last} is "
                      f"{(last - first).days + 1}: export it in parts", pointer="/to")
    return (local_datetime(first, datetime.min.time()),
            local_datetime(last + timedelta(days=1), datetime.min.time()))


def _period_batches(session: Session, start: datetime, end: datetime,
                    batch: int) -> Iterable[tuple[list[CustodyEvent], list[dict]]]:
    """The period's custody rows in (at, id) order, ``batch`` at a time, by keyset on ix_custody_events_at_id:
    each page is one index range, and no page holds more than ``batch`` rows."""
    after: tuple[datetime, int] | None = None
    while True:
        query = select(CustodyEvent).where(CustodyEvent.at >= start, CustodyEvent.at < end)
        if after is not None:
            query = query.where(or_(CustodyEvent.at > after[0], and_(CustodyEvent.at == after[0],
                                                                       CustodyEvent.id > after[1])))
        events = session.scalars(query.order_by(CustodyEvent.at, CustodyEvent.id).limit(batch)).all()
        if not events:
            return
        views = [{**view, "id": ev.id} for ev, view in zip(events, custody_mod.event_views(session, events),
                                                            strict=True)]
        yield list(events), views
        after = (events[-1].at, events[-1].id)


class _PeriodLegs:
    """The legs that end inside a period, found while its custody streams by in time order.

    A leg (a line's lot in one compartment) is reported once, in the period it ends in (delivered,
    returned from the van, disposed, or loaded into another van), with its temperatures from its
    loading on: consecutive periods report every leg exactly once. What is open is held between
    batches (bounded by what is aboard at once); a leg loaded before the period is found by reading
    back that line's custody from where it ended. Readings are fetched per leg by index range.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self.open: dict[tuple[int, int | None], CustodyEvent] = {}
        self.vans: dict[int, tuple[str, str | None]] = {}

    def _loaded_before(self, ev: CustodyEvent) -> CustodyEvent | None:
        c = CustodyEvent
        lot_match = c.lot_id.is_(None) if ev.lot_id is None else c.lot_id == ev.lot_id
        for prev in self.session.scalars(select(c).where(c.line_id == ev.line_id, lot_match, c.id < ev.id)
                                         .order_by(c.id.desc()).limit(50)):
            if prev.type == "failed":
                continue
            return prev if prev.type == "loaded" else None
        return None

    def _van(self, vehicle_id: int) -> tuple[str, str | None]:
        if vehicle_id not in self.vans:
            row = self.session.execute(select(Vehicle.code, Vehicle.device).where(Vehicle.id == vehicle_id)).first()
            self.vans[vehicle_id] = (row[0], row[1]) if row else (str(vehicle_id), None)
        return self.vans[vehicle_id]

    def batch(self, events: Sequence[CustodyEvent], views: Sequence[dict]) -> list[dict]:
        ended: list[tuple[CustodyEvent, datetime, dict]] = []  # (its loading, end, the line's view)
        for ev, view in zip(events, views, strict=True):
            if ev.line_id is None:
                continue
            key = (ev.line_id, ev.lot_id)
            if ev.type == "loaded":
                prior = self.open.get(key)
                if prior is not None and (prior.vehicle_id, prior.compartment) == (ev.vehicle_id, ev.compartment):
                    continue
                if prior is not None:
                    ended.append((prior, ev.at, view))
                self.open[key] = ev
            elif ev.type in ("delivered", "returned", "disposed"):
                start = self.open.pop(key, None) or self._loaded_before(ev)
                if start is not None:
                    ended.append((start, ev.at, view))
        legs: dict[tuple, dict] = {}
        for start, end, view in ended:
            key = (start.vehicle_id, start.compartment, start.at, end)
            line = {"line_no": view.get("line_no"), "sku": view.get("sku"), "lot": start.lot, "qty": start.qty}
            if key in legs:
                legs[key]["lines"].append(line)
                legs[key]["orders"] = list(dict.fromkeys([*legs[key]["orders"], view.get("order_ref")]))
                continue
            code, device = self._van(start.vehicle_id)
            r = TelemetryReading
            rows = self.session.execute(readings_query(start.vehicle_id, start.at, end, "temperature",
                                                       start.compartment or "").with_only_columns(r.ts, r.value))
            legs[key] = {"vehicle": code, "device": device, "compartment": start.compartment, "from": _z(start.at),
                         "to": _z(end), "lines": [line], "orders": [view.get("order_ref")] if view.get("order_ref")
                         else [], "readings": [{"ts": _z(ts), "kind": "temperature", "value": v} for ts, v in rows]}
        return list(legs.values())


def period_chunks(session: Session, first: date, last: date, fmt: str, *, api_base: str = API_BASE,
                  now: datetime | None = None, batch: int = PERIOD_BATCH) -> Iterable[bytes]:
    """A period's export, piece by piece: every custody row (every critical tracking event, and the
    business's own rows) from local day ``first`` through ``last``, read ``batch`` rows at a time and
    written out before the next batch is read, so a year of a busy network never sits in memory.

    ``fsma``: the FSMA 204 sortable spreadsheet (the BOM and header first, then rows per batch).
    ``epcis``: one EPCIS 2.0 document, its eventList written event by event: per batch the custody
    ObjectEvents, the loading AggregationEvents, and a sensor event per leg that ended in it
    (:class:`_PeriodLegs`); each event names its order in bizTransactionList.
    """
    if fmt not in PERIOD_FORMATS:
        raise Invalid(f"a period exports as {' or '.join(PERIOD_FORMATS)}, not {fmt!r} (PDF is per order or lot)",
                      pointer="/format")
    start, end = period_bounds(first, last)
    created = now or utcnow()
    seen: set[tuple] = set()
    if fmt == "fsma":
        yield fsma_csv([])
        for _events, views in _period_batches(session, start, end, batch):
            yield fsma_csv(fsma_rows(views, directory_for(session, views), seen), header=False)
        return
    shell = epcis_document({"order_ref": None, "custody": [], "legs": []}, Directory(), api_base=api_base,
                           created=created)
    shell["epcisBody"]["eventList"] = ["\0"]
    head, tail = json.dumps(shell, ensure_ascii=False).split('"\\u0000"')
    yield head.encode("utf-8")
    legs = _PeriodLegs(session)
    count = 0
    for events, views in _period_batches(session, start, end, batch):
        directory = directory_for(session, views)
        doc = epcis_document({"order_ref": None, "custody": views, "legs": legs.batch(events, views)}, directory,
                             api_base=api_base, created=created)
        parts = [json.dumps(e, ensure_ascii=False) for e in doc["epcisBody"]["eventList"]]
        if parts:
            yield (("," if count else "") + ",".join(parts)).encode("utf-8")
            count += len(parts)
    yield tail.encode("utf-8")


# ------------------------------------------------------------------------------------------ the trace


def _trace_for_export(session: Session, order_ref: str, now: datetime | None = None) -> dict:
    """The order's trace (traceability.trace), with the custody records' ids for the FSMA reference column."""
    from traceability.trace import order_trace

    trace = order_trace(session, order_ref, now=now)
    if not any("id" in e for e in trace.get("custody", ())):
        ids = _custody_rows(session, select(CustodyEvent).join(Order, Order.id == CustodyEvent.order_id)
                            .where(Order.ref == order_ref))
        if len(ids) == len(trace["custody"]):
            trace = {**trace, "custody": [{**e, "id": r["id"]} for e, r in zip(trace["custody"], ids, strict=True)]}
    return trace



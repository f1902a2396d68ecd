"""Loading the network from a scenario folder, and reading it back for people.

Loading is an upsert by natural key (node code, SKU, lot, van code, username):
the same files twice change nothing; a changed row updates; a bad row is reported
as FILE:LINE: FIELD: REASON and everything else still loads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geopy.distance import geodesic
from shapely import wkt as shapely_wkt
from shapely.errors import ShapelyError
from shapely.geometry import MultiPolygon, Point, Polygon
from shapely.ops import nearest_points
from shapely.validation import explain_validity
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import audit
from core.bulk import copy_rows
from core.csvio import CsvFileError, RowError, read_rows, validate_row
from core.security import ROLES, hash_password
from warehouses.models import TEMP_CLASSES, Compartment, Driver, Node, Product, StockLot, User, Vehicle
from warehouses.schemas import (
    DRIVER_COLUMNS,
    NODE_COLUMNS,
    PRODUCT_COLUMNS,
    STOCK_COLUMNS,
    VEHICLE_COLUMNS,
    DriverRow,
    NodeRow,
    ProductRow,
    StockRow,
    VehicleRow,
)

MAX_AREA_DISTANCE_KM = 50.0
Progress = Callable[[str, int], None]


@dataclass
class FileCounts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class LoadReport:
    """What one load did, file by file, and every row it refused."""

    counts: dict[str, FileCounts] = field(default_factory=dict)
    errors: list[RowError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def file(self, name: str) -> FileCounts:
        return self.counts.setdefault(name, FileCounts())

    def reject(self, error: RowError, count: bool = True) -> None:
        self.errors.append(error)
        if count:
            self.file(error.file).rejected += 1

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {
            "counts": {k: v.as_dict() for k, v in self.counts.items()},
            "rejected": [e.as_dict() for e in self.errors],
            "notes": self.notes,
        }


def _apply(obj: Any, values: dict[str, Any]) -> bool:
    """Set attributes that differ; True when anything changed."""
    changed = False
    for key, value in values.items():
        if getattr(obj, key) != value:
            setattr(obj, key, value)
            changed = True
    return changed


def _upsert(session: Session, report: FileCounts, existing: Any, make: Callable[[], Any], values: dict) -> Any:
    if existing is None:
        obj = make()
        _apply(obj, values)
        session.add(obj)
        report.inserted += 1
        return obj
    if _apply(existing, values):
        report.updated += 1
    else:
        report.unchanged += 1
    return existing


def _valid_rows(
    directory: Path,
    name: str,
    model: type,
    columns: tuple[str, ...],
    report: LoadReport,
    tick: Progress,
    key: Callable[[Any], tuple[str, Any, str]],
    check: Callable[[Any], tuple[str, str] | None] = lambda _rec: None,
    optional: tuple[str, ...] = (),
) -> Iterator[tuple[int, Any]]:
    """Yield (line, record) for rows that validate, are not duplicates and pass `check`.

    `key(rec)` gives (field, natural key, label) for duplicate detection; `check(rec)`
    returns (field, reason) for a cross-file problem such as an unknown node.
    Every refused row is recorded in the report; the caller only sees good rows.
    """
    path = directory / name
    counts = report.file(name)
    first_line: dict[Any, int] = {}
    try:
        for row in read_rows(path, columns, optional):
            tick(name, 1)
            rec, errors = validate_row(model, row, name)
            if rec is not None:
                field_, natural, label = key(rec)
                if natural in first_line:
                    reason = f"duplicate {label} (first on line {first_line[natural]})"
                    errors = [RowError(name, row.line, field_, reason)]
                elif (problem := check(rec)) is not None:
                    errors = [RowError(name, row.line, *problem)]
            if errors:
                for e in errors:
                    report.reject(e, count=False)
                counts.rejected += 1
                continue
            first_line[natural] = row.line
            yield row.line, rec
    except CsvFileError as exc:
        report.reject(exc.error, count=False)


def parse_service_area(text: str, lat: float, lon: float) -> Polygon | MultiPolygon:
    """A POLYGON in lon lat order (CONTRACTS.md section 4); ValueError says why not."""
    try:
        geom = shapely_wkt.loads(text)
    except (ShapelyError, ValueError, TypeError) as exc:
        raise ValueError(f"invalid WKT ({exc})") from exc
    if not isinstance(geom, Polygon | MultiPolygon):
        raise ValueError(f"expected a POLYGON, got {geom.geom_type}")
    if geom.is_empty:
        raise ValueError("polygon is empty")
    if not geom.is_valid:
        raise ValueError(f"polygon is not valid: {explain_validity(geom)}")
    minx, miny, maxx, maxy = geom.bounds
    if not (-180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90):
        raise ValueError("polygon coordinates out of range (expected lon lat order)")
    if not geom.covers(Point(lon, lat)):
        nearest = nearest_points(geom, Point(lon, lat))[0]
        km = geodesic((lat, lon), (nearest.y, nearest.x)).km
        if km > MAX_AREA_DISTANCE_KM:
            raise ValueError(f"polygon lies {km:.0f} km from the node (lon lat order swapped?)")
    return geom


def load_network(session: Session, directory: Path, report: LoadReport, progress: Progress | None = None) -> None:
    """Load nodes, products, stock, vehicles and drivers, in dependency order."""
    tick = progress or (lambda _name, _n: None)
    nodes = _load_nodes(session, directory, report, tick)
    products = _load_products(session, directory, report, tick)
    _load_stock(session, directory, report, nodes, products, tick)
    vehicles = _load_vehicles(session, directory, report, nodes, tick)
    _load_drivers(session, directory, report, vehicles, tick)
    session.flush()


def _load_nodes(session: Session, directory: Path, report: LoadReport, tick: Progress) -> dict[str, Node]:
    name = "nodes.csv"
    existing = {n.code: n for n in session.scalars(select(Node))}

    def area(rec: NodeRow) -> tuple[str, str] | None:
        if rec.service_area_wkt:
            try:
                parse_service_area(rec.service_area_wkt, rec.lat, rec.lon)
            except ValueError as exc:
                return "service_area_wkt", str(exc)
        return None

    good = list(_valid_rows(directory, name, NodeRow, NODE_COLUMNS, report, tick,
                            key=lambda r: ("code", r.code, f"code {r.code}"), check=area))
    kinds = {code: n.kind for code, n in existing.items()} | {r.code: r.kind for _, r in good}
    accepted: list[NodeRow] = []
    for line, rec in good:
        reason = None
        if rec.parent:
            if rec.kind == "flagship":
                reason = "a flagship has no parent"
            elif rec.parent == rec.code:
                reason = "a node cannot be its own parent"
            elif rec.parent not in kinds:
                reason = f"unknown node {rec.parent}"
            elif kinds[rec.parent] != "flagship":
                reason = f"parent {rec.parent} is not a flagship"
        if reason:
            report.reject(RowError(name, line, "parent", reason))
            continue
        accepted.append(rec)

    counts = report.file(name)
    for rec in accepted:
        values = rec.model_dump(exclude={"parent"})
        existing[rec.code] = _upsert(session, counts, existing.get(rec.code), Node, values)
    session.flush()
    for rec in accepted:
        node = existing[rec.code]
        parent_id = existing[rec.parent].id if rec.parent and rec.parent in existing else None
        if node.parent_id != parent_id:
            node.parent_id = parent_id
            if counts.unchanged and node not in session.new:
                counts.unchanged -= 1
                counts.updated += 1
    return existing


def _load_products(session: Session, directory: Path, report: LoadReport, tick: Progress) -> dict[str, Product]:
    name = "products.csv"
    existing = {p.sku: p for p in session.scalars(select(Product))}
    counts = report.file(name)
    for _line, rec in _valid_rows(directory, name, ProductRow, PRODUCT_COLUMNS, report, tick,
                                  key=lambda r: ("sku", r.sku, f"sku {r.sku}"), optional=("max_on_board_min",)):
        existing[rec.sku] = _upsert(session, counts, existing.get(rec.sku), Product, rec.model_dump())
    session.flush()
    return existing


def _load_stock(
    session: Session,
    directory: Path,
    report: LoadReport,
    nodes: dict[str, Node],
    products: dict[str, Product],
    tick: Progress,
) -> None:
    name = "stock.csv"
    existing = {(s.node_id, s.product_id, s.lot): s for s in session.scalars(select(StockLot))}
    counts = report.file(name)
    new_lots: list[dict] = []  # written in one COPY / executemany (the ORM's flush: ~0.2 ms a lot)

    def known(rec: StockRow) -> tuple[str, str] | None:
        if rec.node not in nodes or nodes[rec.node].id is None:
            return "node", f"unknown node {rec.node}"
        if rec.sku not in products:
            return "sku", f"unknown sku {rec.sku}"
        return None

    for line, rec in _valid_rows(directory, name, StockRow, STOCK_COLUMNS, report, tick, check=known,
                                 key=lambda r: ("lot", (r.node, r.sku, r.lot), f"lot {r.lot} of {r.sku} at {r.node}")):
        node, product = nodes[rec.node], products[rec.sku]
        current = existing.get((node.id, product.id, rec.lot))
        if current is not None and rec.qty < current.reserved:
            report.reject(RowError(name, line, "qty", f"{rec.qty} is below the {current.reserved} already reserved"))
            continue
        values = {"node_id": node.id, "product_id": product.id, "lot": rec.lot, "qty": rec.qty, "expires": rec.expires}
        if current is None:
            new_lots.append({**values, "reserved": 0, "on_hold": False})
            counts.inserted += 1
            continue
        _upsert(session, counts, current, StockLot, values)
    session.flush()
    copy_rows(session, StockLot.__table__, new_lots)


def _load_vehicles(
    session: Session, directory: Path, report: LoadReport, nodes: dict[str, Node], tick: Progress
) -> dict[str, Vehicle]:
    name = "vehicles.csv"
    existing = {v.code: v for v in session.scalars(select(Vehicle))}
    devices = {v.device: v.code for v in existing.values() if v.device}
    counts = report.file(name)

    def known(rec: VehicleRow) -> tuple[str, str] | None:
        if rec.depot not in nodes or nodes[rec.depot].id is None:
            return "depot", f"unknown node {rec.depot}"
        if rec.device and devices.get(rec.device, rec.code) != rec.code:
            return "device", f"device {rec.device} is already fitted to {devices[rec.device]}"
        return None

    for _line, rec in _valid_rows(directory, name, VehicleRow, VEHICLE_COLUMNS, report, tick, check=known,
                                  key=lambda r: ("code", r.code, f"code {r.code}")):
        current = existing.get(rec.code)
        if current is not None and current.device and current.device != rec.device:
            devices.pop(current.device, None)
        values = rec.model_dump(exclude={"depot", "frozen_l", "chilled_l", "ambient_l"})
        values["depot_id"] = nodes[rec.depot].id
        before = counts.unchanged
        vehicle = _upsert(session, counts, current, Vehicle, values)
        if _sync_compartments(vehicle, rec) and counts.unchanged > before:
            counts.unchanged -= 1
            counts.updated += 1
        if rec.device:
            devices[rec.device] = rec.code
        existing[rec.code] = vehicle
    session.flush()
    return existing


def _sync_compartments(vehicle: Vehicle, rec: VehicleRow) -> bool:
    changed = False
    by_class = {c.temp_class: c for c in vehicle.compartments}
    for temp_class in TEMP_CLASSES:
        capacity = float(getattr(rec, f"{temp_class}_l"))
        current = by_class.get(temp_class)
        if capacity <= 0:
            if current is not None:
                vehicle.compartments.remove(current)
                changed = True
        elif current is None:
            vehicle.compartments.append(Compartment(temp_class=temp_class, capacity_l=capacity))
            changed = True
        elif current.capacity_l != capacity:
            current.capacity_l = capacity
            changed = True
    return changed


def _load_drivers(
    session: Session, directory: Path, report: LoadReport, vehicles: dict[str, Vehicle], tick: Progress
) -> None:
    name = "drivers.csv"
    existing = {d.username: d for d in session.scalars(select(Driver))}
    counts = report.file(name)

    def known(rec: DriverRow) -> tuple[str, str] | None:
        return ("vehicle", f"unknown vehicle {rec.vehicle}") if rec.vehicle and rec.vehicle not in vehicles else None

    for _line, rec in _valid_rows(directory, name, DriverRow, DRIVER_COLUMNS, report, tick, check=known,
                                  key=lambda r: ("username", r.username, f"username {r.username}")):
        values = {"username": rec.username, "name": rec.name,
                  "vehicle_id": vehicles[rec.vehicle].id if rec.vehicle else None}
        existing[rec.username] = _upsert(session, counts, existing.get(rec.username), Driver, values)


def upsert_user(session: Session, username: str, role: str, password: str,
                actor: str = "cli") -> tuple[User, bool]:
    """Create or update a login; returns (user, created). The audit log names who did it, never the password."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    if len(password) < 8:
        raise ValueError("password must have at least 8 characters")
    user = session.scalar(select(User).where(User.username == username))
    created = user is None
    if created:
        user = User(username=username, role=role, password_hash=hash_password(password), active=True)
        session.add(user)
    else:
        user.role = role
        user.password_hash = hash_password(password)
        user.active = True
    session.flush()
    audit.append(session, actor, "user.created" if created else "user.updated", "user", username,
                 {"role": role, "active": True, "password_changed": True})  # never the password or its hash
    return user, created


def network_summary(session: Session) -> dict[str, Any]:
    """Per node: kind, parent, capacity, vans, SKUs and units in stock — what `coldchain demo` prints."""
    vans = dict(session.execute(select(Vehicle.depot_id, func.count()).group_by(Vehicle.depot_id)).all())
    stock = {
        node_id: (skus, units)
        for node_id, skus, units in session.execute(
            select(StockLot.node_id, func.count(func.distinct(StockLot.product_id)), func.sum(StockLot.qty))
            .group_by(StockLot.node_id)
        )
    }
    nodes = session.scalars(select(Node).order_by(Node.kind, Node.code)).all()
    codes = {n.id: n.code for n in nodes}
    rows = []
    for n in nodes:
        skus, units = stock.get(n.id, (0, 0))
        rows.append({
            "code": n.code, "kind": n.kind, "name": n.name, "parent": codes.get(n.parent_id),
            "lat": n.lat, "lon": n.lon, "hours": f"{n.opens:%H:%M}-{n.closes:%H:%M}",
            "frozen_l": n.frozen_l, "chilled_l": n.chilled_l, "ambient_l": n.ambient_l,
            "area": "polygon" if n.service_area_wkt else "5 km radius",
            "vans": vans.get(n.id, 0), "skus": skus, "units": int(units or 0),
        })
    return {
        "nodes": rows,
        "totals": {
            "flagships": sum(1 for n in nodes if n.kind == "flagship"),
            "hubs": sum(1 for n in nodes if n.kind == "hub"),
            "products": session.scalar(select(func.count()).select_from(Product)),
            "lots": session.scalar(select(func.count()).select_from(StockLot)),
            "vehicles": session.scalar(select(func.count()).select_from(Vehicle)),
            "drivers": session.scalar(select(func.count()).select_from(Driver)),
        },
    }

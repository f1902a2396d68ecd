"""The sample scenario generator and the shipped Chengdu sample (CONTRACTS.md section 4)."""

import csv
from collections import Counter, defaultdict
from datetime import date, timedelta
from pathlib import Path

import pytest
import shapely
from geopy.distance import geodesic
from shapely import wkt

import warehouses
from tests.support import DAY, after, sample_city
from warehouses import samplegen
from warehouses.samplegen import Scenario, chengdu, read_scenario, synthetic, write_scenario

SAMPLE = Path(warehouses.__file__).parent / "sample" / "chengdu"
SAMPLE_DAY = date.fromisoformat(read_scenario(SAMPLE).orders[0]["delivery_date"])  # the day it was written for

# Written out here, not imported, so that a change of the generator's columns fails the test.
CONTRACT_COLUMNS = {
    "nodes.csv": ["code", "kind", "name", "lat", "lon", "parent", "opens", "closes", "frozen_l", "chilled_l",
                  "ambient_l", "service_area_wkt"],
    "products.csv": ["sku", "name", "temp_class", "fragile", "unit_l", "unit_kg", "shelf_life_days", "min_c",
                     "max_c", "max_on_board_min"],
    "stock.csv": ["node", "sku", "lot", "qty", "expires"],
    "vehicles.csv": ["code", "depot", "frozen_l", "chilled_l", "ambient_l", "max_kg", "shift_start",
                     "shift_end", "speed_kmh", "cost_per_km", "fixed_cost", "device"],
    "drivers.csv": ["username", "name", "vehicle"],
    "orders.csv": ["order_ref", "delivery_date", "mode", "lat", "lon", "window_start", "window_end", "sku",
                   "qty", "pickup_node", "customer", "phone", "address", "allow_split", "note"],
}


def minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    """The shipped sample as written for the day under test (the shipped files are the generator's, below)."""
    return read_scenario(sample_city(tmp_path_factory.mktemp("chengdu"), DAY))


@pytest.fixture(scope="module")
def big() -> Scenario:
    return synthetic(2000, 20000, DAY)


def files_bytes(d: Path) -> dict[str, bytes]:
    return {name: (d / name).read_bytes() for name in CONTRACT_COLUMNS}


# ---------------------------------------------------------------------------- the shipped sample


def test_files_have_the_contract_columns_and_parse():
    for name, columns in CONTRACT_COLUMNS.items():
        raw = (SAMPLE / name).read_bytes()
        assert b"\r\n" not in raw, name
        text = raw.decode("utf-8")
        with open(SAMPLE / name, encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            rows = list(reader)
        assert header == columns, name
        assert rows, name
        assert all(len(r) == len(columns) for r in rows), name
        assert text.endswith("\n")


def test_shipped_sample_is_what_the_generator_writes(tmp_path):
    write_scenario(chengdu(SAMPLE_DAY), tmp_path)
    assert files_bytes(tmp_path) == files_bytes(SAMPLE)


def test_scenario_rows_equal_the_rows_read_back(tmp_path):
    scen = chengdu(DAY, n_orders=40)
    write_scenario(scen, tmp_path)
    assert read_scenario(tmp_path) == scen


def test_network_shape(sample):
    kinds = Counter(n["kind"] for n in sample.nodes)
    assert kinds == {"flagship": 2, "hub": 12}
    codes = [n["code"] for n in sample.nodes]
    assert len(set(codes)) == len(codes)
    flagships = {n["code"] for n in sample.nodes if n["kind"] == "flagship"}
    for n in sample.nodes:
        lat, lon = float(n["lat"]), float(n["lon"])
        assert 30.3 < lat < 31.0 and 103.6 < lon < 104.6, n["code"]  # Chengdu, WGS-84
        assert minutes(n["opens"]) < minutes(n["closes"])
        assert all(int(n[k]) > 0 for k in ("frozen_l", "chilled_l", "ambient_l"))
        if n["kind"] == "hub":
            assert n["parent"] in flagships
            parent = next(p for p in sample.nodes if p["code"] == n["parent"])
            here = (float(n["lat"]), float(n["lon"]))
            nearest = min(
                (p for p in sample.nodes if p["kind"] == "flagship"),
                key=lambda p, here=here: geodesic(here, (float(p["lat"]), float(p["lon"]))).km,
            )
            assert parent is nearest
            assert all(int(n[k]) < int(parent[k]) for k in ("frozen_l", "chilled_l", "ambient_l"))
        else:
            assert n["parent"] == ""
    assert sum(1 for n in sample.nodes if not n["service_area_wkt"]) == 2


def test_service_areas_are_valid_polygons_around_their_node(sample):
    for n in sample.nodes:
        if not n["service_area_wkt"]:
            continue
        geom = wkt.loads(n["service_area_wkt"])
        assert geom.geom_type == "Polygon" and geom.is_valid, n["code"]
        assert 8 <= len(geom.exterior.coords) - 1 <= 14, n["code"]
        lat, lon = float(n["lat"]), float(n["lon"])
        assert geom.contains(shapely.Point(lon, lat)), n["code"]  # lon lat order
        far = max(geodesic((lat, lon), (y, x)).km for x, y in geom.exterior.coords)
        near = min(geodesic((lat, lon), (y, x)).km for x, y in geom.exterior.coords)
        assert near > 1.5 and far < 6.5, n["code"]


def test_products(sample):
    skus = [p["sku"] for p in sample.products]
    assert len(skus) == len(set(skus)) >= 20
    by = {p["sku"]: p for p in sample.products}
    ranges = {"frozen": (-30, -15), "chilled": (-1, 10), "ambient": (0, 30)}
    for p in sample.products:
        lo, hi = ranges[p["temp_class"]]
        assert lo <= float(p["min_c"]) < float(p["max_c"]) <= hi, p["sku"]
        assert p["fragile"] in ("0", "1")
        assert float(p["unit_l"]) > 0 and float(p["unit_kg"]) > 0 and int(p["shelf_life_days"]) > 0
        assert p["max_on_board_min"] == "" or int(p["max_on_board_min"]) > 0
    assert by["STRAWBERRY-500G"]["max_on_board_min"] == "240" and by["STRAWBERRY-500G"]["fragile"] == "1"
    assert by["MILK-1L"]["max_on_board_min"] == "360" and by["MILK-1L"]["shelf_life_days"] == "7"
    assert by["EGG-30"]["fragile"] == "1"
    assert {p["temp_class"] for p in sample.products} == {"frozen", "chilled", "ambient"}


def test_stock_lots(sample):
    nodes = {n["code"]: n for n in sample.nodes}
    skus = {p["sku"] for p in sample.products}
    keys = [(s["node"], s["sku"], s["lot"]) for s in sample.stock]
    assert len(keys) == len(set(keys))
    held = {}
    for s in sample.stock:
        assert s["node"] in nodes and s["sku"] in skus
        assert int(s["qty"]) > 0
        held[(s["node"], s["lot"])] = s["expires"]
    day = DAY.isoformat()
    assert 3 <= sum(1 for s in sample.stock if s["expires"] < day) <= 10  # a few already expired
    # FEFO matters: at each flagship, most SKUs come in several lots with different expiries
    expiries = defaultdict(set)
    for s in sample.stock:
        expiries[(s["node"], s["sku"])].add(s["expires"])
    for f in (c for c, n in nodes.items() if n["kind"] == "flagship"):
        assert sum(1 for sku in skus if len(expiries[(f, sku)]) >= 2) == len(skus)
    # hubs hold a subset of SKUs, in lots received from their flagship
    for code, n in nodes.items():
        if n["kind"] != "hub":
            continue
        mine = [s for s in sample.stock if s["node"] == code]
        assert 0 < len({s["sku"] for s in mine}) < len(skus)
        from_parent = sum(1 for s in mine if held.get((n["parent"], s["lot"])) == s["expires"])
        assert from_parent >= len(mine) - 1


def test_vehicles_and_drivers(sample):
    nodes = {n["code"]: n for n in sample.nodes}
    assert len(sample.vehicles) >= 20
    depots = Counter(v["depot"] for v in sample.vehicles)
    assert set(depots) <= set(nodes)
    for code, n in nodes.items():
        if n["kind"] == "flagship":
            assert 3 <= depots[code] <= 4
    assert sum(1 for c, n in nodes.items() if n["kind"] == "hub" and depots[c] == 0) == 2
    codes = [v["code"] for v in sample.vehicles]
    devices = [v["device"] for v in sample.vehicles]
    assert len(set(codes)) == len(codes) and len(set(devices)) == len(devices)
    assert sample.vehicles[0]["code"] == "VAN-01" and sample.vehicles[0]["device"] == "TL-0001"
    for v in sample.vehicles:
        assert minutes(v["shift_start"]) < minutes(v["shift_end"])
        assert 20 <= float(v["speed_kmh"]) <= 35
        assert all(float(v[k]) > 0 for k in ("frozen_l", "chilled_l", "ambient_l", "max_kg", "cost_per_km"))
    assert sorted(d["vehicle"] for d in sample.drivers) == sorted(codes)
    assert len({d["username"] for d in sample.drivers}) == len(sample.drivers)


def test_orders(sample):
    nodes = {n["code"]: n for n in sample.nodes}
    skus = {p["sku"] for p in sample.products}
    orders = defaultdict(list)
    for r in sample.orders:
        orders[r["order_ref"]].append(r)
        assert r["sku"] in skus and int(r["qty"]) > 0
        assert r["delivery_date"] == DAY.isoformat()
        assert minutes(r["window_start"]) < minutes(r["window_end"])
        assert r["allow_split"] in ("0", "1")
        if r["mode"] == "pickup":
            assert nodes[r["pickup_node"]]["kind"] == "hub"
        else:
            assert r["mode"] == "delivery" and r["pickup_node"] == ""
    assert len(orders) == 300
    header = ("mode", "lat", "lon", "window_start", "window_end", "pickup_node", "customer", "phone",
              "address")
    for lines in orders.values():
        assert 1 <= len(lines) <= 4
        assert len({ln["sku"] for ln in lines}) == len(lines)
        assert len({tuple(ln[k] for k in header) for ln in lines}) == 1
    firsts = [lines[0] for lines in orders.values()]
    modes = Counter(o["mode"] for o in firsts)
    assert 0.05 <= modes["pickup"] / len(firsts) <= 0.2
    assert sum(1 for o in firsts if (o["window_start"], o["window_end"]) == ("07:00", "07:30")) >= 2

    areas = {c: wkt.loads(n["service_area_wkt"]) for c, n in nodes.items() if n["service_area_wkt"]}

    def covered(o) -> bool:
        lat, lon = float(o["lat"]), float(o["lon"])
        if any(a.covers(shapely.Point(lon, lat)) for a in areas.values()):
            return True
        return any(geodesic((lat, lon), (float(n["lat"]), float(n["lon"]))).km <= 5
                   for c, n in nodes.items() if c not in areas)

    deliveries = [o for o in firsts if o["mode"] == "delivery"]
    outside = [o for o in deliveries if not covered(o)]
    assert 1 <= len(outside) <= 10
    assert len(outside) / len(deliveries) < 0.05


# ---------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes(tmp_path):
    write_scenario(chengdu(DAY, n_orders=120, seed=3), tmp_path / "a")
    write_scenario(chengdu(DAY, n_orders=120, seed=3), tmp_path / "b")
    write_scenario(chengdu(DAY, n_orders=120, seed=4), tmp_path / "c")
    assert files_bytes(tmp_path / "a") == files_bytes(tmp_path / "b")
    assert files_bytes(tmp_path / "a")["orders.csv"] != files_bytes(tmp_path / "c")["orders.csv"]
    write_scenario(synthetic(50, 400, DAY, seed=2), tmp_path / "d")
    write_scenario(synthetic(50, 400, DAY, seed=2), tmp_path / "e")
    assert files_bytes(tmp_path / "d") == files_bytes(tmp_path / "e")


def test_dates_follow_the_delivery_date():
    day = after(97)
    later = chengdu(day, n_orders=30)
    assert {r["delivery_date"] for r in later.orders} == {day.isoformat()}
    assert any(s["expires"] < day.isoformat() for s in later.stock)
    assert all(s["expires"] > (day - timedelta(days=9)).isoformat() for s in later.stock)


def test_command_line_writes_the_sample(tmp_path):
    assert samplegen.main([str(tmp_path), "--date", str(DAY), "--orders", "25"]) == 0
    scen = read_scenario(tmp_path)
    assert len({r["order_ref"] for r in scen.orders}) == 25
    assert len(scen.nodes) == 14


# ---------------------------------------------------------------------------- synthetic


def test_synthetic_at_scale(big):
    assert len(big.nodes) == 2000
    assert len({r["order_ref"] for r in big.orders}) == 20000
    nodes = {n["code"]: n for n in big.nodes}
    assert len(nodes) == 2000
    flagships = {c for c, n in nodes.items() if n["kind"] == "flagship"}
    assert flagships and all(n["parent"] in flagships for n in nodes.values() if n["kind"] == "hub")
    skus = {p["sku"] for p in big.products}
    assert all(s["node"] in nodes and s["sku"] in skus for s in big.stock)
    assert len({(s["node"], s["sku"], s["lot"]) for s in big.stock}) == len(big.stock)
    assert all(v["depot"] in nodes for v in big.vehicles)
    assert len({v["code"] for v in big.vehicles}) == len(big.vehicles) == len(big.drivers)
    assert len({v["device"] for v in big.vehicles}) == len(big.vehicles)
    for r in big.orders:
        assert r["sku"] in skus
        assert (r["mode"] == "pickup") == (r["pickup_node"] != "")
        if r["pickup_node"]:
            assert nodes[r["pickup_node"]]["kind"] == "hub"
    polys = shapely.from_wkt([n["service_area_wkt"] for n in big.nodes if n["service_area_wkt"]])
    assert shapely.is_valid(polys).all()
    with_area = [n for n in big.nodes if n["service_area_wkt"]]
    lons, lats = [float(n["lon"]) for n in with_area], [float(n["lat"]) for n in with_area]
    assert shapely.contains_xy(polys, lons, lats).all()
    # deliveries lie in the area of some node, but for the few placed outside on purpose
    tree = shapely.STRtree(polys)
    firsts = {r["order_ref"]: r for r in big.orders if r["mode"] == "delivery"}
    pts = shapely.points([(float(r["lon"]), float(r["lat"])) for r in firsts.values()])
    inside = len(set(tree.query(pts, predicate="within")[0]))
    assert inside / len(pts) > 0.9

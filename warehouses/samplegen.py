"""Sample scenario directories (CONTRACTS.md section 4): a realistic Chengdu and a synthetic city of any size.

Everything here is deterministic: each generator draws from its own ``random.Random`` seeded from its
arguments, so the same arguments give the same rows and the same bytes on disk. Rows are plain dicts of
strings, exactly as ``csv.DictReader`` reads them back from the written files, so a loader can take either.

    python -m warehouses.samplegen OUT_DIR [--date YYYY-MM-DD] [--orders N] [--seed S]

writes the Chengdu sample (default date: tomorrow in COLDCHAIN_TIMEZONE, default Asia/Shanghai).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from random import Random

from core import geo

Row = dict[str, str]

COLUMNS: dict[str, tuple[str, ...]] = {
    "nodes.csv": ("code", "kind", "name", "lat", "lon", "parent", "opens", "closes",
                  "frozen_l", "chilled_l", "ambient_l", "service_area_wkt"),
    "products.csv": ("sku", "name", "temp_class", "fragile", "unit_l", "unit_kg", "shelf_life_days",
                     "min_c", "max_c", "max_on_board_min"),
    "stock.csv": ("node", "sku", "lot", "qty", "expires"),
    "vehicles.csv": ("code", "depot", "frozen_l", "chilled_l", "ambient_l", "max_kg", "shift_start",
                     "shift_end", "speed_kmh", "cost_per_km", "fixed_cost", "device"),
    "drivers.csv": ("username", "name", "vehicle"),
    "orders.csv": ("order_ref", "delivery_date", "mode", "lat", "lon", "window_start", "window_end", "sku",
                   "qty", "pickup_node", "customer", "phone", "address", "allow_split", "note"),
}
FILES: dict[str, str] = {
    "nodes": "nodes.csv", "products": "products.csv", "stock": "stock.csv",
    "vehicles": "vehicles.csv", "drivers": "drivers.csv", "orders": "orders.csv",
}

DEFAULT_RADIUS_KM = 5.0  # an empty service_area_wkt means this radius (CONTRACTS.md section 4)


@dataclass
class Scenario:
    """A scenario directory in memory: per CSV file, its rows as dicts of strings (columns as in COLUMNS)."""

    nodes: list[Row] = field(default_factory=list)
    products: list[Row] = field(default_factory=list)
    stock: list[Row] = field(default_factory=list)
    vehicles: list[Row] = field(default_factory=list)
    drivers: list[Row] = field(default_factory=list)
    orders: list[Row] = field(default_factory=list)

    def tables(self) -> Iterable[tuple[str, tuple[str, ...], list[Row]]]:
        """(file name, columns, rows) for each of the six files, in a fixed order."""
        for attr, name in FILES.items():
            yield name, COLUMNS[name], getattr(self, attr)


def write_scenario(scenario: Scenario, dir: Path) -> None:
    """Write the six CSV files (UTF-8, header row, \\n line endings) into ``dir``, creating it if needed."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    for name, columns, rows in scenario.tables():
        with open(dir / name, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(columns)
            for r in rows:
                w.writerow([r.get(c, "") for c in columns])


def read_scenario(dir: Path) -> Scenario:
    """Read a scenario directory back into a Scenario (rows as csv.DictReader gives them)."""
    out = Scenario()
    for attr, name in FILES.items():
        with open(Path(dir) / name, encoding="utf-8", newline="") as f:
            setattr(out, attr, list(csv.DictReader(f)))
    return out


# ----------------------------------------------------------------------------------------------------
# small helpers


def _num(x: float) -> str:
    """A capacity or price: integers without a decimal point, else at most two decimals."""
    return str(int(x)) if float(x).is_integer() else f"{x:.2f}".rstrip("0").rstrip(".")


def _offset(lat: float, lon: float, dx_km: float, dy_km: float) -> tuple[float, float]:
    """The point dx_km east and dy_km north of (lat, lon)."""
    return geo.offset(lat, lon, dx_km, dy_km)


def _km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Distance in km between two (lat, lon) points (core.geo's local ellipsoid: within 1.2e-5 of geodesic)."""
    return geo.local_km1(a[0], a[1], b[0], b[1])


def _star_ring(rng: Random, radius_km: float, n_vertices: int) -> list[tuple[float, float]]:
    """An irregular ring around the origin as (angle, radius_km) pairs with strictly increasing angles.

    Every vertex sits on its own ray from the centre, so the ring is star-shaped around the centre: it cannot
    intersect itself and it always contains the centre.
    """
    step = 2 * math.pi / n_vertices
    start = rng.uniform(0, step)
    ring = []
    for i in range(n_vertices):
        a = start + i * step + rng.uniform(-0.3, 0.3) * step
        r = radius_km * rng.uniform(0.78, 1.15)
        ring.append((a, r))
    return ring


def _ring_wkt(lat: float, lon: float, ring: Sequence[tuple[float, float]]) -> str:
    pts = []
    for a, r in ring:
        plat, plon = _offset(lat, lon, r * math.cos(a), r * math.sin(a))
        pts.append(f"{plon:.6f} {plat:.6f}")
    pts.append(pts[0])
    return "POLYGON ((" + ", ".join(pts) + "))"


def _safe_radius_km(ring: Sequence[tuple[float, float]]) -> float:
    """A radius whose disc around the centre lies inside the star-shaped ring.

    The triangle (centre, v_i, v_i+1) contains the one with both vertices pulled in to min(r_i, r_i+1); the
    chord of that one is at least min(r) * cos(gap / 2) from the centre.
    """
    best = math.inf
    n = len(ring)
    for i in range(n):
        a1, r1 = ring[i]
        a2, r2 = ring[(i + 1) % n]
        gap = (a2 - a1) % (2 * math.pi)
        best = min(best, min(r1, r2) * math.cos(gap / 2))
    return 0.97 * best


def _in_disc(rng: Random, lat: float, lon: float, radius_km: float) -> tuple[float, float]:
    a = rng.uniform(0, 2 * math.pi)
    r = radius_km * math.sqrt(rng.random())
    return _offset(lat, lon, r * math.cos(a), r * math.sin(a))


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _weighted(rng: Random, items: Sequence, weights: Sequence[float]):
    return rng.choices(items, weights=weights, k=1)[0]


# ----------------------------------------------------------------------------------------------------
# people


_SURNAMES = ("王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高郑梁谢宋唐许邓冯韩曹曾彭萧"
             "蔡潘田董袁于余叶蒋杜苏魏程吕丁沈任姚卢傅钟姜崔谭廖范汪陆金石戴贾"
             "韦夏邱方侯邹熊孟秦白江薛尹段雷黎史龙陶贺顾毛郝龚邵万钱严向汤")
_GIVEN = ("伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛",
          "明", "超", "秀英", "霞", "平", "刚", "桂英", "婷", "雪", "琳", "浩然", "宇", "欣怡", "晨",
          "俊杰", "鑫", "佳", "悦", "思远", "雨桐", "子涵", "梓萱", "轩", "博文", "斌", "鹏", "玲",
          "红梅", "建国", "志华", "国强", "丹", "蓉", "小川", "渝", "一诺", "嘉怡", "晓东", "春燕",
          "德华", "文静", "海燕", "永红", "家豪", "诗琪")
_MOBILE_PREFIXES = ("133", "135", "136", "137", "138", "139", "150", "151", "152", "153", "158", "159", "177",
                    "180", "181", "182", "183", "187", "188", "189", "199")


def _person(rng: Random) -> str:
    return rng.choice(_SURNAMES) + rng.choice(_GIVEN)


def _phone(rng: Random) -> str:
    return rng.choice(_MOBILE_PREFIXES) + f"{rng.randrange(10**8):08d}"


# ----------------------------------------------------------------------------------------------------
# the catalogue (shared by both generators)

# sku, name, temp_class, fragile, unit_l, unit_kg, shelf_life_days, min_c, max_c, max_on_board_min, popularity
_CATALOGUE: tuple[tuple, ...] = (
    ("NAVEL-GN-5KG", "赣南脐橙 5kg 箱 (Gannan navel oranges)", "ambient", 0, 12.0, 5.3, 30, 5, 25, None, 9),
    ("NANFENG-TANG-2KG", "南丰蜜桔 2kg (Nanfeng tangerines, Jiangxi)", "ambient", 0, 6.0, 2.6, 21,
     5, 25, None, 4),
    ("KIWI-CX-2KG", "苍溪红心猕猴桃 2kg (Cangxi red-heart kiwi)", "chilled", 0, 5.0, 2.2, 21, 0, 8, None, 6),
    ("LOQUAT-LQ-1KG", "龙泉驿枇杷 1kg (Longquanyi loquats)", "chilled", 1, 3.0, 1.1, 5, 0, 8, 360, 3),
    ("STRAWBERRY-500G", "双流草莓 500g (strawberries)", "chilled", 1, 2.0, 0.55, 3, 0, 4, 240, 6),
    ("EGG-30", "散养土鸡蛋 30 枚 (free-range eggs, 30-pack)", "chilled", 1, 3.5, 1.9, 30, 0, 8, None, 8),
    ("MILK-1L", "鲜牛奶 1L (fresh milk)", "chilled", 0, 1.1, 1.05, 7, 0, 4, 360, 9),
    ("YOGHURT-4X100G", "原味酸奶 4×100g (yoghurt)", "chilled", 0, 0.5, 0.45, 21, 0, 4, 480, 6),
    ("TOFU-500G", "嫩豆腐 500g (soft tofu)", "chilled", 0, 0.6, 0.52, 3, 0, 4, None, 5),
    ("NOODLE-FRESH-500G", "鲜切面 500g (fresh noodles)", "chilled", 0, 0.8, 0.5, 3, 0, 4, None, 4),
    ("PORK-BELLY-500G", "冷鲜五花肉 500g (chilled pork belly)", "chilled", 0, 0.6, 0.5, 4, 0, 4, 360, 5),
    ("RABBIT-HEAD-6", "麻辣兔头 6 只装 (spicy rabbit heads)", "chilled", 0, 1.5, 0.9, 5, 0, 4, 480, 4),
    ("SAUSAGE-SC-500G", "川味香肠 500g (Sichuan sausage)", "chilled", 0, 0.7, 0.5, 60, 0, 8, None, 6),
    ("LARO-500G", "四川腊肉 500g (cured pork)", "chilled", 0, 0.7, 0.5, 90, 0, 8, None, 5),
    ("CHAOSHOU-FZ-400G", "龙抄手 速冻 400g (Long Chaoshou wontons, frozen)", "frozen", 0, 0.9, 0.42, 180,
     -25, -18, None, 6),
    ("TANGYUAN-FZ-500G", "赖汤圆 速冻 500g (tangyuan, frozen)", "frozen", 0, 0.9, 0.52, 270,
     -25, -18, None, 5),
    ("DUMPLING-FZ-1KG", "猪肉白菜水饺 1kg (pork and cabbage dumplings, frozen)", "frozen", 0, 1.8, 1.02, 180,
     -25, -18, None, 4),
    ("HOTPOT-BASE-FZ-500G", "牛油火锅底料 冻品 500g (beef tallow hotpot base, frozen)", "frozen", 0,
     0.6, 0.52, 365, -25, -18, None, 4),
    ("WINGS-FZ-1KG", "冷冻鸡翅中 1kg (frozen chicken wings)", "frozen", 0, 1.6, 1.0, 270, -25, -18, None, 3),
    ("DOUBANJIANG-PX-500G", "郫县豆瓣 500g (Pixian doubanjiang)", "ambient", 0, 0.5, 0.55, 720,
     5, 25, None, 4),
    ("CHILI-OIL-250G", "红油辣子 250g 玻璃瓶 (chili oil, glass jar)", "ambient", 1, 0.4, 0.45, 365,
     5, 25, None, 3),
    ("SWEET-POTATO-2KG", "红心红薯 2kg (sweet potatoes)", "ambient", 0, 3.5, 2.05, 30, 10, 25, None, 3),
    ("RICE-5KG", "五常大米 5kg (rice)", "ambient", 0, 6.5, 5.05, 365, 5, 25, None, 4),
    ("RICE-NOODLE-JX-1KG", "江西米粉 1kg (Jiangxi rice noodles, dried)", "ambient", 0, 2.0, 1.02, 365,
     5, 25, None, 2),
    ("TEA-ZYQ-100G", "竹叶青绿茶 100g (Zhuyeqing green tea)", "ambient", 0, 0.4, 0.15, 540, 5, 25, None, 2),
    ("BOKCHOY-500G", "青菜 500g (bok choy)", "chilled", 0, 1.5, 0.5, 3, 0, 8, None, 5),
)


def _product_rows() -> list[Row]:
    rows = []
    for sku, name, cls, fragile, unit_l, unit_kg, shelf, min_c, max_c, max_board, _pop in _CATALOGUE:
        rows.append({
            "sku": sku, "name": name, "temp_class": cls, "fragile": str(fragile), "unit_l": _num(unit_l),
            "unit_kg": _num(unit_kg), "shelf_life_days": str(shelf), "min_c": _num(min_c),
            "max_c": _num(max_c),
            "max_on_board_min": "" if max_board is None else str(max_board),
        })
    return rows


_SKUS = tuple(c[0] for c in _CATALOGUE)
_POPULARITY = tuple(c[10] for c in _CATALOGUE)
_SHELF = {c[0]: c[6] for c in _CATALOGUE}
_MULTI_QTY = {"MILK-1L", "YOGHURT-4X100G", "TOFU-500G", "CHAOSHOU-FZ-400G", "TANGYUAN-FZ-500G",
              "NAVEL-GN-5KG"}


def _lines(rng: Random) -> list[tuple[str, int]]:
    n = _weighted(rng, (1, 2, 3, 4), (35, 35, 20, 10))
    chosen: list[str] = []
    while len(chosen) < n:
        sku = _weighted(rng, _SKUS, _POPULARITY)
        if sku not in chosen:
            chosen.append(sku)
    out = []
    for sku in chosen:
        hi = 4 if sku in _MULTI_QTY else 2
        q = _weighted(rng, range(1, hi + 1), (70, 20, 6, 4)[:hi])
        out.append((sku, q))
    return out


_WINDOWS = (("08:00", "10:00"), ("09:00", "11:00"), ("10:00", "12:00"), ("08:00", "11:00"),
            ("11:00", "13:00"), ("13:00", "15:00"), ("14:00", "16:00"), ("14:00", "17:00"),
            ("15:00", "17:00"), ("16:00", "18:00"), ("18:00", "20:00"), ("17:00", "20:00"))
_WINDOW_WEIGHTS = (14, 12, 12, 6, 8, 8, 10, 5, 8, 8, 5, 4)
_PICKUP_WINDOWS = (("09:00", "12:00"), ("12:00", "15:00"), ("16:00", "19:00"), ("17:00", "20:00"))
_NOTES = ("请放门口鲜奶箱 (leave in the milk box)", "到了请提前电话联系 (call before arriving)",
          "小区门禁，到门口打电话 (gated estate, call at the gate)",
          "易碎，轻拿轻放 (fragile, handle with care)", "放物业前台 (leave at the property desk)",
          "不要敲门，宝宝在睡觉 (don't knock, baby asleep)")


# ----------------------------------------------------------------------------------------------------
# Chengdu


@dataclass(frozen=True)
class _Site:
    code: str
    kind: str
    name: str
    lat: float
    lon: float
    district: str
    streets: tuple[str, ...]
    radius_km: float | None  # None: empty service_area_wkt (5 km)
    opens: str
    closes: str
    capacity: tuple[int, int, int]  # frozen_l, chilled_l, ambient_l staged per day
    weight: float  # share of the city's orders


# WGS-84 coordinates of real places (approximate to a few hundred metres).
_CHENGDU_SITES: tuple[_Site, ...] = (
    _Site("FS-01", "flagship", "春熙路旗舰店 (Chunxi Road flagship)", 30.65620, 104.08120, "锦江区",
          ("春熙路南段", "总府路", "红星路三段", "大慈寺路", "东大街", "书院西街", "上东大街", "青年路"),
          5.0, "07:00", "22:00", (1500, 3000, 6000), 3.0),
    _Site("FS-02", "flagship", "天府软件园旗舰店 (Tianfu Software Park flagship)", 30.54450, 104.06650,
          "高新区", ("天府大道中段", "天府三街", "天府四街", "天府五街", "益州大道中段", "府城大道西段",
                     "交子大道", "锦城大道"),
          4.8, "07:00", "22:00", (1500, 3000, 6000), 2.6),
    _Site("HUB-01", "hub", "玉林社区服务中心 (Yulin community hub)", 30.63050, 104.05450, "武侯区",
          ("玉林北路", "玉林南路", "玉林西路", "芳草街", "芳草东街", "二环路南一段"),
          2.6, "07:00", "22:00", (100, 250, 500), 0.35),
    _Site("HUB-02", "hub", "金沙社区店 (Jinsha community hub)", 30.68100, 104.01500, "青羊区",
          ("金沙遗址路", "青羊大道", "蜀辉路", "清江西路", "金阳路"),
          3.0, "07:00", "22:00", (120, 300, 600), 1.1),
    _Site("HUB-03", "hub", "沙湾社区店 (Shawan community hub)", 30.68650, 104.06000, "金牛区",
          ("沙湾路", "西安北路", "营门口路", "一环路北二段", "马鞍北路"),
          2.8, "07:00", "22:00", (120, 300, 600), 1.1),
    _Site("HUB-04", "hub", "建设路社区服务中心 (Jianshe Road community hub)", 30.67450, 104.10600, "成华区",
          ("建设路", "建设北路二段", "府青路二段", "双林路", "二环路东二段"),
          2.7, "07:30", "21:30", (100, 250, 500), 0.35),
    _Site("HUB-05", "hub", "攀成钢社区店 (Panchenggang community hub)", 30.63000, 104.11100, "锦江区",
          ("锦华路一段", "静明路", "汇源南路", "东三环路二段", "锦东路"),
          3.0, "07:00", "22:00", (120, 300, 600), 1.0),
    _Site("HUB-06", "hub", "大源社区店 (Dayuan community hub)", 30.56000, 104.03300, "高新区",
          ("大源北街", "剑南大道中段", "天府二街", "盛邦街", "大源中央公园路"),
          3.2, "07:00", "22:00", (120, 300, 600), 1.1),
    _Site("HUB-07", "hub", "双流东升社区店 (Dongsheng, Shuangliu community hub)", 30.57600, 103.92300,
          "双流区", ("棠湖北路", "棠湖西路", "藏卫路", "白衣上街", "星空路"),
          4.5, "07:00", "21:30", (150, 350, 800), 1.0),
    _Site("HUB-08", "hub", "郫都犀浦社区店 (Xipu, Pidu community hub)", 30.75750, 103.97200, "郫都区",
          ("国宁西路", "犀安路", "校园路", "百草路", "南北大道"),
          4.2, "07:00", "21:30", (150, 350, 700), 0.9),
    _Site("HUB-09", "hub", "龙泉驿社区店 (Longquan, Longquanyi community hub)", 30.56000, 104.27000,
          "龙泉驿区", ("驿都中路", "北京路", "龙都南路", "星光西路", "建材路"),
          None, "07:00", "21:30", (150, 350, 800), 0.9),
    _Site("HUB-10", "hub", "华阳社区店 (Huayang, Tianfu New Area community hub)", 30.50000, 104.06000,
          "天府新区", ("华阳大道一段", "正西街", "广都大道", "天府大道南段", "华府大道一段"),
          4.0, "07:00", "22:00", (150, 350, 800), 1.0),
    _Site("HUB-11", "hub", "驷马桥社区店 (Simaqiao community hub)", 30.70000, 104.09300, "成华区",
          ("驷马桥路", "府青路三段", "二环路北四段", "昭觉寺南路", "北站东一路"),
          2.8, "07:00", "22:00", (120, 300, 600), 0.9),
    _Site("HUB-12", "hub", "新都社区店 (Xindu community hub)", 30.82350, 104.15900, "新都区",
          ("新都大道", "桂湖中路", "马超西路", "蜀龙大道中段", "新中路"),
          None, "07:00", "21:30", (150, 350, 800), 0.8),
)

# Real places well outside every service area: orders addressed there cannot be served by anyone.
_OUTSIDE_PLACES = (
    ("都江堰市", "幸福街道 灌口路", 30.99850, 103.64700),
    ("彭州市", "天府东路", 30.99000, 103.95800),
    ("简阳市", "简城街道 东门街", 30.41100, 104.54700),
    ("新津区", "五津街道 五津西路", 30.41400, 103.81100),
    ("金堂县", "赵镇 十里大道", 30.86200, 104.41200),
    ("崇州市", "崇阳街道 蜀州中路", 30.63000, 103.67300),
)

# vans: depot -> list of (kind, shift_start, shift_end); kinds index _VAN_TYPES
_VAN_TYPES = {
    # frozen_l, chilled_l, ambient_l, max_kg, speed_kmh, cost_per_km, fixed_cost
    "large": (600, 1800, 1600, 1200, 25, 1.8, 260),
    "medium": (300, 1000, 1000, 800, 27, 1.4, 200),
    "mini": (120, 400, 600, 450, 28, 1.0, 150),
}
_CHENGDU_VANS: tuple[tuple[str, str, str, str], ...] = (
    ("FS-01", "large", "07:30", "17:30"), ("FS-01", "large", "07:30", "17:30"),
    ("FS-01", "medium", "08:00", "18:00"), ("FS-01", "medium", "11:30", "21:00"),
    ("FS-02", "large", "07:30", "17:30"), ("FS-02", "large", "07:30", "17:30"),
    ("FS-02", "medium", "08:00", "18:00"), ("FS-02", "medium", "11:30", "21:00"),
    ("HUB-02", "mini", "07:30", "17:30"), ("HUB-03", "mini", "07:30", "17:30"),
    ("HUB-05", "mini", "08:00", "18:00"), ("HUB-06", "mini", "07:30", "17:30"),
    ("HUB-07", "medium", "07:30", "17:30"), ("HUB-07", "mini", "10:00", "20:00"),
    ("HUB-08", "medium", "07:30", "17:30"),
    ("HUB-09", "medium", "07:30", "17:30"), ("HUB-09", "mini", "10:00", "20:00"),
    ("HUB-10", "medium", "07:30", "17:30"), ("HUB-10", "mini", "10:00", "20:00"),
    ("HUB-11", "mini", "07:30", "17:30"), ("HUB-12", "medium", "07:30", "17:30"),
)


def _geodesic_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    return geo.geodesic_km(a[0], a[1], b[0], b[1])


def _van_row(i: int, depot: str, kind: str, start: str, end: str, width: int = 2, dev_width: int = 4) -> Row:
    fz, ch, am, kg, speed, per_km, fixed = _VAN_TYPES[kind]
    return {
        "code": f"VAN-{i:0{width}d}", "depot": depot, "frozen_l": _num(fz), "chilled_l": _num(ch),
        "ambient_l": _num(am), "max_kg": _num(kg), "shift_start": start, "shift_end": end,
        "speed_kmh": _num(speed), "cost_per_km": _num(per_km), "fixed_cost": _num(fixed),
        "device": f"TL-{i:0{dev_width}d}",
    }


def chengdu(delivery_date: date, n_orders: int = 300, seed: int = 7) -> Scenario:
    """The Chengdu sample: 2 flagships, 12 hubs, 26 products, lots with expiries, 21 vans, n_orders orders.

    Orders that deliberately cannot be served as asked: a few addressed in towns outside every service area,
    a few with a 07:00-07:30 window (before any van can reach them), one 21:00-21:30, a few tight 30-minute
    ones. Stock: several lots per SKU at the flagships (FEFO), a few lots already expired on the delivery
    date, and a few SKUs short or missing at hubs that need them (transfers from the parent flagship).
    """
    from shapely import contains_xy, wkt

    sites = _CHENGDU_SITES
    flagships = [s for s in sites if s.kind == "flagship"]
    hubs = [s for s in sites if s.kind == "hub"]
    geo_rng = Random(f"chengdu-areas-{seed}")

    # ---- nodes
    scen = Scenario()
    areas = {}
    for s in sites:
        parent = ""
        if s.kind == "hub":
            parent = min(flagships, key=lambda f, s=s: _geodesic_km((s.lat, s.lon), (f.lat, f.lon))).code
        area_wkt = ""
        if s.radius_km is not None:
            ring = _star_ring(geo_rng, s.radius_km, geo_rng.randint(8, 14))
            area_wkt = _ring_wkt(s.lat, s.lon, ring)
            areas[s.code] = wkt.loads(area_wkt)
        fz, ch, am = s.capacity
        scen.nodes.append({
            "code": s.code, "kind": s.kind, "name": s.name, "lat": f"{s.lat:.6f}", "lon": f"{s.lon:.6f}",
            "parent": parent, "opens": s.opens, "closes": s.closes, "frozen_l": str(fz), "chilled_l": str(ch),
            "ambient_l": str(am), "service_area_wkt": area_wkt,
        })
    scen.products = _product_rows()

    def covers(site: _Site, lat: float, lon: float) -> bool:
        if site.code in areas:
            return bool(contains_xy(areas[site.code], lon, lat))
        return _km((lat, lon), (site.lat, site.lon)) <= DEFAULT_RADIUS_KM - 0.05

    def point_in(site: _Site, rng: Random) -> tuple[float, float]:
        if site.code not in areas:
            return _in_disc(rng, site.lat, site.lon, 4.7)
        minx, miny, maxx, maxy = areas[site.code].bounds
        while True:
            lon, lat = rng.uniform(minx, maxx), rng.uniform(miny, maxy)
            if contains_xy(areas[site.code], lon, lat):
                return lat, lon

    # ---- vans and drivers
    depots = set()
    drv_rng = Random(f"chengdu-drivers-{seed}")
    for i, (depot, kind, start, end) in enumerate(_CHENGDU_VANS, start=1):
        van = _van_row(i, depot, kind, start, end)
        scen.vehicles.append(van)
        depots.add(depot)
        scen.drivers.append({"username": f"driver{i:02d}", "name": _person(drv_rng), "vehicle": van["code"]})

    # ---- orders
    rng = Random(f"chengdu-orders-{seed}")
    day = delivery_date.isoformat()
    refs = [f"CD-{delivery_date:%y%m%d}-{i:04d}" for i in range(1, n_orders + 1)]
    special = list(range(n_orders))
    rng.shuffle(special)
    n_out = max(1, round(n_orders * 5 / 300)) if n_orders >= 20 else 0
    n_early = 4 if n_orders >= 50 else 0
    n_tight = 3 if n_orders >= 50 else 0
    n_late = 1 if n_orders >= 50 else 0
    outside = set(special[:n_out])
    early = set(special[n_out:n_out + n_early])
    tight = set(special[n_out + n_early:n_out + n_early + n_tight])
    late = set(special[n_out + n_early + n_tight:n_out + n_early + n_tight + n_late])
    pickup_hubs = hubs
    pickup_weights = [2.5 if h.code not in depots else 1.0 for h in hubs]
    # node -> sku -> qty: where the orders will likely be allocated (sizes the hubs' stock)
    projected: dict[str, Counter] = defaultdict(Counter)
    for i, ref in enumerate(refs):
        note = ""
        pickup_node = ""
        if i in outside:
            k = sum(1 for j in outside if j < i)
            district, street, plat, plon = _OUTSIDE_PLACES[k % len(_OUTSIDE_PLACES)]
            lat, lon = _in_disc(rng, plat, plon, 1.0)
            mode = "delivery"
            address = f"成都市{district}{street}{rng.randint(1, 300)}号"
            target = None
        elif rng.random() < 0.10 and i not in early | tight | late:
            mode = "pickup"
            hub = _weighted(rng, pickup_hubs, pickup_weights)
            pickup_node = hub.code
            lat, lon = point_in(hub, rng)
            address = f"成都市{hub.district}{rng.choice(hub.streets)}{rng.randint(1, 400)}号"
            target = hub.code
        else:
            mode = "delivery"
            site = _weighted(rng, sites, [s.weight for s in sites])
            lat, lon = point_in(site, rng)
            street = f"{rng.choice(site.streets)}{rng.randint(1, 400)}号"
            flat = f"{rng.randint(1, 18)}栋{rng.randint(1, 4)}单元{rng.randint(1, 32)}{rng.randint(1, 6):02d}"
            address = f"成都市{site.district}{street}{flat}"
            cands = [s for s in sites if s.code in depots and covers(s, lat, lon)]
            target = min(cands, key=lambda s: _km((lat, lon), (s.lat, s.lon))).code if cands else None
        if mode == "pickup":
            ws, we = rng.choice(_PICKUP_WINDOWS)
        elif i in early:
            ws, we = "07:00", "07:30"
        elif i in tight:
            start = rng.choice((9 * 60, 12 * 60, 15 * 60 + 30))
            ws, we = _hhmm(start), _hhmm(start + 30)
        elif i in late:
            ws, we = "21:00", "21:30"
        else:
            ws, we = _weighted(rng, _WINDOWS, _WINDOW_WEIGHTS)
        lines = _lines(rng)
        allow_split = "1" if len(lines) > 1 and rng.random() < 0.08 else "0"
        if not note and rng.random() < 0.12:
            note = rng.choice(_NOTES)
        customer, phone = _person(rng), _phone(rng)
        for sku, qty in lines:
            scen.orders.append({
                "order_ref": ref, "delivery_date": day, "mode": mode, "lat": f"{lat:.6f}",
                "lon": f"{lon:.6f}", "window_start": ws, "window_end": we, "sku": sku, "qty": str(qty),
                "pickup_node": pickup_node, "customer": customer, "phone": phone, "address": address,
                "allow_split": allow_split, "note": note,
            })
            if target:
                projected[target][sku] += qty

    # ---- stock
    scen.stock = _chengdu_stock(Random(f"chengdu-stock-{seed}"), delivery_date, sites, scen.nodes, projected)
    return scen


def _lot_row(node: str, sku: str, lot: str, qty: int, expires: date) -> Row:
    return {"node": node, "sku": sku, "lot": lot, "qty": str(qty), "expires": expires.isoformat()}


def _chengdu_stock(rng: Random, day: date, sites: Sequence[_Site], nodes: list[Row],
                   projected: dict[str, Counter]) -> list[Row]:
    parent_of = {n["code"]: n["parent"] for n in nodes}
    children: dict[str, list[str]] = defaultdict(list)
    for code, parent in parent_of.items():
        if parent:
            children[parent].append(code)
    serial = 0
    rows: list[Row] = []
    flag_lots: dict[tuple[str, str], list[tuple[date, str]]] = {}  # usable lots (expires, lot), oldest first

    def new_lot(sku: str, expires: date) -> str:
        nonlocal serial
        serial += 1
        produced = expires - timedelta(days=_SHELF[sku])
        return f"L{produced:%y%m%d}-{serial:03d}"

    # near-expiry lots that are already expired on the delivery day: (node, sku, days before the day)
    expired_pairs = {("FS-01", "MILK-1L"): 1, ("FS-01", "STRAWBERRY-500G"): 1, ("FS-02", "TOFU-500G"): 2,
                     ("FS-02", "YOGHURT-4X100G"): 1, ("FS-01", "NOODLE-FRESH-500G"): 1}
    for f in (s for s in sites if s.kind == "flagship"):
        for sku in _SKUS:
            shelf = _SHELF[sku]
            demand = projected[f.code][sku] + sum(projected[c][sku] for c in children[f.code])
            total = max(40, 3 * demand + rng.randint(10, 40))
            n_lots = rng.randint(2, 4) if shelf > 3 else rng.randint(2, 3)
            horizon = max(n_lots, shelf)
            offsets = sorted(rng.sample(range(0, horizon + 1), n_lots))  # days after the delivery day
            lots = []
            shares = [rng.uniform(0.5, 1.5) for _ in range(n_lots)]
            for k, off in enumerate(offsets):
                expires = day + timedelta(days=off)
                lot = new_lot(sku, expires)
                qty = max(3, round(total * shares[k] / sum(shares)))
                lots.append((expires, lot))
                rows.append(_lot_row(f.code, sku, lot, qty, expires))
            if (f.code, sku) in expired_pairs:
                expires = day - timedelta(days=expired_pairs[(f.code, sku)])
                rows.append(_lot_row(f.code, sku, new_lot(sku, expires), rng.randint(4, 12), expires))
            flag_lots[(f.code, sku)] = lots

    # hubs: lots received from the parent flagship (same lot codes), sized to the hub's likely orders
    hubs = [s for s in sites if s.kind == "hub"]
    demanded = sorted((h.code, sku) for h in hubs for sku in _SKUS if projected[h.code][sku] >= 2)
    picks = rng.sample(demanded, min(len(demanded), 5))
    short = set(picks[:3])  # stocked below demand
    missing = set(picks[3:])  # not stocked at all although demanded
    for h in hubs:
        parent = parent_of[h.code]
        for sku in _SKUS:
            want = projected[h.code][sku]
            if (h.code, sku) in missing or (want == 0 and rng.random() < 0.5):
                continue
            if (h.code, sku) in short:
                total = max(1, want // 2)
            else:
                total = want + max(2, round(want * 0.4)) + rng.randint(0, 6)
            lots = flag_lots[(parent, sku)]
            n = 1 if total < 6 or len(lots) < 2 else rng.randint(1, 2)
            first = rng.choice((0, 0, 1)) if len(lots) > n else 0
            chosen = lots[first:first + n]
            left = total
            for k, (expires, lot) in enumerate(chosen):
                qty = left if k == len(chosen) - 1 else max(1, left // 3)
                left -= qty
                rows.append(_lot_row(h.code, sku, lot, qty, expires))
        if h.code == "HUB-05":  # a hub holding a lot that expired the day before
            expires = day - timedelta(days=1)
            rows.append(_lot_row(h.code, "MILK-1L", new_lot("MILK-1L", expires), 6, expires))
    order = {n["code"]: i for i, n in enumerate(nodes)}
    sku_order = {s: i for i, s in enumerate(_SKUS)}
    rows.sort(key=lambda r: (order[r["node"]], sku_order[r["sku"]], r["expires"], r["lot"]))
    return rows


# ----------------------------------------------------------------------------------------------------
# synthetic


def synthetic(n_nodes: int, n_orders: int, delivery_date: date, seed: int = 1,
              centre: tuple[float, float] = (30.66, 104.06)) -> Scenario:
    """A scenario of the Chengdu shape at any size (a flagship per ~12 nodes, hubs around them), in seconds.

    No geometry library is used: service areas are star-shaped rings, and order addresses are drawn in a
    disc that the ring provably contains (0.5 % of the orders are placed far outside every area on purpose).
    """
    if n_nodes < 1:
        raise ValueError("n_nodes must be at least 1")
    rng = Random(f"synthetic-{seed}-{n_nodes}")
    n_flag = max(1, round(n_nodes / 12))
    width = max(2, len(str(n_nodes)))
    region_km = max(8.0, math.sqrt(n_nodes * 40.0 / math.pi))
    clat, clon = centre
    scen = Scenario(products=_product_rows())

    pts = [_in_disc(rng, clat, clon, region_km) for _ in range(n_nodes)]
    codes = [f"FS-{i + 1:0{width}d}" if i < n_flag else f"HUB-{i - n_flag + 1:0{width}d}"
             for i in range(n_nodes)]
    flag_pts = pts[:n_flag]
    safe: list[float] = []
    for i, (code, (lat, lon)) in enumerate(zip(codes, pts, strict=True)):
        kind = "flagship" if i < n_flag else "hub"
        parent = ""
        if kind == "hub":
            parent = codes[min(range(n_flag), key=lambda k, p=(lat, lon): _km(p, flag_pts[k]))]
        if kind == "hub" and rng.random() < 0.05:
            area, r_safe = "", 0.9 * DEFAULT_RADIUS_KM
        else:
            ring = _star_ring(rng, rng.uniform(3.5, 5.0) if kind == "flagship" else rng.uniform(2.5, 4.5),
                              rng.randint(8, 14))
            area, r_safe = _ring_wkt(lat, lon, ring), _safe_radius_km(ring)
        safe.append(r_safe)
        cap = (1500, 3000, 6000) if kind == "flagship" else (rng.choice((100, 120, 150)),
                                                            rng.choice((250, 300, 350)),
                                                            rng.choice((500, 600, 800)))
        scen.nodes.append({
            "code": code, "kind": kind, "name": f"{'旗舰店' if kind == 'flagship' else '社区店'} {code}",
            "lat": f"{lat:.6f}", "lon": f"{lon:.6f}", "parent": parent, "opens": "07:00", "closes": "22:00",
            "frozen_l": str(cap[0]), "chilled_l": str(cap[1]), "ambient_l": str(cap[2]),
            "service_area_wkt": area,
        })

    # vans: 3 per flagship, one for most hubs
    van_depots: list[tuple[str, str]] = []
    for i, code in enumerate(codes):
        if i < n_flag:
            van_depots += [(code, "large"), (code, "large"), (code, "medium")]
        elif rng.random() < 0.85:
            van_depots.append((code, rng.choice(("mini", "mini", "medium"))))
    vw = max(2, len(str(len(van_depots))))
    dw = max(4, vw)
    for i, (depot, kind) in enumerate(van_depots, start=1):
        start, end = ("07:30", "17:30") if rng.random() < 0.8 else ("10:00", "20:00")
        van = _van_row(i, depot, kind, start, end, width=vw, dev_width=dw)
        scen.vehicles.append(van)
        scen.drivers.append({"username": f"driver{i:0{vw}d}", "name": _person(rng), "vehicle": van["code"]})

    # stock: flagships hold every SKU in 2-3 lots, hubs a subset with lots of their parent
    serial = 0
    flag_lots: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for i, code in enumerate(codes):
        if i < n_flag:
            for sku in _SKUS:
                shelf = _SHELF[sku]
                lots = []
                for off in sorted(rng.sample(range(-1, max(3, shelf) + 1), rng.randint(2, 3))):
                    serial += 1
                    expires = delivery_date + timedelta(days=off)
                    lot = f"L{expires - timedelta(days=shelf):%y%m%d}-{serial:0{6}d}"
                    lots.append((expires.isoformat(), lot))
                    scen.stock.append({"node": code, "sku": sku, "lot": lot, "qty": str(rng.randint(30, 300)),
                                       "expires": expires.isoformat()})
                flag_lots[(code, sku)] = lots
        else:
            parent = scen.nodes[i]["parent"]
            for sku in _SKUS:
                if rng.random() < 0.35:
                    continue
                lots = flag_lots[(parent, sku)]
                for expires, lot in lots[: rng.randint(1, 2)]:
                    scen.stock.append({"node": code, "sku": sku, "lot": lot, "qty": str(rng.randint(1, 40)),
                                       "expires": expires})

    # orders
    day = delivery_date.isoformat()
    hub_idx = list(range(n_flag, n_nodes)) or list(range(n_nodes))
    ow = max(4, len(str(n_orders)))
    for o in range(1, n_orders + 1):
        ref = f"SY-{delivery_date:%y%m%d}-{o:0{ow}d}"
        pickup_node = ""
        r = rng.random()
        if r < 0.005:
            a = rng.uniform(0, 2 * math.pi)
            lat, lon = _offset(clat, clon, (region_km + 30) * math.cos(a), (region_km + 30) * math.sin(a))
            mode = "delivery"
        elif r < 0.105:
            k = rng.choice(hub_idx)
            mode, pickup_node = "pickup", codes[k]
            lat, lon = _in_disc(rng, pts[k][0], pts[k][1], safe[k])
        else:
            k = rng.randrange(n_nodes)
            mode = "delivery"
            lat, lon = _in_disc(rng, pts[k][0], pts[k][1], safe[k])
        if mode == "delivery":
            ws, we = _weighted(rng, _WINDOWS, _WINDOW_WEIGHTS)
        else:
            ws, we = rng.choice(_PICKUP_WINDOWS)
        lines = _lines(rng)
        split = "1" if len(lines) > 1 and rng.random() < 0.08 else "0"
        customer, phone = _person(rng), _phone(rng)
        slat, slon = f"{lat:.6f}", f"{lon:.6f}"
        for sku, qty in lines:
            scen.orders.append({
                "order_ref": ref, "delivery_date": day, "mode": mode, "lat": slat, "lon": slon,
                "window_start": ws, "window_end": we, "sku": sku, "qty": str(qty), "pickup_node": pickup_node,
                "customer": customer, "phone": phone, "address": f"合成地址 {ref}", "allow_split": split,
                "note": "",
            })
    return scen


# ----------------------------------------------------------------------------------------------------
# command line


def _tomorrow() -> date:
    from core.timeutil import local_tomorrow  # COLDCHAIN_TIMEZONE through core.settings

    return local_tomorrow()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m warehouses.samplegen",
                                description="Write the Chengdu sample scenario directory.")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--date", type=date.fromisoformat, default=None,
                   help="delivery date YYYY-MM-DD (default: tomorrow)")
    p.add_argument("--orders", type=int, default=300, help="number of orders (default 300)")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    day = args.date or _tomorrow()
    scen = chengdu(day, n_orders=args.orders, seed=args.seed)
    write_scenario(scen, args.out_dir)
    n_orders = len({r["order_ref"] for r in scen.orders})
    print(f"wrote {args.out_dir}: {len(scen.nodes)} nodes, {len(scen.products)} products, "
          f"{len(scen.stock)} lots, {len(scen.vehicles)} vans, {n_orders} orders ({len(scen.orders)} lines) "
          f"for {day}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

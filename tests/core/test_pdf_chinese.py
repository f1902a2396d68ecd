"""Chinese text in every PDF: route sheets and pick lists embed a CJK font, so a driver can read names,
addresses, phone numbers and products in any viewer, also one with no Chinese font of its own.

The scenario is written here (not taken from tests/scenario_files.py) so that every date in it derives
from the day the test runs and every field a sheet prints carries Chinese.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pytest

from core import pdf
from core.timeutil import local_tomorrow
from tests.support import embedded, font_dicts, squeeze

pypdf = pytest.importorskip("pypdf", reason="pypdf is in the test extras: pip install '.[test]'")

DEPOT_NAME = "春熙路旗舰店"
DRIVER = "王师傅"
PRODUCTS = {"EGG-30": "土鸡蛋30枚", "DUMP-1": "龙抄手", "BEAN-1": "郫县豆瓣酱", "FISH-1": "鳜鱼"}
# (ref, lat, lon, customer, phone, address, lines)
ORDERS = [
    ("C1", 30.650, 104.070, "张三丰", "13800000001", "锦江区春熙路1号", (("EGG-30", 2), ("DUMP-1", 1))),
    ("C2", 30.670, 104.060, "欧阳娜娜", "13912345678", "青羊区宽窄巷子18号", (("BEAN-1", 3),)),
    ("C3", 30.640, 104.085, "诸葛亮", "028-86661234", "武侯区玉林北路8号附2号", (("FISH-1", 1), ("EGG-30", 1))),
]
AREA = "POLYGON((104.03 30.63, 104.09 30.63, 104.09 30.69, 104.03 30.69, 104.03 30.63))"


def write_scenario(folder: Path, day: date) -> Path:
    """One depot, one van, three Chinese orders for `day`; stock that keeps well past it."""
    keeps = (day + timedelta(days=30)).isoformat()
    files = {
        "nodes.csv": "code,kind,name,lat,lon,parent,opens,closes,frozen_l,chilled_l,ambient_l,service_area_wkt\n"
                     f"FS-01,flagship,{DEPOT_NAME},30.6570,104.0800,,07:00,22:00,2000,5000,8000,\"{AREA}\"\n",
        "products.csv": "sku,name,temp_class,fragile,unit_l,unit_kg,shelf_life_days,min_c,max_c,max_on_board_min\n"
                        f"EGG-30,{PRODUCTS['EGG-30']},chilled,1,3.0,1.8,21,0,8,\n"
                        f"DUMP-1,{PRODUCTS['DUMP-1']},frozen,0,1.2,1.0,180,-25,-18,\n"
                        f"BEAN-1,{PRODUCTS['BEAN-1']},ambient,0,0.5,0.5,365,0,30,\n"
                        f"FISH-1,{PRODUCTS['FISH-1']},chilled,0,2.0,1.5,5,0,4,\n",
        "stock.csv": "node,sku,lot,qty,expires\n" + "".join(
            f"FS-01,{sku},L-{sku},50,{keeps}\n" for sku in PRODUCTS),
        "vehicles.csv": "code,depot,frozen_l,chilled_l,ambient_l,max_kg,shift_start,shift_end,speed_kmh,cost_per_km,"
                        "fixed_cost,device\nVAN-01,FS-01,120,400,600,800,07:30,17:30,28,2.5,150,TL-0001\n",
        "drivers.csv": f"username,name,vehicle\ndriver01,{DRIVER},VAN-01\n",
        "orders.csv": "order_ref,delivery_date,mode,lat,lon,window_start,window_end,sku,qty,pickup_node,customer,phone,"
                      "address\n" + "".join(
            f"{ref},{day.isoformat()},delivery,{lat},{lon},09:00,17:00,{sku},{qty},,{who},{phone},{addr}\n"
            for ref, lat, lon, who, phone, addr, lines in ORDERS for sku, qty in lines),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in files.items():
        (folder / name).write_text(body, encoding="utf-8")
    return folder


@dataclass
class Built:
    day: date
    route_sheet: Path
    pick_list: Path


@pytest.fixture
def built(session, tmp_path: Path) -> Built:  # noqa: ANN001
    """A route sheet and a pick list of tomorrow, made by the code the drivers and pickers use."""
    from fulfillment.picklists import pick_lists, render_pdf
    from fulfillment.scenario import load_scenario
    from fulfillment.service import allocate_day
    from routing.exports import route_sheet_pdf
    from routing.service import plan_depot
    from tests.routing.test_day_plan import same

    day = local_tomorrow()
    report = load_scenario(session, write_scenario(tmp_path / "scenario", day))
    assert not report.errors, [e.as_dict() for e in report.errors]
    allocate_day(session, day)
    plan_depot(day, "FS-01", time_limit=1, sessions=same(session))
    sheet = route_sheet_pdf(session, day, "VAN-01", tmp_path / "VAN-01.pdf")
    picks = render_pdf(pick_lists(session, day), tmp_path / "picklists.pdf")
    return Built(day, sheet, picks)


def page_text(path: Path) -> str:
    return "\n".join(page.extract_text() or "" for page in pypdf.PdfReader(str(path)).pages)


def font_file_bytes(font) -> int:  # noqa: ANN001
    if font.get("/Subtype") == "/Type0":
        font = font["/DescendantFonts"][0].get_object()
    descriptor = font["/FontDescriptor"].get_object()
    return sum(len(descriptor[k].get_object().get_data()) for k in ("/FontFile", "/FontFile2", "/FontFile3")
               if k in descriptor)


# --------------------------------------------------------------------------------------- core.pdf


def gb2312_hanzi() -> list[str]:
    """The 6,763 hanzi of GB2312 (rows 16-87), decoded from their two-byte codes."""
    chars = []
    for hi in range(0xB0, 0xF8):
        for lo in range(0xA1, 0xFF):
            try:
                chars.append(bytes([hi, lo]).decode("gb2312"))
            except UnicodeDecodeError:
                continue  # the five unassigned codes at the end of row 55
    return chars


def test_the_font_covers_gb2312_latin_digits_and_the_marks_the_sheets_print() -> None:
    from reportlab.pdfbase import pdfmetrics

    regular, bold = pdf.register_fonts()
    assert pdf.register_fonts() == (regular, bold)  # once per process, same names
    cmap = pdfmetrics.getFont(regular).face.charToGlyph
    hanzi = gb2312_hanzi()
    assert len(hanzi) == 6763
    missing = [c for c in hanzi if ord(c) not in cmap]
    assert not missing, f"{len(missing)} GB2312 hanzi missing, e.g. {missing[:10]}"
    marks = "0123456789+-#/:.,()[]ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz×—□✓，。：（）号区路"
    assert not [c for c in marks if ord(c) not in cmap]


def test_data_with_markup_characters_prints_as_written_in_the_embedded_face(tmp_path: Path) -> None:
    from reportlab.platypus import Paragraph, Table

    out = tmp_path / "markup.pdf"
    sheet = pdf.styles()
    cell = pdf.paragraph_style("cell", sheet["Normal"], fontSize=9)
    doc = pdf.document(out, title="markup")
    doc.build([Paragraph(pdf.escape("客户 A&B <VIP> 张三"), sheet["Title"]),
               Paragraph("<b>粗体 bold</b> <i>斜体</i>", cell),
               Table([["表格 plain cell", Paragraph("段落", cell)]], style=pdf.table_style())])
    text = squeeze(page_text(out))
    assert squeeze("客户 A&B <VIP> 张三") in text and "粗体bold" in text and "表格plaincell" in text
    fonts = font_dicts(pypdf.PdfReader(str(out)))
    assert fonts and all(embedded(f) and pdf.REGULAR in str(f["/BaseFont"]) for f in fonts), \
        [f.get("/BaseFont") for f in fonts]


def test_a_missing_font_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pdf, "FONT_PACKAGE", "coldchain_no_such_font_package")
    with pytest.raises(RuntimeError, match="pip install paperang-p2-fonts-cjk"):
        pdf.font_path()


# ------------------------------------------------------------------------------------------ text


def test_route_sheet_text_has_the_names_addresses_phones_and_products(built: Built) -> None:
    text = squeeze(page_text(built.route_sheet))
    wanted = [DEPOT_NAME, DRIVER, "送货单", "签收", "易碎", *PRODUCTS.values()]
    for _ref, _lat, _lon, customer, phone, address, _lines in ORDERS:
        wanted += [customer, phone, address]
    missing = [w for w in wanted if squeeze(w) not in text]
    assert not missing, f"not in the route sheet's text: {missing}"
    assert built.day.isoformat() in text


def test_pick_list_text_has_the_node_and_products(built: Built) -> None:
    text = squeeze(page_text(built.pick_list))
    missing = [w for w in [DEPOT_NAME, "拣货单", "易碎", *PRODUCTS.values()] if squeeze(w) not in text]
    assert not missing, f"not in the pick list's text: {missing}"
    assert built.day.isoformat() in text


# ------------------------------------------------------------------------------ fonts and size


def test_every_font_in_both_pdfs_is_embedded(built: Built) -> None:
    for path in (built.route_sheet, built.pick_list):
        fonts = font_dicts(pypdf.PdfReader(str(path)))
        assert fonts, f"{path.name} uses no font at all"
        bare = [str(f.get("/BaseFont")) for f in fonts if not embedded(f)]
        assert not bare, f"{path.name} names fonts it does not embed: {bare}"
        assert all(pdf.REGULAR in str(f.get("/BaseFont")) for f in fonts), [f.get("/BaseFont") for f in fonts]


def test_the_font_is_subset_so_the_pdfs_stay_small(built: Built) -> None:
    collection = pdf.font_path().stat().st_size
    for path, limit in ((built.route_sheet, 100_000), (built.pick_list, 100_000)):
        size = path.stat().st_size
        assert size < limit, f"{path.name} is {size} bytes"
        fonts = font_dicts(pypdf.PdfReader(str(path)))
        carried = sum(font_file_bytes(f) for f in fonts)
        # a whole face would be megabytes: the subsets are a few hundred glyphs at most
        assert 0 < carried < collection / 20, f"{path.name} carries {carried} bytes of font"


# ------------------------------------------------------------------------------------ rendering

POPPLER = shutil.which("pdftoppm") and shutil.which("pdftotext")
DPI = 100


def fontless_env(tmp_path: Path) -> dict[str, str]:
    """A fontconfig that knows no font at all: poppler then draws only what the PDF itself embeds,
    as a phone without a Chinese font would (this machine has Noto CJK, which would hide the defect)."""
    import os

    empty = tmp_path / "no-fonts"
    empty.mkdir()
    conf = tmp_path / "fonts.conf"
    conf.write_text('<?xml version="1.0"?>\n<!DOCTYPE fontconfig SYSTEM "fonts.dtd">\n'
                    f"<fontconfig><dir>{empty}</dir><cachedir>{tmp_path / 'fc-cache'}</cachedir></fontconfig>\n",
                    encoding="utf-8")
    return {**os.environ, "FONTCONFIG_FILE": str(conf)}


def word_boxes(path: Path, env: dict[str, str]) -> list[tuple[str, tuple[float, float, float, float]]]:
    """(word, (x0, y0, x1, y1) in points from the top left) of page 1, as pdftotext -bbox finds them."""
    out = subprocess.run(["pdftotext", "-bbox", "-f", "1", "-l", "1", str(path), "-"], env=env, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    pattern = r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">([^<]*)</word>'
    return [(html.unescape(m[5]), (float(m[1]), float(m[2]), float(m[3]), float(m[4])))
            for m in re.finditer(pattern, out)]


def render(path: Path, env: dict[str, str], tmp_path: Path):  # noqa: ANN201
    from PIL import Image

    stem = tmp_path / path.stem
    subprocess.run(["pdftoppm", "-r", str(DPI), "-gray", "-png", "-f", "1", "-l", "1", "-singlefile", str(path),
                    str(stem)], env=env, check=True, capture_output=True, timeout=60)
    return Image.open(f"{stem}.png").convert("L")


def ink(image, box: tuple[float, float, float, float]) -> float:  # noqa: ANN001
    """The share of dark pixels inside a box given in points."""
    scale = DPI / 72
    crop = image.crop(tuple(round(v * scale) for v in box))
    histogram = crop.histogram()
    return sum(histogram[:128]) / max(sum(histogram), 1)


@pytest.mark.skipif(not POPPLER, reason="pdftoppm/pdftotext (poppler-utils) not installed: "
                                        "apt-get install poppler-utils")
def test_chinese_is_drawn_even_by_a_viewer_without_chinese_fonts(built: Built, tmp_path: Path) -> None:
    env = fontless_env(tmp_path)
    cases = {
        built.route_sheet: [DRIVER, DEPOT_NAME, "送货单", *(o[3] for o in ORDERS), *(o[4] for o in ORDERS),
                            PRODUCTS["FISH-1"], PRODUCTS["DUMP-1"], PRODUCTS["BEAN-1"]],
        built.pick_list: [DEPOT_NAME, "拣货单", *PRODUCTS.values()],
    }
    for path, words in cases.items():
        boxes = word_boxes(path, env)
        image = render(path, env, tmp_path)
        for word in words:
            where = [box for text, box in boxes if word in text]
            assert where, f"{word} is not on page 1 of {path.name}"
            share = ink(image, where[0])
            # glyphs of 8-16 pt text cover roughly 10-40 % of their box; blank (unembedded font, no
            # fallback) is 0
            assert share > 0.05, f"{word} in {path.name} has {share:.1%} ink: drawn blank"

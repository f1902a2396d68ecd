"""A small, valid scenario written as text, so tests can break it one row at a time."""

from __future__ import annotations

from pathlib import Path

AREA_A = "POLYGON((104.03 30.63, 104.09 30.63, 104.09 30.69, 104.03 30.69, 104.03 30.63))"

FILES = {
    "nodes.csv": (
        "code,kind,name,lat,lon,parent,opens,closes,frozen_l,chilled_l,ambient_l,service_area_wkt\n"
        f"FS-01,flagship,春熙路旗舰店,30.6570,104.0800,,07:00,22:00,2000,5000,8000,\"{AREA_A}\"\n"
        "HUB-01,hub,玉林社区店,30.6300,104.0500,FS-01,08:00,21:00,200,600,900,\n"
    ),
    "products.csv": (
        "sku,name,temp_class,fragile,unit_l,unit_kg,shelf_life_days,min_c,max_c,max_on_board_min\n"
        "EGG-30,土鸡蛋30枚,chilled,1,3.0,1.8,21,0,8,\n"
        "DUMP-1,龙抄手,frozen,0,1.2,1.0,180,-25,-18,\n"
        "STRAW-1,草莓,chilled,1,1.5,0.5,4,0,4,240\n"
    ),
    "stock.csv": (
        "node,sku,lot,qty,expires\n"
        "FS-01,EGG-30,L-E1,50,2026-12-10\n"
        "FS-01,DUMP-1,L-D1,80,2027-03-01\n"
        "HUB-01,STRAW-1,L-S1,20,2026-11-26\n"
    ),
    "vehicles.csv": (
        "code,depot,frozen_l,chilled_l,ambient_l,max_kg,shift_start,shift_end,speed_kmh,cost_per_km,fixed_cost,device\n"
        "VAN-01,FS-01,120,400,600,800,07:30,17:30,28,2.5,150,TL-0001\n"
        "VAN-02,HUB-01,0,300,300,500,08:00,18:00,25,2.0,100,TL-0002\n"
    ),
    "drivers.csv": "username,name,vehicle\ndriver01,王师傅,VAN-01\ndriver02,李师傅,VAN-02\n",
    "orders.csv": (
        "order_ref,delivery_date,mode,lat,lon,window_start,window_end,sku,qty,pickup_node,customer,phone,address\n"
        "A1,2026-11-24,delivery,30.650,104.070,09:00,11:00,EGG-30,2,,张三,13800000001,锦江区春熙路1号\n"
        "A1,2026-11-24,delivery,30.650,104.070,09:00,11:00,DUMP-1,1,,张三,13800000001,锦江区春熙路1号\n"
        "A2,2026-11-24,pickup,30.630,104.050,16:00,18:00,STRAW-1,1,HUB-01,李四,13800000002,\n"
    ),
}


def write(directory: Path, overrides: dict[str, str] | None = None, append: dict[str, str] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, body in FILES.items():
        body = (overrides or {}).get(name, body)
        body += (append or {}).get(name, "")
        (directory / name).write_text(body, encoding="utf-8")
    return directory

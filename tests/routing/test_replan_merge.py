"""The pure half of re-planning: what stays, what moves, and what the diff says, on hand-built snapshots.

No database here: ``routing.replan_merge.merge`` takes the snapshot the read step would have made and the
solver's result, and returns plain data. The stored side is covered by tests/routing/test_replan.py.
"""

from __future__ import annotations

import itertools
from datetime import datetime

from core.timeutil import local_at, local_hhmm, local_tomorrow
from routing import solver
from routing.replan_merge import (
    OrderEventDraft,
    RouteDraft,
    _Order,
    _Snapshot,
    _Solved,
    _Stop,
    _Van,
    breakdown,
    cancel_order,
    merge,
)
from routing.service import SERVICE_S

DAY = local_tomorrow()
DEPOT = "FS-01"
POS = {"A": (30.68, 104.04), "B": (30.64, 104.08), "C": (30.67, 104.06), "D": (30.63, 104.04),
       "E": (30.68, 104.08), "F": (30.64, 104.06)}
ORDER_ID = {ref: 100 + i for i, ref in enumerate(POS)}


def secs(hhmm: str) -> float:
    h, m = hhmm.split(":")
    return int(h) * 3600 + int(m) * 60


def at(hhmm: str) -> datetime:
    return local_at(DAY, secs(hhmm))


def order(ref: str, status: str = "planned") -> _Order:
    return _Order(ORDER_ID[ref], ref, status, *POS[ref], (secs("09:00"), secs("17:00")), {"chilled": 24.0}, 3.0,
                  None, [(1, "EGG-30", 8)])


def stop(ref: str, seq: int, eta: str, status: str = "planned", leg_m: float = 1500.0) -> _Stop:
    return _Stop(f"s-{ref.lower()}", seq, ORDER_ID[ref], ref, status, *POS[ref], at(eta), leg_m)


def van(code: str, stops: list[_Stop] | None = None, status: str | None = "planned", start: str = "08:00",
        end: str = "12:00", broken: bool = False) -> _Van:
    had = status is not None
    v = _Van(code, int(code[-2:]), (secs("07:30"), secs("17:30")), 28.0, {"chilled": 100.0}, 800.0, 2.5, 150.0,
             route_status=status, stops=list(stops or []), broken=broken)
    if had:
        v.start_at, v.end_at, v.load = at(start), at(end), {"chilled": 48.0}
        if status in ("started", "done", "broken"):
            v.started_at = at(start)
    return v


def snapshot(vans: list[_Van], orders: list[_Order], now: str, reason: str = "re-planned",
             unserved_before: set[str] | None = None, reload_short: dict[str, str] | None = None) -> _Snapshot:
    return _Snapshot(1, (30.66, 104.06), 7, 1, (), vans, {o.ref: o for o in orders}, at(now), secs(now), reason,
                     unserved_before or set(), reload_short or {})


def trip(code: str, *visits: tuple[str, str], start: str = "08:00", end: str = "13:00",
         distance: float = 9000.0) -> solver.Route:
    """A solver route: (ref, arrival HH:MM) per visit, service right away."""
    return solver.Route(code, secs(start), secs(end), distance, distance / 1000 * 2.5,
                        [solver.Visit(ref, secs(t), secs(t), secs(t) + SERVICE_S, 1200.0) for ref, t in visits],
                        {"chilled": 24.0 * len(visits)})


def solution(*routes: solver.Route, unserved: dict[str, str] | None = None) -> solver.Solution:
    return solver.Solution(list(routes), [solver.Unserved(r, why) for r, why in (unserved or {}).items()],
                           sum(r.distance for r in routes), sum(r.cost for r in routes), 0.1, "test")


def solved(loaded: solver.Solution | None = None, trips: list[solver.Solution] | None = None,
           back: dict[str, float] | None = None, unserved: dict[str, str] | None = None) -> _Solved:
    return _Solved(loaded, trips or [], back or {}, {}, unserved or {}, 0.2)


def ids():  # noqa: ANN201
    """The injected stop id factory: n-1, n-2, ..."""
    counter = itertools.count(1)
    return lambda: f"n-{next(counter)}"


def route_of(merged, code: str) -> RouteDraft:  # noqa: ANN001
    return next(r for r in merged.routes if r.vehicle == code)


def test_a_cancelled_orders_stop_disappears_and_is_in_the_diff() -> None:
    # what _read hands on after a cancel: the order is no longer among the open ones
    snap = snapshot([van("VAN-01", [stop("A", 1, "09:10"), stop("B", 2, "09:40"), stop("C", 3, "10:10")])],
                    [order("A"), order("C")], "08:30", reason="order B cancelled at 08:30")
    out = merge(snap, solved(trips=[solution(trip("VAN-01", ("A", "09:10"), ("C", "09:45")))]),
                cancel_order("B", "customer called"), DAY, DEPOT, ids())

    assert [s.ref for s in route_of(out, "VAN-01").stops] == ["A", "C"]
    assert "B" not in {s.ref for r in out.routes for s in r.stops}
    assert out.diff["cancelled"] == ["B"]
    assert "B" not in {e["order_ref"] for e in out.diff["etas"]}
    assert out.event_effects == [OrderEventDraft("B", "cancelled", "cancelled", {"reason": "customer called"})]
    assert out.stops == 2


def test_a_stop_kept_on_the_same_van_keeps_its_id_with_a_new_seq_and_eta() -> None:
    snap = snapshot([van("VAN-01", [stop("A", 1, "09:10"), stop("B", 2, "09:40")])], [order("A"), order("B")],
                    "08:30")
    new_id = ids()
    out = merge(snap, solved(trips=[solution(trip("VAN-01", ("B", "09:05"), ("A", "09:50")))]), None, DAY, DEPOT,
                new_id)

    route = route_of(out, "VAN-01")
    assert [(s.ref, s.stop_id, s.seq, s.reuse) for s in route.stops] == [("B", "s-b", 1, True), ("A", "s-a", 2, True)]
    assert route.stops[1].times.arrive_at == at("09:50") and route.stops[0].times.arrive_at == at("09:05")
    assert route.stops[1].times.depart_at == at("09:55")
    assert new_id() == "n-1", "no new stop id for a stop that stays on its van"
    etas = {e["order_ref"]: e for e in out.diff["etas"]}
    assert etas["A"] == {"order_ref": "A", "vehicle": "VAN-01", "old_vehicle": "VAN-01", "old": "09:10",
                         "new": "09:50"}
    assert not out.diff["moved"] and not out.order_events and not out.diff["added"]
    assert (route.status, route.start_at, route.end_at) == ("planned", at("08:00"), at("13:00"))


def test_a_stop_moved_to_another_van_gets_a_new_id_and_moved_names_from_and_to() -> None:
    snap = snapshot([van("VAN-01", [stop("A", 1, "09:10"), stop("B", 2, "09:40")]),
                     van("VAN-02", [stop("C", 1, "09:20")])], [order("A"), order("B"), order("C")], "08:30")
    out = merge(snap, solved(trips=[solution(trip("VAN-01", ("A", "09:10")),
                                             trip("VAN-02", ("C", "09:20"), ("B", "09:50")))]),
                None, DAY, DEPOT, ids())

    b = next(s for s in route_of(out, "VAN-02").stops if s.ref == "B")
    assert (b.stop_id, b.reuse, b.order_id, b.seq, b.status) == ("n-1", False, ORDER_ID["B"], 2, "planned")
    assert out.diff["moved"] == [{"order_ref": "B", "from": "VAN-01", "to": "VAN-02", "old_stop_id": "s-b",
                                  "stop_id": "n-1"}]
    assert out.order_events == [OrderEventDraft("B", "replanned", None, {"vehicle": "VAN-02", "depot": DEPOT,
                                                                         "reason": "re-planned", "from": "VAN-01"})]
    assert [s.ref for s in route_of(out, "VAN-01").stops] == ["A"]
    assert out.diff["trips"]["VAN-02"] == [{"load": "depot", "stop_ids": ["s-c", "n-1"]}]


def test_a_started_vans_done_stops_stay_first_with_their_times_untouched() -> None:
    stops = [stop("A", 1, "08:20", "delivered", leg_m=2000.0), stop("B", 2, "08:50", "failed", leg_m=3000.0),
             stop("C", 3, "09:20"), stop("D", 4, "09:50")]
    snap = snapshot([van("VAN-01", stops, status="started")],
                    [order("C", "out_for_delivery"), order("D", "out_for_delivery"), order("E", "allocated")], "09:00")
    loaded = solution(trip("VAN-01", ("D", "09:15"), ("C", "09:40"), start="09:00", end="10:00", distance=6000.0))
    later = solution(trip("VAN-01", ("E", "10:40"), start="10:15", end="11:00", distance=4000.0))
    out = merge(snap, solved(loaded=loaded, trips=[later], back={"VAN-01": secs("10:00")}), None, DAY, DEPOT, ids())

    route = route_of(out, "VAN-01")
    assert [(s.ref, s.stop_id, s.seq, s.status, s.times) for s in route.stops[:2]] == \
        [("A", "s-a", 1, "delivered", None), ("B", "s-b", 2, "failed", None)]  # times None: the rows untouched
    assert [(s.ref, s.stop_id, s.seq) for s in route.stops[2:]] == [("D", "s-d", 3), ("C", "s-c", 4), ("E", "n-1", 5)]
    assert out.diff["kept"] == [{"stop_id": "s-a", "order_ref": "A", "vehicle": "VAN-01", "status": "delivered"},
                                {"stop_id": "s-b", "order_ref": "B", "vehicle": "VAN-01", "status": "failed"}]
    assert (route.status, route.start_at, route.started_at, route.end_at) == \
        ("started", at("08:00"), at("08:00"), at("11:00"))
    assert route.distance_m == 2000.0 + 3000.0 + 6000.0 + 4000.0
    assert out.diff["trips"]["VAN-01"] == [{"load": "aboard", "stop_ids": ["s-d", "s-c"]},
                                           {"load": "depot", "stop_ids": ["n-1"]}]
    assert out.order_events == [OrderEventDraft("E", "planned", "planned", {"vehicle": "VAN-01", "depot": DEPOT,
                                                                            "reason": "re-planned"})]


def test_a_broken_vans_route_ends_at_the_breakdown_with_its_done_stops_only() -> None:
    event = breakdown("VAN-01", at("10:15"), (30.66, 104.07))
    snap = snapshot([van("VAN-01", [stop("A", 1, "09:00", "delivered", leg_m=2500.0), stop("B", 2, "10:40"),
                                    stop("C", 3, "11:20")], status="started", end="12:00", broken=True),
                     van("VAN-02", status=None)],
                    [order("B", "out_for_delivery"), order("C", "out_for_delivery")], "10:15",
                    reason=event.describe(), reload_short={"C": "no free stock at FS-01 to reload EGG-30"})
    out = merge(snap, solved(trips=[solution(trip("VAN-02", ("B", "11:00"), start="10:30", end="11:30"))],
                             unserved={"C": "no free stock at FS-01 to reload EGG-30"}), event, DAY, DEPOT, ids())

    broken = route_of(out, "VAN-01")
    assert (broken.status, broken.end_at, broken.start_at, broken.started_at) == \
        ("broken", at("10:15"), at("08:00"), at("08:00"))
    assert [(s.stop_id, s.status, s.times) for s in broken.stops] == [("s-a", "delivered", None)]
    assert broken.distance_m == 2500.0 and broken.cost == 2.5 * 2.5 and broken.load == {"chilled": 48.0}
    assert [s.ref for s in route_of(out, "VAN-02").stops] == ["B"]
    failed = {"reason": event.describe(), "vehicle": "VAN-01", "depot": DEPOT, "position": [30.66, 104.07]}
    again = {"reason": f"reloaded from {DEPOT} stock after the {event.describe()}"}
    assert out.event_effects == [OrderEventDraft("B", "failed", "failed", failed, at=event.at),
                                 OrderEventDraft("B", "reattempt", "reattempt", again),
                                 OrderEventDraft("C", "failed", "failed", failed, at=event.at),
                                 OrderEventDraft("C", "reattempt", "reattempt", again)]
    # B goes reattempt -> planned on VAN-02; C stays reattempt, unserved
    assert [(e.ref, e.type, e.to_status) for e in out.order_events] == \
        [("B", "planned", "planned"), ("C", "unplanned", None)]
    assert out.diff["moved"] == [{"order_ref": "B", "from": "VAN-01", "to": "VAN-02", "old_stop_id": "s-b",
                                  "stop_id": "n-1"}]
    assert out.diff["unserved"] == [{"order_ref": "C", "reason": "no free stock at FS-01 to reload EGG-30",
                                     "was": "VAN-01"}]


def test_newly_unserved_orders_are_listed_with_their_reason_and_where_they_were() -> None:
    snap = snapshot([van("VAN-01", [stop("A", 1, "09:10"), stop("B", 2, "09:40")])],
                    [order("A"), order("B"), order("D", "allocated"), order("E", "allocated")], "08:30",
                    unserved_before={"E"})
    why = {"B": "time window 09:00-09:30 ends before the earliest arrival 09:41",
           "D": "fleet capacity exhausted: chilled", "E": "fleet capacity exhausted: chilled"}
    out = merge(snap, solved(trips=[solution(trip("VAN-01", ("A", "09:10")), unserved=why)], unserved=why),
                None, DAY, DEPOT, ids())

    assert out.diff["unserved"] == [{"order_ref": "B", "reason": why["B"], "was": "VAN-01"},
                                    {"order_ref": "D", "reason": why["D"], "was": None}]  # E was unserved already
    assert [(u.ref, u.order_id, u.reason) for u in out.unserved] == [(r, ORDER_ID[r], why[r]) for r in "BDE"]
    # B was planned: back to allocated; D was never planned
    assert [(e.ref, e.type, e.to_status) for e in out.order_events] == \
        [("B", "unplanned", "allocated"), ("D", "unplanned", None)]
    assert out.order_events[0].data == {"reason": why["B"], "replan": "re-planned"}
    assert [s.ref for s in route_of(out, "VAN-01").stops] == ["A"]
    assert {e["order_ref"]: e["new"] for e in out.diff["etas"]} == {"A": local_hhmm(at("09:10"))}

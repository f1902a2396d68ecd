"""What the simulator staged, as data: the samples a correct ingestor stores, the multiset comparison
the demo uses, and incidents withheld from the stream (still expected) so that a check can fail."""

from __future__ import annotations

from datetime import timedelta

import pytest

from telemetry.simulator import WITHHOLDABLE, Scenario, Simulation, Tally, tally
from tests.telemetry.test_simulator import START, decode_all, fleet, keys, run_rules


def test_valid_samples_are_exactly_what_the_stream_decodes_to() -> None:
    vans = fleet(3)
    end = START + timedelta(hours=4)
    sim = Simulation(vans, START, end, seed=3, scenario=Scenario(garbage=True))
    decoded = {(s.device, s.seq): s.to_dict() for _m, d in decode_all(vans, sim.messages(), end + timedelta(hours=1))
               for s in d.samples}
    valid = list(sim.valid_samples())
    assert len(valid) == len({(s["device"], s["seq"]) for s in valid}) == sim.expected.samples
    assert {(s["device"], s["seq"]) for s in valid} == set(decoded)
    assert all(500.0 not in s["temp_c"].values() for s in valid)  # the rejected sample is not owed


def test_tally_compares_multisets_key_by_key() -> None:
    rows = tally([("VAN-01", "chilled", "door"), ("VAN-02", None, "shock")],
                 [("VAN-01", "chilled", "door"), ("VAN-01", "chilled", "door"), ("VAN-03", "frozen", "temperature")])
    assert rows == [Tally(("VAN-01", "chilled", "door"), 1, 2), Tally(("VAN-02", None, "shock"), 1, 0),
                    Tally(("VAN-03", "frozen", "temperature"), 0, 1)]
    assert [r.ok for r in tally({"a": 2}, ["a", "a"])] == [True]  # a mapping counts, an iterable repeats


@pytest.mark.parametrize("kind", WITHHOLDABLE)
def test_a_withheld_incident_stays_expected_but_raises_nothing(kind: str) -> None:
    vans = fleet(4)
    end = START + timedelta(hours=6)
    staged = Simulation(vans, START, end, seed=1, scenario=Scenario(garbage=True))
    withheld = Simulation(vans, START, end, seed=1, scenario=Scenario(garbage=True), withhold=[kind])
    assert withheld.expected.alert_keys() == staged.expected.alert_keys()
    incident = next(i for i in withheld.expected.incidents if i.kind == kind)
    alert_kind = {"warming": "temperature", "door_left_open": "door", "hard_shock": "shock"}[kind]
    raised = keys((e.vehicle, e.compartment, e.kind) for e in run_rules(vans, withheld.messages(), end)
                  if e.action == "open")
    assert keys(staged.expected.alert_keys()) == sorted(raised + [(incident.vehicle, incident.compartment or "",
                                                                   alert_kind)])


def test_withholding_an_unknown_incident_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot withhold blip"):
        Simulation(fleet(2), START, START + timedelta(hours=3), withhold=["blip"])

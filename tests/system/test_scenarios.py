"""The scenario library through the real firmware on the unix port, with real peers.

Every scenario must pass every Annex A check its trace shows, show every sequence, state
and fault it expects, and end normally. Each scenario is played once per test session
(module fixture) and the assertions are split so that a failure names what broke.
"""
import os

import pytest

from tools.pilotsim import annexa, expect, orchestrate
from tools.pilotsim.__main__ import library
from tools.pilotsim.scenario import FAULTS, load

LIBRARY = library()
_results = {}


def _play(path):
    if path not in _results:
        _results[path] = orchestrate.run(path, timeout_s=90)
    return _results[path]


@pytest.mark.parametrize("path", LIBRARY, ids=[os.path.basename(p)[:-5] for p in LIBRARY])
def test_scenario(path):
    sc = load(path)
    try:
        res = _play(path)
    except orchestrate.PeerMissing as e:
        pytest.skip(str(e))
    assert res.end is not None, "run did not finish:\n%s" % res.stderr[-3000:]
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.end["t"] >= sc.duration_ms
    failed = [c for c in res.checks if not c.ok]
    assert not failed, annexa.format_report(res.checks)
    assert expect.check(res) == [], orchestrate.format_summary(res)


def test_library_covers_every_fault_and_sequence():
    scs = [load(p) for p in LIBRARY]
    injected = set(s.name for sc in scs for s in sc.steps if s.kind == "fault")
    assert injected == set(FAULTS)
    expected = set(q for sc in scs for q in sc.expect.get("sequences", []))
    for seq in ("plug_in", "close_in_c", "c_to_b_open", "c_to_a_open", "pwm_off_open",
                "diode_fault_open", "cp_short_open", "rcd_trip_open", "fault_f_hold",
                "diode_latched", "rcd_latched", "cp_open_open", "pe_loss_open", "d_no_power",
                "welded_detected", "welded_never_recloses", "not_closing_detected",
                "rcd_selftest_failed", "overcurrent_stop", "overtemp_derate", "overtemp_stop",
                "meter_stale", "network_stall_detected", "limit_applied"):
        assert seq in expected, seq
    # every fault scenario names the fault it must produce
    for sc in scs:
        faults = [s.name for s in sc.steps if s.kind == "fault" and s.args.get("on", True)]
        for f in faults:
            code = annexa.INJECTED_FAULT_CODES.get(f)
            if code:
                assert code in sc.expect.get("faults", []), (sc.name, code)


def test_power_cut_session_record_keeps_the_metered_energy():
    path = [p for p in LIBRARY if p.endswith("power-cut.json")][0]
    try:
        res = _play(path)
    except orchestrate.PeerMissing as e:
        pytest.skip(str(e))
    cut = next(r["t"] for r in res.records if r.get("k") == "fault" and r["name"] == "power_cut")
    delivered = [r["energy_wh"] for r in res.ticks() if r["t"] < cut][-1]
    lost = [p["data"] for p in orchestrate.session_records(res.records)
            if p["data"].get("stop_reason") == "power_loss"]
    assert len(lost) == 1
    # The meter kept its count through the outage: the record can know all of it
    # (one meter refresh, 500 ms at 11 kW, is the resolution here).
    assert lost[0]["energy_wh"] >= delivered - 2, (lost[0], delivered)


def test_reboot_closes_the_running_session_with_its_energy():
    path = [p for p in LIBRARY if p.endswith("reboot.json")][0]
    try:
        res = _play(path)
    except orchestrate.PeerMissing as e:
        pytest.skip(str(e))
    reset = next(r["t"] for r in res.records if r.get("k") == "reset")
    delivered = [r["energy_wh"] for r in res.ticks() if r["t"] < reset][-1]
    first = orchestrate.session_records(res.records)[0]["data"]
    assert first["stop_reason"] != "power_loss", first
    assert first["energy_wh"] >= delivered - 2, (first, delivered)


# Which sequence measures each injected fault (when injected while charging, as the
# library does): a fault scenario must expect it, so that its absence fails the run.
_FAULT_SEQUENCES = {
    "diode_short": "diode_fault_open", "cp_short_pe": "cp_short_open",
    "cp_open": "cp_open_open", "pe_loss": "pe_loss_open", "rcd_trip": "rcd_trip_open",
    "rcd_selftest_fail": "rcd_selftest_failed", "contactor_welded": "welded_detected",
    "contactor_stuck_open": "not_closing_detected", "meter_silent": "meter_stale",
    "meter_garbage": "meter_stale", "ev_overdraw": "overcurrent_stop",
    "network_stall": "network_stall_detected", "power_cut": "power_cut_open",
    "temperature": "overtemp_derate",
}


def test_every_scenario_expects_something_and_the_sequence_of_its_faults():
    assert set(_FAULT_SEQUENCES) == set(FAULTS)
    for p in LIBRARY:
        sc = load(p)
        seqs = sc.expect.get("sequences", [])
        assert seqs, "%s expects no sequence: it could pass on an empty trace" % sc.name
        for s in sc.steps:
            if s.kind == "fault" and s.args.get("on", True):
                assert _FAULT_SEQUENCES[s.name] in seqs, (sc.name, s.name)


def _result(expect, records):
    sc = load(LIBRARY[0])
    sc.expect = expect
    res = orchestrate.RunResult(sc)
    res.records = records
    res.checks = annexa.analyse(records)
    return res


def test_expectations_do_not_pass_on_a_trace_without_ticks():
    records = [{"t": 0, "k": "start", "config": {}}, {"t": 5000, "k": "end", "energy_wh": 0}]
    assert expect.check(_result({}, records)) != []
    assert expect.check(_result({"no_faults": True}, records)) != []


def test_an_expected_sequence_that_never_shows_fails():
    records = [{"t": 0, "k": "start", "config": {}},
               {"t": 0, "k": "tick", "state": "A", "ev": "A", "duty": 1000, "contactor": 0,
                "mirror": 0, "faults": [], "blocking": 0, "offered_ma": 0, "current_ma": 0},
               {"t": 5000, "k": "end", "energy_wh": 0}]
    problems = expect.check(_result({"sequences": ["c_to_a_open"]}, records))
    assert len(problems) == 1 and "c_to_a_open" in problems[0]

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

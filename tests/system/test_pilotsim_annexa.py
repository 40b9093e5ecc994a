"""The Annex A report on hand-made traces: it measures the right interval and fails a
station that is too slow (so a passing report means something)."""
import pytest

from tools.pilotsim import annexa


def _tick(t, state, ev, duty, contactor, mirror=None, faults=(), offered=16000, current=0,
          temp=250):
    return {"t": t, "k": "tick", "state": state, "ev": ev, "cp_hi": 0, "cp_lo": 0,
            "duty": duty, "contactor": contactor,
            "mirror": contactor if mirror is None else mirror, "faults": list(faults),
            "blocking": 1 if faults else 0, "offered_ma": offered, "current_ma": current,
            "power_w": 0, "energy_wh": 0, "temp_dc": temp, "led": 0}


def _session(open_after_unplug_ms, close_after_c_ms=510):
    recs = [{"t": 0, "k": "start", "config": {}},
            _tick(0, "A", "A", 1000, 0, offered=0),
            {"t": 1000, "k": "ev", "name": "plug"},
            _tick(1010, "B2", "B", 266, 0),
            {"t": 2000, "k": "ev", "name": "request"},
            _tick(2010, "C2", "C", 266, 0),
            _tick(2000 + close_after_c_ms, "C2", "C", 266, 1),
            {"t": 5000, "k": "ev", "name": "unplug"},
            _tick(5000, "C2", "A", 266, 1),
            _tick(5000 + open_after_unplug_ms, "A", "A", 1000, 0, offered=0),
            {"t": 8000, "k": "end"}]
    return recs


def _by_seq(checks, seq):
    return [c for c in checks if c.seq == seq]


def test_good_session_passes_and_measures():
    checks = annexa.analyse(_session(10))
    assert annexa.all_pass(checks)
    (plug,) = _by_seq(checks, "plug_in")
    assert plug.measured_ms == 10
    (close,) = _by_seq(checks, "close_in_c")
    assert close.measured_ms == 500          # from PWM-on-in-C (2010) to the coil (2510)
    (unplug,) = _by_seq(checks, "c_to_a_open")
    assert unplug.measured_ms == 10


def test_slow_opening_fails():
    checks = annexa.analyse(_session(150))
    (unplug,) = _by_seq(checks, "c_to_a_open")
    assert not unplug.ok and unplug.measured_ms == 150
    assert "FAIL" in annexa.format_report(checks)


def test_slow_closing_fails():
    checks = annexa.analyse(_session(10, close_after_c_ms=3600))
    (close,) = _by_seq(checks, "close_in_c")
    assert not close.ok


def test_never_closing_fails():
    recs = [{"t": 0, "k": "start", "config": {}}, _tick(0, "C2", "C", 266, 0),
            {"t": 5000, "k": "end"}]
    (close,) = _by_seq(annexa.analyse(recs), "close_in_c")
    assert not close.ok and close.measured_ms is None


def test_short_f_hold_fails_and_latch_must_hold():
    recs = [{"t": 0, "k": "start", "config": {}},
            _tick(0, "C2", "C", 266, 1),
            {"t": 1000, "k": "fault", "name": "diode_short", "on": True},
            _tick(1010, "F", "C", 0, 0, faults=["DIODE_FAULT"]),
            _tick(1200, "C1", "C", 1000, 0, faults=["DIODE_FAULT"]),
            _tick(2000, "C1", "C", 1000, 0),           # cleared while still plugged
            {"t": 3000, "k": "end"}]
    checks = annexa.analyse(recs)
    (hold,) = _by_seq(checks, "fault_f_hold")
    assert hold.measured_ms == 190 and not hold.ok
    (latch,) = _by_seq(checks, "diode_latched")
    assert not latch.ok and "cleared" in latch.note
    (opened,) = _by_seq(checks, "diode_fault_open")
    assert opened.ok and opened.measured_ms == 10


def test_pwm_off_open_limit():
    recs = [{"t": 0, "k": "start", "config": {}},
            _tick(0, "C2", "C", 266, 1),
            _tick(1000, "C1", "C", 1000, 1, offered=0),
            _tick(7500, "C1", "C", 1000, 0, offered=0),
            {"t": 9000, "k": "end"}]
    (c,) = _by_seq(annexa.analyse(recs), "pwm_off_open")
    assert c.measured_ms == 6500 and not c.ok


def test_welded_and_overcurrent():
    recs = [{"t": 0, "k": "start", "config": {"welded_check_ms": 1000}},
            _tick(0, "C2", "C", 266, 1, current=16000),
            {"t": 500, "k": "fault", "name": "contactor_welded", "on": True},
            {"t": 1000, "k": "fault", "name": "ev_overdraw", "on": True},
            _tick(1000, "C2", "C", 266, 1, current=32000),
            _tick(9000, "C2", "C", 266, 0, mirror=1, current=32000),
            _tick(9500, "F", "C", 0, 0, mirror=1, faults=["CONTACTOR_WELDED", "OVERCURRENT"]),
            _tick(12000, "C2", "C", 266, 1, mirror=1, faults=["CONTACTOR_WELDED"]),
            {"t": 13000, "k": "end"}]
    checks = annexa.analyse(recs)
    (oc,) = _by_seq(checks, "overcurrent_stop")
    assert oc.measured_ms == 8000 and not oc.ok           # grace 5 s + 2 polls + 0.5 s
    (wd,) = _by_seq(checks, "welded_detected")
    assert wd.measured_ms == 500 and wd.ok
    (again,) = _by_seq(checks, "welded_never_recloses")
    assert not again.ok


def test_duty_above_the_cable_rating_fails():
    recs = [{"t": 0, "k": "start", "config": {"max_current_ma": 32000}, "cable_a": 13},
            _tick(0, "B2", "B", 216, 0),
            _tick(1000, "B2", "B", 533, 0),          # 32 A offered on a 13 A cable
            {"t": 2000, "k": "end"}]
    (c,) = annexa.analyse(recs)
    assert c.seq == "duty_within_limits" and not c.ok and "32.0 A" in c.note
    recs[2] = _tick(1000, "B2", "B", 216, 0)
    (c,) = annexa.analyse(recs)
    assert c.ok


def test_wake_up_timing():
    def trace(wake_at, back_at):
        return [{"t": 0, "k": "start", "config": {}},
                _tick(1000, "B2", "B", 266, 0),
                _tick(wake_at, "B1", "B", 1000, 0),
                _tick(back_at, "B2", "B", 266, 0),
                {"t": 40000, "k": "end"}]
    (c,) = _by_seq(annexa.analyse(trace(31000, 34000)), "wake_up")
    assert c.ok and c.measured_ms == 30000 and c.note == "held 3000 ms"
    (c,) = _by_seq(annexa.analyse(trace(20000, 23000)), "wake_up")
    assert not c.ok                                   # woke the EV after 19 s, not 30
    (c,) = _by_seq(annexa.analyse(trace(31000, 31500)), "wake_up")
    assert not c.ok                                   # held 0.5 s, not 3 s


# -- every sequence of the report fails a station that breaks its rule ----------------------
# Each trace below is a station doing the wrong thing; the report must say FAIL for the
# sequence named, whatever else it shows.

def _charging(cfg=None, current=16000):
    """A station charging at 16 A from t=0 (C2, coil on, mirror closed)."""
    return [{"t": 0, "k": "start", "config": cfg or {}},
            _tick(0, "C2", "C", 266, 1, current=current)]


def _end(t):
    return {"t": t, "k": "end"}


def _plug_never_seen():
    return [{"t": 0, "k": "start", "config": {}}, _tick(0, "A", "A", 1000, 0, offered=0),
            {"t": 1000, "k": "ev", "name": "plug"}, _tick(1000, "A", "B", 1000, 0, offered=0),
            _end(5000)]


def _plug_closes_in_b():
    return [{"t": 0, "k": "start", "config": {}}, _tick(0, "A", "A", 1000, 0, offered=0),
            {"t": 1000, "k": "ev", "name": "plug"}, _tick(1010, "B2", "B", 266, 0),
            _tick(1200, "B2", "B", 266, 1), _end(5000)]


def _ev_step_slow(name):
    def trace():
        ev = {"pause": "B", "unplug": "A"}[name]
        return _charging() + [{"t": 1000, "k": "ev", "name": name},
                              _tick(1000, "C2", ev, 266, 1),
                              _tick(1250, "B2" if ev == "B" else "A", ev, 266, 0), _end(3000)]
    return trace


def _line_fault_slow(name):
    def trace():
        return _charging() + [{"t": 1000, "k": "fault", "name": name, "on": True},
                              _tick(1000, "C2", "C", 266, 1), _tick(1300, "A", "C", 1000, 0),
                              _end(3000)]
    return trace


def _power_cut_slow():
    return _charging() + [{"t": 1000, "k": "fault", "name": "power_cut", "on": True},
                          _tick(1000, "OFF", "C", -1, 0, mirror=1, offered=0),
                          _tick(1250, "OFF", "C", -1, 0, mirror=0, offered=0), _end(3000)]


def _pwm_off_then_back_closed():
    # PWM off at 1000 while charging, the coil stays on; 8 s later the PWM comes back:
    # the contactor was closed without PWM for 8 s (> 6 s).
    return _charging() + [_tick(1000, "C1", "C", 1000, 1, offered=0),
                          _tick(9000, "C2", "C", 266, 1), _end(12000)]


def _pwm_off_then_ev_leaves_closed():
    return _charging() + [_tick(1000, "C1", "C", 1000, 1, offered=0),
                          {"t": 8000, "k": "ev", "name": "pause"},
                          _tick(8000, "B1", "B", 1000, 0, offered=0), _end(12000)]


_CODES = {"diode_short": "DIODE_FAULT", "cp_short_pe": "CP_SHORT", "rcd_trip": "RCD_TRIPPED"}


def _fault_open_slow(name):
    def trace():
        code = _CODES[name]
        return _charging() + [{"t": 1000, "k": "fault", "name": name, "on": True},
                              _tick(1010, "C2", "C", 266, 1, faults=[code]),
                              _tick(1300, "F", "C", 0, 0, faults=[code]), _end(5000)]
    return trace


def _fault_never_raised_in_b():
    return [{"t": 0, "k": "start", "config": {}}, _tick(0, "B2", "B", 266, 0),
            {"t": 1000, "k": "fault", "name": "rcd_trip", "on": True}, _end(5000)]


def _fault_raised_late_in_b():
    return [{"t": 0, "k": "start", "config": {}}, _tick(0, "B2", "B", 266, 0),
            {"t": 1000, "k": "fault", "name": "rcd_trip", "on": True},
            _tick(1500, "F", "B", 0, 0, faults=["RCD_TRIPPED"]), _end(5000)]


def _fault_without_f():
    # Opens at once, but never drives state F (Table A.5 wants F >= 300 ms).
    return _charging() + [{"t": 1000, "k": "fault", "name": "rcd_trip", "on": True},
                          _tick(1010, "C1", "C", 1000, 0, faults=["RCD_TRIPPED"], offered=0),
                          _end(5000)]


def _diode_latch_recloses():
    return _charging() + [{"t": 1000, "k": "fault", "name": "diode_short", "on": True},
                          _tick(1010, "F", "C", 0, 0, faults=["DIODE_FAULT"]),
                          {"t": 2000, "k": "fault", "name": "diode_short", "on": False},
                          _tick(2000, "C2", "C", 266, 1, faults=["DIODE_FAULT"]), _end(5000)]


def _rcd_latch_cleared():
    return _charging() + [{"t": 1000, "k": "fault", "name": "rcd_trip", "on": True},
                          _tick(1010, "F", "C", 0, 0, faults=["RCD_TRIPPED"]),
                          {"t": 1500, "k": "fault", "name": "rcd_trip", "on": False},
                          _tick(2000, "C2", "C", 266, 0), _end(5000)]


def _d_closes():
    return [{"t": 0, "k": "start", "config": {}}, _tick(0, "B2", "B", 266, 0),
            {"t": 1000, "k": "ev", "name": "request_ventilation"},
            _tick(1000, "D2", "D", 266, 0), _tick(1500, "D2", "D", 266, 1), _end(5000)]


def _c_to_d_stays_closed():
    return _charging() + [{"t": 1000, "k": "ev", "name": "request_ventilation"},
                          _tick(1000, "D2", "D", 266, 1),
                          _tick(1400, "D1", "D", 1000, 0, offered=0), _end(5000)]


def _welded_not_detected():
    return _charging() + [{"t": 500, "k": "fault", "name": "contactor_welded", "on": True},
                          {"t": 1000, "k": "ev", "name": "pause"},
                          _tick(1000, "B2", "B", 266, 0, mirror=1), _end(5000)]


def _stuck_not_detected():
    return [{"t": 0, "k": "start", "config": {}},
            {"t": 0, "k": "fault", "name": "contactor_stuck_open", "on": True},
            _tick(0, "B2", "B", 266, 0), _tick(1000, "C2", "C", 266, 1, mirror=0),
            _tick(2000, "C2", "C", 266, 1, mirror=0), _tick(3000, "C2", "C", 266, 1, mirror=0),
            _end(4000)]


def _stuck_coil_left_on():
    return [{"t": 0, "k": "start", "config": {}},
            {"t": 0, "k": "fault", "name": "contactor_stuck_open", "on": True},
            _tick(0, "B2", "B", 266, 0), _tick(1000, "C2", "C", 266, 1, mirror=0),
            _tick(2000, "C2", "C", 266, 1, mirror=0, faults=["CONTACTOR_NOT_CLOSING"]),
            _end(4000)]


def _selftest_not_raised():
    return [{"t": 0, "k": "start", "config": {}}, _tick(0, "A", "A", 1000, 0, offered=0),
            {"t": 500, "k": "fault", "name": "rcd_selftest_fail", "on": True},
            {"t": 1000, "k": "ev", "name": "plug"}, _tick(1000, "B2", "B", 266, 0),
            _end(5000)]


def _selftest_closes():
    return [{"t": 0, "k": "start", "config": {}}, _tick(0, "A", "A", 1000, 0, offered=0),
            {"t": 500, "k": "fault", "name": "rcd_selftest_fail", "on": True},
            {"t": 1000, "k": "ev", "name": "plug"},
            _tick(1000, "B1", "B", 1000, 0, faults=["RCD_SELFTEST_FAILED"], offered=0),
            _tick(3000, "C2", "C", 266, 1, faults=["RCD_SELFTEST_FAILED"]), _end(5000)]


def _derate_ignored():
    return _charging(current=16000) + [_tick(1000, "C2", "C", 266, 1, current=16000, temp=660),
                                       _end(5000)]


def _derate_claimed_not_signalled():
    # The station says it offers 8 A but the PWM still codes 16 A.
    return _charging(current=16000) + [
        _tick(1000, "C2", "C", 266, 1, current=16000, temp=660),
        _tick(1010, "C2", "C", 266, 1, current=16000, temp=660, offered=8000), _end(5000)]


def _overtemp_stays_closed():
    return _charging() + [_tick(1000, "C2", "C", 266, 1, temp=600),
                          _tick(2000, "C2", "C", 266, 1, temp=720), _end(6000)]


def _meter_never_stale():
    return _charging() + [{"t": 1000, "k": "fault", "name": "meter_silent", "on": True},
                          _end(30000)]


def _network_never_offline():
    return _charging() + [{"t": 1000, "k": "fault", "name": "network_stall", "on": True},
                          _end(500000)]


def _limit_never_applied():
    return _charging() + [{"t": 1000, "k": "backend", "name": "set_limit", "id": "c1",
                           "args": {"limit_ma": 10000}}, _end(5000)]


def _limit_claimed_not_signalled():
    return _charging() + [{"t": 1000, "k": "backend", "name": "set_limit", "id": "c1",
                           "args": {"limit_ma": 10000}},
                          _tick(1010, "C2", "C", 266, 1, offered=10000), _end(5000)]


def _closes_in_c1():
    # The EV asks (C) but no PWM runs (not authorized): the coil goes on anyway.
    return [{"t": 0, "k": "start", "config": {}}, _tick(0, "B1", "B", 1000, 0, offered=0),
            {"t": 1000, "k": "ev", "name": "request"},
            _tick(1000, "C1", "C", 1000, 0, offered=0),
            _tick(1500, "C1", "C", 1000, 1, offered=0), _end(3000)]


def _closes_in_b2():
    return [{"t": 0, "k": "start", "config": {}}, _tick(0, "B2", "B", 266, 0),
            _tick(5000, "B2", "B", 266, 1), _end(8000)]


def _closes_with_blocking_fault():
    return [{"t": 0, "k": "start", "config": {}}, _tick(0, "B2", "B", 266, 0),
            _tick(1000, "C2", "C", 266, 0, faults=["OVERTEMP"]),
            _tick(1500, "C2", "C", 266, 1, faults=["OVERTEMP"]), _end(3000)]


def _f_with_coil_on():
    # The station drives F (not available) of its own accord and leaves the coil on.
    return _charging() + [_tick(1000, "F", "C", 0, 1, offered=0),
                          _tick(3000, "F", "C", 0, 0, offered=0), _end(5000)]


def _blocking_fault_coil_on():
    # A fault that stops charging is raised (not one the scenario injected) and the coil
    # stays on with the PWM still running.
    return _charging() + [_tick(1000, "C2", "C", 266, 1, faults=["TEMP_SENSOR_FAILED"]),
                          _tick(2000, "C2", "C", 266, 1, faults=["TEMP_SENSOR_FAILED"]),
                          _end(5000)]


VIOLATIONS = [
    ("plug_in", _plug_never_seen),
    ("plug_in", _plug_closes_in_b),
    ("c_to_b_open", _ev_step_slow("pause")),
    ("c_to_a_open", _ev_step_slow("unplug")),
    ("cp_open_open", _line_fault_slow("cp_open")),
    ("pe_loss_open", _line_fault_slow("pe_loss")),
    ("power_cut_open", _power_cut_slow),
    ("pwm_off_open", _pwm_off_then_back_closed),
    ("pwm_off_open", _pwm_off_then_ev_leaves_closed),
    ("diode_fault_open", _fault_open_slow("diode_short")),
    ("cp_short_open", _fault_open_slow("cp_short_pe")),
    ("rcd_trip_open", _fault_open_slow("rcd_trip")),
    ("fault_raised", _fault_never_raised_in_b),
    ("fault_raised", _fault_raised_late_in_b),
    ("fault_f_hold", _fault_without_f),
    ("diode_latched", _diode_latch_recloses),
    ("rcd_latched", _rcd_latch_cleared),
    ("d_no_power", _d_closes),
    ("d_no_ventilation_open", _c_to_d_stays_closed),
    ("welded_detected", _welded_not_detected),
    ("not_closing_detected", _stuck_not_detected),
    ("not_closing_open", _stuck_coil_left_on),
    ("rcd_selftest_failed", _selftest_not_raised),
    ("rcd_selftest_blocks", _selftest_closes),
    ("overtemp_derate", _derate_ignored),
    ("overtemp_derate", _derate_claimed_not_signalled),
    ("overtemp_stop", _overtemp_stays_closed),
    ("meter_stale", _meter_never_stale),
    ("network_stall_detected", _network_never_offline),
    ("limit_applied", _limit_never_applied),
    ("limit_applied", _limit_claimed_not_signalled),
    ("close_allowed", _closes_in_c1),
    ("close_allowed", _closes_in_b2),
    ("close_allowed", _closes_with_blocking_fault),
    ("closed_without_pwm", _f_with_coil_on),
    ("blocking_fault_open", _blocking_fault_coil_on),
]


@pytest.mark.parametrize("seq,trace", VIOLATIONS,
                         ids=["%s-%s" % (s, t.__name__.strip("_")) for s, t in VIOLATIONS])
def test_a_station_that_breaks_the_rule_fails(seq, trace):
    checks = annexa.analyse(trace())
    mine = _by_seq(checks, seq)
    assert mine, "no %s check in:\n%s" % (seq, annexa.format_report(checks))
    assert not all(c.ok for c in mine), annexa.format_report(checks)
    assert not annexa.all_pass(checks)


def test_the_violation_table_covers_every_sequence_of_the_report():
    import re
    with open(annexa.__file__) as f:
        src = f.read()
    ids = set(re.findall(r'Check\("([a-z_]+)"', src))
    ids |= set("%s_open" % s for s in annexa._SEQ.values())
    ids |= set(re.findall(r'_open_within\(tl, "([a-z_]+)"', src))
    ids |= {"diode_latched", "rcd_latched"}
    covered = set(s for s, _ in VIOLATIONS) | {"close_in_c", "fault_f_hold",
                                               "welded_never_recloses", "overcurrent_stop",
                                               "duty_within_limits", "wake_up"}
    assert ids - covered == set()


def test_config_limits_follow_the_firmwares_defaults(monkeypatch):
    # A trace's start record carries only the scenario's overrides: a limit the scenario
    # leaves alone is the firmware's default, not a second copy of it in the report.
    from firmware import config
    firmware_default = config.default
    monkeypatch.setattr(config, "default",
                        lambda key: 400 if key == "welded_check_ms" else firmware_default(key))
    recs = _charging() + [{"t": 500, "k": "fault", "name": "contactor_welded", "on": True},
                          {"t": 1000, "k": "ev", "name": "pause"},
                          _tick(1000, "B2", "B", 266, 0, mirror=1),
                          _tick(1800, "F", "B", 0, 0, mirror=1, faults=["CONTACTOR_WELDED"]),
                          _end(5000)]
    (wd,) = _by_seq(annexa.analyse(recs), "welded_detected")
    assert wd.limit.startswith("<= 500 ms") and not wd.ok      # 800 ms > 400 + 100

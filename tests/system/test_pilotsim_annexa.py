"""The Annex A report on hand-made traces: it measures the right interval and fails a
station that is too slow (so a passing report means something)."""
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

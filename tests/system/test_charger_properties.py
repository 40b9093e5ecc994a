"""Safety invariants of the charge controller under random EV behaviour, faults and commands
(CPython only: hypothesis does not run on MicroPython)."""
import os
import sys

from hypothesis import HealthCheck, given, settings, strategies as st

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "unit"))

from charger_rig import Rig  # noqa: E402
from firmware import faults as F  # noqa: E402
from firmware.compat import ticks_diff  # noqa: E402

ACTIONS = st.sampled_from([
    "ev_A", "ev_B", "ev_C", "ev_D", "ev_E", "diode_off", "diode_on", "leak", "no_leak",
    "weld", "authorize", "deauthorize", "pause", "resume", "limit_10", "limit_3", "no_limit",
    "unavailable", "available", "hot", "very_hot", "cool", "overdraw", "normal_draw",
    "pp_bad", "pp_ok", "monitor_dead", "monitor_ok",
])
STEPS = st.lists(st.tuples(ACTIONS, st.integers(min_value=1, max_value=400)),
                 min_size=1, max_size=25)


def apply(r, action):
    ch = r.ch
    if action.startswith("ev_"):
        r.ev = action[3:]
    elif action == "diode_off":
        r.diode = False
    elif action == "diode_on":
        r.diode = True
    elif action == "leak":
        r.leak = True
    elif action == "no_leak":
        r.leak = False
    elif action == "weld":
        r.welded = True
    elif action == "authorize":
        ch.authorize(True)
    elif action == "deauthorize":
        ch.authorize(False)
    elif action == "pause":
        ch.pause()
    elif action == "resume":
        ch.resume()
    elif action == "limit_10":
        ch.set_backend_limit(10000)
    elif action == "limit_3":
        ch.set_backend_limit(3000)
    elif action == "no_limit":
        ch.clear_backend_limit()
    elif action == "unavailable":
        ch.set_available(False)
    elif action == "available":
        ch.set_available(True)
    elif action == "hot":
        r.temp_dc = 660
    elif action == "very_hot":
        r.temp_dc = 720
    elif action == "cool":
        r.temp_dc = 250
    elif action == "overdraw":
        r.draw_ma = 45000
    elif action == "normal_draw":
        r.draw_ma = None
    elif action == "pp_bad":
        r.pp_ohms = 100000
    elif action == "pp_ok":
        r.pp_ohms = 220
    elif action == "monitor_dead":
        r.monitor_ok = False
    elif action == "monitor_ok":
        r.monitor_ok = True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STEPS, st.booleans())
def test_safety_invariants_hold_on_every_tick(steps, selftest):
    r = Rig(rcd_selftest=selftest, tick_ms=10)
    r.temp_dc = 250
    ch = r.ch
    cfg = r.cfg
    was_closed = False
    pwm_off_since = None
    f_since = None
    prev_blocking = 0
    ever_welded = False
    must_open_ticks = 0
    for action, n_ticks in steps:
        apply(r, action)
        for _ in range(n_ticks):
            r.step()
            now = r.last_tick_ms()
            duty = ch.duty_pm
            blocking = ch.faults.blocking()
            # The EV never sees a duty the standard forbids.
            assert duty in (0, 1000) or 100 <= duty <= 960, duty
            # The EV leaving C (B, A, E), a missing diode under PWM, or D without
            # ventilation: open in the tick that confirms it (confirm_n readings).
            if (r.ev not in ("C", "D") or (r.ev == "D" and not cfg["ventilation_supported"])
                    or (not r.diode and 0 < duty < 1000)):
                must_open_ticks += 1
            else:
                must_open_ticks = 0
            if must_open_ticks >= cfg["pilot_confirm_n"]:
                assert not ch.contactor, (r.ev, r.diode)
            # A residual current opens in the tick that sees it.
            if r.leak:
                assert not ch.contactor
            # Closed only without a fault that stops charging.
            if ch.contactor:
                assert not blocking, F.names(blocking)
                if duty == 1000:
                    if pwm_off_since is None:
                        pwm_off_since = now
                    assert ticks_diff(now, pwm_off_since) < cfg["pwm_off_open_ms"]
                else:
                    pwm_off_since = None
                    assert ch.offered_ma >= 6000
            else:
                pwm_off_since = None
            # Closed only when the standard allows it: PWM on (C2/D2) and the EV's last
            # readings C (or D with ventilation) with its diode present, authorized,
            # available, not paused, no residual current.
            if ch.contactor and not was_closed:
                assert 0 < duty < 1000, duty
                assert r.ev == "C" or (r.ev == "D" and cfg["ventilation_supported"]), r.ev
                assert r.diode and not r.leak
                assert ch.authorized and ch.available and not ch.paused
            # A welded contactor is never commanded closed again.
            if ever_welded:
                assert not (ch.contactor and not was_closed)
            ever_welded = ever_welded or ch.faults.is_active(F.CONTACTOR_WELDED)
            # A new fault that stops charging: -12 V for at least fault_hold_ms.
            if blocking & ~prev_blocking:
                f_since = now
            if f_since is not None:
                if ticks_diff(now, f_since) < cfg["fault_hold_ms"]:
                    assert duty == 0
                else:
                    f_since = None
            prev_blocking = blocking
            # Power never flows in state D without ventilation.
            if ch.pilot_level == 3 and not cfg["ventilation_supported"]:
                assert not ch.contactor or r.ev != "D" or ch.contactor == was_closed
            was_closed = ch.contactor

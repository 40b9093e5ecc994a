"""Safety invariants of the charge controller under random EV behaviour, faults, backend
commands and resets (CPython only: hypothesis does not run on MicroPython).

The cases and the invariants are tools/bench_props.py's (shared with `make bench`, which
runs 10^5 of them); here hypothesis picks a few hundred and shrinks any failure.
"""
from hypothesis import HealthCheck, example, given, settings, strategies as st

from tools import bench_props
from tools.bench_props import ACTIONS, RESETS, run_case

STEPS = st.lists(st.tuples(st.sampled_from(ACTIONS), st.integers(min_value=1, max_value=400)),
                 min_size=1, max_size=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STEPS, st.booleans(), st.booleans())
# A trip with no EV, its cause gone, then an EV at once: the charger still reads A for
# pilot_confirm_n readings, and clears the trip then (found by the 10^5-case bench run).
@example([("leak", 5), ("lock_ok", 100), ("no_leak", 1), ("ev_D", 10), ("overdraw", 1),
          ("deauthorize", 20)], True, False)
# The diode fails, then the EV leaves, one tick each: two different readings confirm
# nothing; the third opens (30 ms, inside Annex A's 100 ms).
@example([("ev_C", 100), ("authorize", 2), ("cmd_clear", 5), ("diode_off", 1), ("ev_A", 1),
          ("ev_A", 20)], True, True)
def test_safety_invariants_hold_on_every_tick_across_commands_and_resets(steps, selftest,
                                                                          lock):
    violation = run_case(steps, selftest, lock)
    assert violation is None, violation


def test_the_checker_finds_a_latch_lost_in_a_reset(monkeypatch):
    # The invariants are not vacuous: a safety record that forgets the latches is caught.
    from firmware.safestate import SafeState
    monkeypatch.setattr(SafeState, "restore", lambda self, charger, now_ms, wall_s=None: None)
    steps = [("ev_B", 5), ("authorize", 5), ("ev_C", 100), ("leak", 5), ("no_leak", 5),
             ("reset", 5)]
    v = run_case(steps)
    assert v is not None and "lost" in v, v


def test_every_kind_of_reset_is_among_the_actions():
    assert RESETS == ("reset",) and "cmd_reboot" in ACTIONS


def test_a_small_bench_run_reports_its_figures():
    metrics, detail = bench_props.bench(200, seed=7)
    assert metrics == {"property_cases": 200, "property_violations": 0}, detail["examples"]
    assert detail["resets"] > 0 and detail["ticks"] > 200

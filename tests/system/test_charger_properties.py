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


# -- the transition table (firmware/transitions.py, docs/state-machine.md) ------------------
from tools.charger_rig import Rig  # noqa: E402


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


# Every state change the Charger makes is a row of the table, and every row is reached.

from firmware.states import NAMES  # noqa: E402
from firmware.transitions import TRANSITIONS  # noqa: E402

TABLE_PAIRS = frozenset((a, b) for a, b, _ in TRANSITIONS)
# The contactor is closed only while the EV requests (C/D); it closes only under PWM (x2).
CONTACTOR_STATES = ("C1", "C2", "D1", "D2")
X2_STATES = ("B2", "C2", "D2")

# Repeated entries weigh more: what lets a session go on comes as often as what stops it.
EV_ACTIONS = ["ev_A", "ev_B", "ev_B", "ev_C", "ev_C", "ev_D", "ev_E", "ev_X"]
SESSION = ["authorize", "authorize", "authorize", "deauthorize", "pause", "resume", "resume",
           "limit_10", "limit_3", "no_limit", "unavailable", "available", "available"]
FAULTS = ["diode_off", "diode_on", "leak", "no_leak", "weld", "hot", "very_hot", "cool",
          "overdraw", "normal_draw", "pp_bad", "pp_ok", "monitor_dead", "monitor_ok"]
# The EV's moves and the session's commands weigh five times all the faults together, so
# that runs get as far as charging; a pair of an EV move and a command lands both in one
# tick (where the diagonal rows come from). Then 1 tick to 7 s, long enough for a wake-up
# (wake_up_after_ms 5000 below).
_EV = st.sampled_from(EV_ACTIONS).map(lambda a: (a,))
_SESSION = st.sampled_from(SESSION).map(lambda a: (a,))
_BOTH = st.tuples(st.sampled_from(EV_ACTIONS), st.sampled_from(SESSION))
STEP_ACTIONS = st.one_of(_EV, _EV, _SESSION, _SESSION, _BOTH,
                         st.sampled_from(FAULTS).map(lambda a: (a,)))
TABLE_STEPS = st.lists(
    st.tuples(STEP_ACTIONS, st.sampled_from([1, 1, 2, 3, 10, 40, 100, 350, 700])),
    min_size=8, max_size=30)
TABLE_CONFIGS = st.fixed_dictionaries({
    "rcd_selftest": st.booleans(),
    "ventilation_supported": st.booleans(),
    "wake_up_pilot": st.sampled_from(["x1", "F"]),
    "auth_mode": st.sampled_from(["backend", "free"]),
})


def _apply(r, action):
    if action == "ev_X":
        r.ev = "X"                  # a pilot voltage no EV produces (over 13 V)
    else:
        apply(r, action)


def drive(cfg, steps, on_tick=None):
    """Run `steps` ((actions, ticks), ...) on a fresh rig; return the state changes made, as
    (from, to) names in order. `on_tick(r, before, closed_before)` checks every tick."""
    values = {"wake_up_after_ms": 5000}
    values.update(cfg)
    r = Rig(**values)
    r.temp_dc = 250
    changes = []
    for actions, ticks in steps:
        for a in actions:
            _apply(r, a)
        for _ in range(ticks):
            before = r.ch.state
            closed_before = r.ch.contactor
            r.step()
            if r.ch.state != before:
                changes.append((NAMES[before], NAMES[r.ch.state]))
            if on_tick is not None:
                on_tick(r, before, closed_before)
    return changes


def unknown_changes(changes, pairs=TABLE_PAIRS):
    return [c for c in changes if c not in pairs]


def _contactor_rules(r, before, closed_before):
    state = NAMES[r.ch.state]
    if r.ch.contactor:
        assert state in CONTACTOR_STATES, state
        if not closed_before:
            assert state in ("C2", "D2") and NAMES[before] in X2_STATES, (NAMES[before], state)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TABLE_CONFIGS, TABLE_STEPS)
def test_every_state_change_is_a_row_of_the_table(cfg, steps):
    changes = drive(cfg, steps, _contactor_rules)
    assert unknown_changes(changes) == [], (cfg, steps)


def _script(text):
    # "ev_B 5; ev_C+authorize 1" -> ((("ev_B",), 5), (("ev_C", "authorize"), 1))
    out = []
    for part in text.split(";"):
        actions, ticks = part.split()
        out.append((tuple(actions.split("+")), int(ticks)))
    return out


# One run per line: the config, the steps, and the rows it must show, in this order. Ticks
# are 10 ms; a level is confirmed on its second reading; an offer increase after a decrease
# waits duty_update_interval_ms (5 s: 600 ticks). Unplugging (ev_A) ends the session, its
# authorization (auth_mode backend) and its pause.
BACKEND = {"auth_mode": "backend"}
FREE = {"auth_mode": "free"}
VENT = {"auth_mode": "backend", "ventilation_supported": True}
VENT_FREE = {"auth_mode": "free", "ventilation_supported": True}
WAKE_F = {"auth_mode": "free", "wake_up_pilot": "F"}
REACH = (
    # A charging session
    (BACKEND, "ev_B 5; authorize 5; ev_C 100; pause 10; resume 600; ev_B 5; deauthorize 5;"
              " ev_C 5; ev_B 5; ev_A 5",
     [("A", "B1", "plug_in"), ("B1", "B2", "pwm_on"), ("B2", "C2", "ev_requests"),
      ("C2", "C1", "pwm_off"), ("C1", "C2", "pwm_on"), ("C2", "B2", "ev_stops"),
      ("B2", "B1", "pwm_off"), ("B1", "C1", "ev_requests"), ("C1", "B1", "ev_stops"),
      ("B1", "A", "unplug")]),
    (FREE, "ev_B 5; ev_A 5; ev_C 100; ev_A 5",
     [("A", "B2", "plug_in"), ("B2", "A", "unplug"), ("A", "C2", "plug_in"),
      ("C2", "A", "unplug")]),
    (BACKEND, "ev_C 5; ev_A 5", [("A", "C1", "plug_in"), ("C1", "A", "unplug")]),
    # Ventilation
    (VENT, "ev_D 5; ev_A 5; ev_B 5; ev_D 5; ev_B 5; authorize 5; ev_D 100; pause 10;"
           " resume 600; ev_C 10; ev_D 10; ev_B 5; ev_A 5",
     [("A", "D1", "plug_in"), ("D1", "A", "unplug"), ("A", "B1", "plug_in"),
      ("B1", "D1", "ev_requests"), ("D1", "B1", "ev_stops"), ("B1", "B2", "pwm_on"),
      ("B2", "D2", "ev_requests"), ("D2", "D1", "pwm_off"), ("D1", "D2", "pwm_on"),
      ("D2", "C2", "vent_off"), ("C2", "D2", "vent_on"), ("D2", "B2", "ev_stops"),
      ("B2", "A", "unplug")]),
    (VENT, "ev_C 5; ev_D 5; ev_C 5; ev_A 5",
     [("C1", "D1", "vent_on"), ("D1", "C1", "vent_off")]),
    (VENT_FREE, "ev_D 100; ev_A 5", [("A", "D2", "plug_in"), ("D2", "A", "unplug")]),
    # Two changes in one tick: the EV's level is confirmed on its second reading, in the
    # same tick as the command given between the two readings.
    (VENT, "ev_B 5; ev_C 1; authorize 5; ev_A 5", [("B1", "C2", "ev_and_pwm")]),
    (VENT, "ev_B 5; ev_D 1; authorize 5; ev_A 5", [("B1", "D2", "ev_and_pwm")]),
    (VENT, "ev_B 5; authorize 5; ev_C 1; deauthorize 5; ev_A 5", [("B2", "C1", "ev_and_pwm")]),
    (VENT, "ev_B 5; authorize 5; ev_D 1; deauthorize 5; ev_A 5", [("B2", "D1", "ev_and_pwm")]),
    (VENT, "ev_C 5; ev_B 1; authorize 5; ev_A 5", [("C1", "B2", "ev_and_pwm")]),
    (VENT, "ev_C 5; ev_D 1; authorize 5; ev_A 5", [("C1", "D2", "ev_and_pwm")]),
    (VENT, "ev_B 5; authorize 5; ev_C 100; ev_B 1; deauthorize 5; ev_A 5",
     [("C2", "B1", "ev_and_pwm")]),
    (VENT, "ev_B 5; authorize 5; ev_C 100; ev_D 1; deauthorize 5; ev_A 5",
     [("C2", "D1", "ev_and_pwm")]),
    (VENT, "ev_D 5; ev_B 1; authorize 5; ev_A 5", [("D1", "B2", "ev_and_pwm")]),
    # Without ventilation support D1 is a fault's x1; it clears as C is confirmed, and the
    # first offer of the session goes out at once.
    (FREE, "ev_D 100; ev_C 5; ev_A 5",
     [("A", "F", "fault"), ("F", "D1", "f_ends"), ("D1", "C2", "ev_and_pwm")]),
    (VENT, "ev_B 5; authorize 5; ev_D 100; ev_B 1; deauthorize 5; ev_A 5",
     [("D2", "B1", "ev_and_pwm")]),
    (VENT, "ev_B 5; authorize 5; ev_D 100; ev_C 1; deauthorize 5; ev_A 5",
     [("D2", "C1", "ev_and_pwm")]),
    # Faults: a residual current (latched until unplug) keeps x1 after the hold; an
    # over-temperature gone before the hold ends lets the offer back at once.
    (BACKEND, "leak 50; no_leak 5; ev_B 5; leak 50; no_leak+ev_A 5",
     [("A", "F", "fault"), ("F", "A", "f_ends"), ("A", "B1", "plug_in"),
      ("B1", "F", "fault"), ("F", "B1", "f_ends"), ("B1", "A", "unplug")]),
    (BACKEND, "ev_C 5; leak 50; no_leak+ev_A 5",
     [("C1", "F", "fault"), ("F", "C1", "f_ends"), ("C1", "A", "unplug")]),
    (VENT, "ev_D 5; leak 50; no_leak+ev_A 5",
     [("D1", "F", "fault"), ("F", "D1", "f_ends"), ("D1", "A", "unplug")]),
    (FREE, "ev_B 5; leak 50; no_leak+ev_A 5", [("B2", "F", "fault")]),
    (FREE, "ev_C 100; leak 50; no_leak+ev_A 5", [("C2", "F", "fault")]),
    (VENT_FREE, "ev_D 100; leak 50; no_leak+ev_A 5", [("D2", "F", "fault")]),
    # PWM right after the hold only while no offer was made yet in this session: after a
    # decrease an increase waits duty_update_interval_ms.
    (BACKEND, "ev_B 5; very_hot 2; cool+authorize 50; ev_A 5",
     [("B1", "F", "fault"), ("F", "B2", "f_ends")]),
    (BACKEND, "ev_C 5; very_hot 2; cool+authorize 50; ev_A 5",
     [("C1", "F", "fault"), ("F", "C2", "f_ends")]),
    (VENT, "ev_D 5; very_hot 2; cool+authorize 50; ev_A 5",
     [("D1", "F", "fault"), ("F", "D2", "f_ends")]),
    (BACKEND, "unavailable 5; very_hot 2; cool 50; available 5",
     [("A", "UNAVAILABLE", "unavailable"), ("UNAVAILABLE", "F", "fault"),
      ("F", "UNAVAILABLE", "f_ends"), ("UNAVAILABLE", "A", "available")]),
    # The control pilot shorted: the first E is a new fault (F first); within the 1000 ms
    # CP_SHORT stays active a short again is E at once.
    (VENT, "ev_E 50; ev_A 5; ev_E 5; ev_B 5; ev_E 5; ev_C 5; ev_E 5; ev_D 5; ev_E 5;"
           " leak 50; no_leak+ev_A 200",
     [("A", "F", "fault"), ("F", "E", "f_ends"), ("E", "A", "short_ends"),
      ("A", "E", "cp_short"), ("E", "B1", "short_ends"), ("B1", "E", "cp_short"),
      ("E", "C1", "short_ends"), ("C1", "E", "cp_short"), ("E", "D1", "short_ends"),
      ("D1", "E", "cp_short"), ("E", "F", "fault")]),
    # Wake-up after wake_up_after_ms (5 s here) in B2, held wake_up_hold_ms (3 s).
    (FREE, "ev_B 5; ev_B 900; ev_A 5",
     [("B2", "B1", "wake_up"), ("B1", "B2", "wake_up_end")]),
    (WAKE_F, "ev_B 5; ev_B 900; ev_A 5", [("B2", "F", "wake_up"), ("F", "B2", "f_ends")]),
    # Back in service: an EV plugged in meanwhile is seen then.
    (BACKEND, "unavailable 5; ev_B 5; available 5; ev_A 5",
     [("UNAVAILABLE", "B1", "available")]),
    (BACKEND, "unavailable 5; ev_B+authorize 5; available 5; ev_A 5",
     [("UNAVAILABLE", "B2", "available")]),
    (BACKEND, "unavailable 5; ev_C 5; available 5; ev_A 5",
     [("UNAVAILABLE", "C1", "available")]),
    (BACKEND, "unavailable 5; ev_C+authorize 5; available 5; ev_A 5",
     [("UNAVAILABLE", "C2", "available")]),
    (VENT, "unavailable 5; ev_D 5; available 5; ev_A 5", [("UNAVAILABLE", "D1", "available")]),
    (VENT, "unavailable 5; ev_D+authorize 5; available 5; ev_A 5",
     [("UNAVAILABLE", "D2", "available")]),
)


def _in_order(wanted, changes):
    i = 0
    for c in changes:
        if i < len(wanted) and c == wanted[i]:
            i += 1
    return i == len(wanted)


def test_every_row_of_the_table_is_reached():
    shown = set()
    for cfg, text, rows in REACH:
        changes = drive(cfg, _script(text), _contactor_rules)
        assert unknown_changes(changes) == [], (text, changes)
        assert _in_order([(a, b) for a, b, _ in rows], changes), (text, rows, changes)
        shown.update(rows)
    assert sorted(set(TRANSITIONS) - shown) == [], "rows no run reaches"
    assert sorted(shown - set(TRANSITIONS)) == []


def test_a_change_missing_from_the_table_is_caught():
    changes = drive(BACKEND, _script("ev_B 5; authorize 5; ev_C 100; ev_B 5"))
    assert ("C2", "B2") in changes
    assert unknown_changes(changes, TABLE_PAIRS - {("C2", "B2")}) == [("C2", "B2")]

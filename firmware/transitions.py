"""Every state change `Charger.tick()` can make, as data: (from, to, trigger).

`Charger` does not step through this table: each tick it derives the state from the pilot
level the EV shows (the letter), whether it offers current (PWM on: x2, off: x1), the fault
hold and the availability (see `Charger.tick`, "decide"). This table lists what can follow
what, so that docs/state-machine.md can show it and the tests can hold both to it:
tests/unit/test_state_machine_doc.py checks the page's diagrams and tables equal it, and
tests/system/test_charger_properties.py checks that every change the real Charger makes
under random EV behaviour, faults and commands is here, and that every row is reached.

State names are those of `firmware.states.NAMES`. One (from, to) pair may have several
triggers. The device never imports this module; it is one constant tuple of short strings,
so frozen it stays in flash.

Triggers (docs/state-machine.md says which IEC 61851-1 sequence each row is):
  plug_in       the EV's first letter after A (S2 open: B; S2 already closed: C or D)
  unplug        the pilot reads A again
  pwm_on        the station starts offering current (authorized, resumed, limit >= 6 A ...)
  pwm_off       the station stops offering current (pause, authorization withdrawn,
                limit under 6 A, set inoperative); a decrease applies at once
  ev_requests   the EV closes S2: B -> C (or D)
  ev_stops      the EV opens S2: C or D -> B
  vent_on       the EV asks for ventilation: C -> D
  vent_off      the EV no longer asks for ventilation: D -> C
  ev_and_pwm    the EV's new letter and a PWM change land in the same tick (a command, a fault
                clearing as the level is confirmed, the end of an x1 wake-up)
  fault         a new fault that stops charging: F (-12 V) for fault_hold_ms
  f_ends        the -12 V of a fault hold or an F wake-up ends; the state follows the pilot
                as read afresh
  cp_short      the pilot reads E again while CP_SHORT is still active (no new fault)
  short_ends    the pilot reads a letter again after E (CP_SHORT keeps the pilot x1 until it
                clears)
  wake_up       B2 for wake_up_after_ms: x1 (B1) or -12 V (F) for wake_up_hold_ms
  wake_up_end   the x1 wake-up ends: PWM again
  unavailable   operator "inoperative" with no EV: -12 V
  available     back in service: the pilot is read afresh
"""

TRANSITIONS = (
    # A charging session (A, B, C)
    ("A", "B1", "plug_in"),
    ("A", "B2", "plug_in"),
    ("A", "C1", "plug_in"),
    ("A", "C2", "plug_in"),
    ("B1", "A", "unplug"),
    ("B2", "A", "unplug"),
    ("C1", "A", "unplug"),
    ("C2", "A", "unplug"),
    ("B1", "B2", "pwm_on"),
    ("B2", "B1", "pwm_off"),
    ("C1", "C2", "pwm_on"),
    ("C2", "C1", "pwm_off"),
    ("B1", "C1", "ev_requests"),
    ("B2", "C2", "ev_requests"),
    ("C1", "B1", "ev_stops"),
    ("C2", "B2", "ev_stops"),
    # Ventilation (D)
    ("A", "D1", "plug_in"),
    ("A", "D2", "plug_in"),
    ("D1", "A", "unplug"),
    ("D2", "A", "unplug"),
    ("D1", "D2", "pwm_on"),
    ("D2", "D1", "pwm_off"),
    ("B1", "D1", "ev_requests"),
    ("B2", "D2", "ev_requests"),
    ("D1", "B1", "ev_stops"),
    ("D2", "B2", "ev_stops"),
    ("C1", "D1", "vent_on"),
    ("C2", "D2", "vent_on"),
    ("D1", "C1", "vent_off"),
    ("D2", "C2", "vent_off"),
    # Two changes in one tick
    ("B1", "C2", "ev_and_pwm"),
    ("B1", "D2", "ev_and_pwm"),
    ("B2", "C1", "ev_and_pwm"),
    ("B2", "D1", "ev_and_pwm"),
    ("C1", "B2", "ev_and_pwm"),
    ("C1", "D2", "ev_and_pwm"),
    ("C2", "B1", "ev_and_pwm"),
    ("C2", "D1", "ev_and_pwm"),
    ("D1", "B2", "ev_and_pwm"),
    ("D1", "C2", "ev_and_pwm"),
    ("D2", "B1", "ev_and_pwm"),
    ("D2", "C1", "ev_and_pwm"),
    # Faults (F)
    ("A", "F", "fault"),
    ("B1", "F", "fault"),
    ("B2", "F", "fault"),
    ("C1", "F", "fault"),
    ("C2", "F", "fault"),
    ("D1", "F", "fault"),
    ("D2", "F", "fault"),
    ("E", "F", "fault"),
    ("UNAVAILABLE", "F", "fault"),
    ("F", "A", "f_ends"),
    ("F", "B1", "f_ends"),
    ("F", "B2", "f_ends"),
    ("F", "C1", "f_ends"),
    ("F", "C2", "f_ends"),
    ("F", "D1", "f_ends"),
    ("F", "D2", "f_ends"),
    ("F", "E", "f_ends"),
    ("F", "UNAVAILABLE", "f_ends"),
    # Control pilot shorted (E)
    ("A", "E", "cp_short"),
    ("B1", "E", "cp_short"),
    ("C1", "E", "cp_short"),
    ("D1", "E", "cp_short"),
    ("E", "A", "short_ends"),
    ("E", "B1", "short_ends"),
    ("E", "C1", "short_ends"),
    ("E", "D1", "short_ends"),
    # Wake-up and availability
    ("B2", "B1", "wake_up"),
    ("B1", "B2", "wake_up_end"),
    ("B2", "F", "wake_up"),
    ("A", "UNAVAILABLE", "unavailable"),
    ("UNAVAILABLE", "A", "available"),
    ("UNAVAILABLE", "B1", "available"),
    ("UNAVAILABLE", "B2", "available"),
    ("UNAVAILABLE", "C1", "available"),
    ("UNAVAILABLE", "C2", "available"),
    ("UNAVAILABLE", "D1", "available"),
    ("UNAVAILABLE", "D2", "available"),
)

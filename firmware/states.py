"""IEC 61851-1 charge states as small integers (shared by the core, sessions, MQTT, tools).

A..F are the pilot states; the x1/x2 suffix is the EVSE's own choice: x1 = steady +12 V
(no PWM, no current offered), x2 = PWM on (current offered). UNAVAILABLE is the station
taken out of service (operator "inoperative", service mode).
Which state can follow which: firmware/transitions.py and docs/state-machine.md.
"""
from firmware.compat import const

STATE_A = const(0)    # no EV
STATE_B1 = const(1)   # EV connected, no PWM
STATE_B2 = const(2)   # EV connected, PWM on, EV not requesting
STATE_C1 = const(3)   # EV requests, no PWM (not allowed to charge)
STATE_C2 = const(4)   # EV requests, PWM on: may charge
STATE_D1 = const(5)   # EV requests with ventilation, no PWM
STATE_D2 = const(6)   # EV requests with ventilation, PWM on
STATE_E = const(7)    # CP shorted to PE / EVSE unpowered
STATE_F = const(8)    # EVSE not available (EVSE drives -12 V)
STATE_UNAVAILABLE = const(9)

NAMES = ("A", "B1", "B2", "C1", "C2", "D1", "D2", "E", "F", "UNAVAILABLE")


def name(state):
    return NAMES[state]


def ev_connected(state):
    return STATE_B1 <= state <= STATE_D2


def ev_requesting(state):
    return STATE_C1 <= state <= STATE_D2

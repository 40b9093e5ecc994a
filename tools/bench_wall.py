"""Wall-clock benchmarks on the MicroPython unix port: reaction time and boot to ready.

    micropython -m tools.bench_wall RUN.json

RUN.json (written by tools/bench.py) has "mode":

- "wall": the station runs its own loop (as Station.run(): step, then sleep the rest of
  TICK_MS) on a board whose clock is the real one, with MQTT configured against a listener
  that accepts TCP and never answers, and the meter on the pymodbus peer. While charging, a
  pilot change (C->B or unplug, alternately) is scheduled at a random wall time; the board
  lets the next CP sample see it, and the time from the change to the contactor command
  "open" is taken with time.ticks_us(). Prints {"result": {"reactions_us": [...], ...}}.
- "boot": prints {"ready": ...} as soon as the first safety tick with state A has
  completed (tools/bench.py times the process from its start to that line).
"""
import sys
import time

T_MODULE_US = time.ticks_us()

import random  # noqa: E402

from firmware.compat import ticks_diff  # noqa: E402
from firmware.states import STATE_A  # noqa: E402
from tools.bench_rig import build, read_json, say  # noqa: E402
from tools.pilotsim.model import S2_C, S2_OPEN  # noqa: E402
from tools.pilotsim.simboard import SimBoard  # noqa: E402

_TICKS_MASK = 0x3FFFFFFF
CLOSE_LIMIT_MS = 10000


class WallBoard(SimBoard):
    """The simulator's board on the real clock, with a pilot change scheduled in wall
    time (`schedule`) and the coil's "open" command timed against it."""

    def __init__(self, **kw):
        SimBoard.__init__(self, **kw)
        self._wall0 = time.ticks_ms()
        self.due_us = None
        self.change = None
        self.stim_us = None
        self.reactions = []
        self.station = None
        self.ready_us = None

    def ticks_ms(self):
        # now_ms drives the contact and temperature models: keep it in real ms.
        self.now_ms = ticks_diff(time.ticks_ms(), self._wall0)
        return self.now_ms & _TICKS_MASK

    def sleep_ms(self, ms):
        time.sleep_ms(ms)

    def schedule(self, delay_us, change):
        self.change = change
        self.due_us = time.ticks_add(time.ticks_us(), delay_us)

    def sample_pilot(self):
        if self.due_us is not None and time.ticks_diff(time.ticks_us(), self.due_us) >= 0:
            self.change(self)
            self.stim_us = self.due_us
            self.due_us = None
        SimBoard.sample_pilot(self)

    def set_contactor(self, closed):
        if not closed and self.contactor_cmd and self.stim_us is not None:
            self.reactions.append(time.ticks_diff(time.ticks_us(), self.stim_us))
            self.stim_us = None
        SimBoard.set_contactor(self, closed)

    def feed_watchdog(self):
        SimBoard.feed_watchdog(self)
        if self.ready_us is None and self.station is not None \
                and self.station.charger.state == STATE_A:
            self.ready_us = time.ticks_us()


def _ev_stops(b):
    b.model.s2 = S2_OPEN
    b.model.update()


def _unplug(b):
    b.model.plugged = False
    b.model.s2 = S2_OPEN
    b.model.update()


def _charge(b):
    b.model.plugged = True
    b.model.s2 = S2_C
    b.model.update()


def wall(run):
    from firmware.station import TICK_MS
    st, b, _ = build(run["storage"], run["config"], run.get("meter_port"), WallBoard)
    trials = run.get("trials", 60)
    changes = (_ev_stops, _unplug)
    kinds = []
    late_steps = 0
    longest_step_us = 0
    longest_step_at = 0
    armed = False
    since = b.ticks_ms()
    _charge(b)
    while len(b.reactions) < trials:
        start = b.ticks_ms()
        t0 = time.ticks_us()
        st.step()
        spent_us = time.ticks_diff(time.ticks_us(), t0)
        if spent_us > longest_step_us:
            longest_step_us = spent_us
            longest_step_at = st.iterations
        if not armed:
            if b.contacts_closed and b.contactor_cmd:
                # Mostly C->B (the EV re-requests at once); every 4th an unplug, which
                # costs a new plug-in (self-test) before the next trial.
                k = 1 if len(kinds) % 4 == 3 else 0
                kinds.append(k)
                # Somewhere in the next 20..70 ms: any phase of the 10 ms loop.
                b.schedule(20000 + random.getrandbits(16) % 50000, changes[k])
                armed = True
            elif ticks_diff(b.ticks_ms(), since) > CLOSE_LIMIT_MS:
                raise RuntimeError("the contactor did not close (faults: %s)"
                                   % st.faults.active_names())
        elif b.due_us is None and b.stim_us is None and not b.contactor_cmd:
            _charge(b)
            armed = False
            since = b.ticks_ms()
        spent = ticks_diff(b.ticks_ms(), start)
        if spent < TICK_MS:
            b.sleep_ms(TICK_MS - spent)
        else:
            late_steps += 1
    link = st.link.stats() if st.link else {}
    return {"reactions_us": b.reactions, "kinds": kinds, "late_steps": late_steps,
            "longest_step_us": longest_step_us, "longest_step_at": longest_step_at,
            "iterations": st.iterations,
            "mqtt_state": link.get("state"), "mqtt_attempts": link.get("attempts"),
            "mqtt_failures": link.get("failures"), "mqtt_last_error": link.get("last_error"),
            "meter_cycles": st.meter.cycles if st.meter else None}


def boot(run):
    t_import_us = time.ticks_us()
    st, b, _ = build(run["storage"], run["config"], run.get("meter_port"), WallBoard)
    t_station_us = time.ticks_us()
    b.station = st
    while b.ready_us is None:
        st.step()
    say({"ready": {"imports_us": time.ticks_diff(t_import_us, T_MODULE_US),
                   "station_us": time.ticks_diff(t_station_us, t_import_us),
                   "first_tick_us": time.ticks_diff(b.ready_us, t_station_us),
                   "module_to_ready_us": time.ticks_diff(b.ready_us, T_MODULE_US),
                   "ready_to_line_us": time.ticks_diff(time.ticks_us(), b.ready_us)}})


def main(argv):
    run = read_json(argv[1])
    if run["mode"] == "boot":
        boot(run)
    else:
        say({"result": wall(run)})


if __name__ == "__main__":
    main(sys.argv)

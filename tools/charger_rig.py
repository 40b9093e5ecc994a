"""A test rig for firmware.charger: an EV on the pilot, a contactor with a mirror contact, a
residual-current monitor and a meter, all in simulated milliseconds.

Each step mimics the station loop: the inputs reflect the outputs of the previous tick
(the pilot is sampled with the duty last driven, the mirror follows the last command), then
`tick(now)` runs. Runs on CPython and on the MicroPython unix port.
"""
from firmware.charger import Charger
from firmware.compat import ticks_add, ticks_diff
from firmware.config import Config

try:
    import micropython
    _heap_lock = micropython.heap_lock
    _heap_unlock = micropython.heap_unlock
except (ImportError, AttributeError):
    micropython = None
    _heap_lock = None
    _heap_unlock = None

# Positive plateau of each EV state at the connector (Annex A circuit, 0.7 V diode).
EV_LEVEL_MV = {"A": 12000, "B": 8980, "C": 6000, "D": 2930, "E": 0,
               "X": 14000}   # X: a broken front end reading over 13 V
PP_CABLE_32A = 220
PP_OPEN = 100000

# Defaults the sequence tests start from: the charger closes without waiting for optional
# features unless a test enables them.
BASE = {"rcd_selftest": False, "auth_mode": "backend"}


class Rig:
    def __init__(self, start_ms=1000, tick_ms=10, heap_locked=False, **cfg):
        values = dict(BASE)
        values.update(cfg)
        self.cfg = Config(values)
        self.ch = Charger(self.cfg)
        self.now = start_ms
        self.tick_ms = tick_ms
        self.heap_locked = heap_locked
        self.ev = "A"                 # the EV's pilot state
        self.diode = True
        self.pp_ohms = PP_CABLE_32A   # the cable's coding while plugged in
        self.welded = False           # mirror stuck closed once it closed
        self.stuck_open = False       # contactor never closes
        self.leak = False             # a real residual current
        self.monitor_ok = True        # the monitor answers its test input
        self.monitor_stuck = False    # the trip line stays active after a test
        self.draw_ma = None           # None: the EV draws what is offered while charging
        self.temp_dc = None
        self.lock_works = True
        self.meter_valid = True
        self.ticks = 0
        self._mirror = False

    # -- the world ---------------------------------------------------------------------
    def _inputs(self):
        ch = self.ch
        duty = ch.duty_pm
        if duty == 0:
            high = low = -12000
        else:
            high = EV_LEVEL_MV[self.ev]
            if duty == 1000:
                low = high
            elif self.ev == "E":
                low = 0
            elif self.diode or self.ev == "A":
                low = -12000
            else:
                low = -high
        ch.cp_high_mv = high
        ch.cp_low_mv = low
        ch.pp_ohms = PP_OPEN if self.ev == "A" else self.pp_ohms
        ch.rcd_tripped = self.leak or self.monitor_stuck or (ch.rcd_test and self.monitor_ok)
        if self.welded and self._mirror:
            mirror = True
        elif self.stuck_open:
            mirror = False
        else:
            mirror = ch.contactor
        self._mirror = mirror
        ch.mirror_closed = mirror
        ch.temp_dc = self.temp_dc
        ch.lock_ok = ch.lock and self.lock_works
        if mirror:
            draw = ch.offered_ma if self.draw_ma is None else self.draw_ma
        else:
            draw = 0
        ch.phase_ma[0] = draw
        ch.phase_ma[1] = draw
        ch.phase_ma[2] = draw
        ch.phase_ma_valid = self.meter_valid

    def step(self, n=1):
        for _ in range(n):
            self._inputs()
            if self.heap_locked:
                _heap_lock()
                try:
                    self.ch.tick(self.now)
                finally:
                    _heap_unlock()
            else:
                self.ch.tick(self.now)
            self.ticks += 1
            self.now = ticks_add(self.now, self.tick_ms)

    def run_ms(self, ms):
        self.step(ms // self.tick_ms)

    def run_until(self, pred, limit_ms):
        """Step until pred() holds; return the simulated ms it took, or -1 at the limit."""
        start = self.now
        while ticks_diff(self.now, start) <= limit_ms:
            if pred():
                return ticks_diff(self.now, start)
            self.step()
        return -1

    # -- common sequences ---------------------------------------------------------------
    def plug(self, state="B"):
        self.ev = state
        self.step(3)

    def charging(self):
        """Plug in, authorize, request: return with the contactor closed."""
        self.plug("B")
        self.ch.authorize(True)
        self.step(3)
        self.ev = "C"
        if self.run_until(lambda: self.ch.contactor, 3000) < 0:
            raise AssertionError("contactor did not close")
        self.step(2)

    def last_tick_ms(self):
        # The time passed to the most recent tick.
        return ticks_add(self.now, -self.tick_ms)

    def events_of(self, kind):
        return [e for e in self.ch.events.recent() if e[1] == kind]

"""A station on the simulator's board that can be reset every way a real one is: a backend
`reboot`, the watchdog, a crash in the loop, a power cut at any flash operation. The
physical world (the EV, the contactor, the residual-current monitor, the lock, what the
EV draws) lives in `World` and outlasts every reset; the flash is a PowerCutFs.

Runs on CPython and on the MicroPython unix port.
"""
from firmware.meter_service import NEW_READING
from firmware.station import TICK_MS, Station
from firmware.storage import Store
from tools.powercut_fs import PowerCutFs
from tools.pilotsim.model import S2_C, S2_OPEN
from tools.pilotsim.simboard import SimBoard

NO_BACKEND = {}


class World:
    def __init__(self):
        self.plugged = False
        self.s2 = S2_OPEN
        self.diode_short = False
        self.leak = False              # a residual current: the monitor trips
        self.monitor_ok = True         # the monitor answers its self-test
        self.welded = False            # the contacts stay closed once closed
        self.stuck_open = False        # the contacts never close
        self.contacts_closed = False   # where the contacts are (kept across a reset)
        self.lock_works = True
        self.draw_ma = None            # with a meter: what the EV draws while closed


class Meter:
    """A meter that answers every poll: `world.draw_ma` on each phase while the contacts
    are closed. A requested final reading takes `final_ms`."""

    def __init__(self, board, world, final_ms=0):
        self.board = board
        self.world = world
        self.final_ms = final_ms
        self.stale = False
        self.implausible = False
        self.readings = 0
        self.cycles = 0
        self.import_wh = 100000
        self.power_w = 0
        self.current_ma = [0, 0, 0]
        self.voltage_dv = [2300, 2300, 2300]
        self.base_wh = None
        self.sampled_ms = None
        self.serial = None
        self._final_at = None

    def poll(self, now):
        d = self.world.draw_ma if (self.world.draw_ma and self.board.contacts_closed) else 0
        self.current_ma[0] = self.current_ma[1] = self.current_ma[2] = d
        if self._final_at is not None:
            if self.board.now_ms < self._final_at:
                return 0                   # the requested cycle is still on the bus
            self._final_at = None
        self.readings += 1
        self.cycles += 1
        self.sampled_ms = now
        return NEW_READING

    def request_reading(self, serial=False):
        self._final_at = self.board.now_ms + self.final_ms
        return self.cycles + 1

    def request_serial(self):
        pass

    def cycle_finished(self, n):
        return self.cycles >= n

    def configure(self, cfg):
        pass

    def stats(self):
        return {"cycles": self.cycles}


class Board(SimBoard):
    def __init__(self, world, cause="power_on", crash=None, **kw):
        SimBoard.__init__(self, **kw)
        self.world = world
        self.cause = cause
        self.crash_text = crash
        self.crash_now = False         # the next pilot sample raises (a crash in the loop)
        self.wall = True               # False: the clock is not set (no SNTP yet)
        self.pilot_log = []            # (now_ms, duty) each time the pilot changes
        # The contacts are where the last boot left them; with the coil unpowered since the
        # reset, sync() opens them unless they are welded.
        self.contacts_closed = world.contacts_closed
        self.sync()

    def reset_cause(self):
        return self.cause

    def wall_time(self):
        return SimBoard.wall_time(self) if self.wall else None

    def set_pilot(self, duty):
        if duty != self.duty:
            self.pilot_log.append((self.now_ms, duty))
        SimBoard.set_pilot(self, duty)

    def sample_pilot(self):
        if self.crash_now:
            raise RuntimeError("crash in the loop")
        SimBoard.sample_pilot(self)

    def lock_confirmed(self):
        return self.lock and self.world.lock_works

    def sync(self):
        """Push the world's changes to the board (call after changing the world)."""
        w = self.world
        m = self.model
        m.plugged = w.plugged
        m.s2 = w.s2
        m.diode_short = w.diode_short
        m.update()
        self.rcd_fault = w.leak
        self.rcd_selftest_ok = w.monitor_ok
        self.contactor_welded = w.welded
        self.contactor_stuck_open = w.stuck_open
        if not w.welded and not self.contactor_cmd:
            self.contacts_closed = False


class Rig:
    def __init__(self, world=None, fs=None, config=NO_BACKEND, start_ms=0, cause="power_on",
                 crash=None, meter=False, final_ms=0, wall=True):
        self.world = world if world is not None else World()
        self.fs = fs if fs is not None else PowerCutFs()
        self.config = config
        self.meter = meter
        self.final_ms = final_ms
        self.board = Board(self.world, cause=cause, crash=crash, start_ms=start_ms)
        self.board.wall = wall
        self.station = Station(self.board, config=config, store=Store("/data", self.fs))
        if meter:
            self.station.meter = Meter(self.board, self.world, final_ms)
        self.closed_ever = False        # the contactor was commanded closed since boot

    # -- running ----------------------------------------------------------------------
    def step(self):
        self.station.step()
        b = self.board
        self.world.contacts_closed = b.contacts_closed
        if b.contactor_cmd:
            self.closed_ever = True
        b.sleep_ms(TICK_MS)

    def run(self, ms):
        for _ in range(ms // TICK_MS):
            self.step()

    def run_until(self, pred, limit_ms):
        t = 0
        while t <= limit_ms:
            if pred():
                return t
            self.step()
            t += TICK_MS
        return None

    def ev(self, plugged=None, s2=None, **world):
        w = self.world
        if plugged is not None:
            w.plugged = plugged
        if s2 is not None:
            w.s2 = s2
        for k in world:
            setattr(w, k, world[k])
        self.board.sync()

    def plug_and_request(self):
        self.ev(plugged=True, s2=S2_C)

    # -- resets -----------------------------------------------------------------------
    def boot_again(self, cause="power_on", crash=None, fs=None, wall=True, after_ms=5000):
        """The next boot on the flash as it is now (or `fs`), the world unchanged."""
        fs = fs if fs is not None else self.fs.restart()
        return Rig(self.world, fs, self.config, start_ms=self.board.now_ms + after_ms,
                   cause=cause, crash=crash, meter=self.meter, final_ms=self.final_ms,
                   wall=wall)

"""The simulator's board: firmware.board.Board over the electrical model, in simulated time.

The firmware (Station) runs unchanged on the MicroPython unix port; only the hardware is
simulated. Time is simulated: `ticks_ms()` returns the simulated clock (wrapping at 2**30,
as on the ESP32) and `sleep_ms()` advances it, after giving the runner's pacer a chance to
wait for real peers in wall time (see docs/scenarios.md, "Time").

The [tick] methods allocate nothing (tests/unit/test_pilotsim_simboard.py checks that
under micropython.heap_lock()): integer arithmetic on attributes that already exist.
"""
from firmware import board as _board
from firmware.compat import const

from tools.pilotsim.model import FrontEnd, PilotModel

_TICKS_MASK = const(0x3FFFFFFF)


class SimBoard(_board.Board):
    """A Board whose CP/PP, contactor, residual-current monitor and temperature sensor are
    simulated. Fault injection is by attribute (the scenario player sets them):

    - `model`: the CP/PP circuit (PilotModel: EV resistors, diode short, CP short, CP open,
      PE loss); call `model.update()` after changing it.
    - `contactor_welded`: the main contacts stay closed once closed.
    - `contactor_stuck_open`: the contacts never close (coil or supply fault).
    - `rcd_fault`: the residual-current monitor signals a trip.
    - `rcd_selftest_ok`: the monitor answers its test input (False: self-test fails).
    - `ramp_temperature()`: the sensor follows a linear ramp in simulated time.
    """

    def __init__(self, model=None, frontend=None, start_ms=0, storage="data",
                 meter_uart=None, contactor_delay_ms=30, temperature_dc=250):
        self.model = model if model is not None else PilotModel()
        self.frontend = frontend if frontend is not None else FrontEnd()
        self.now_ms = start_ms          # simulated ms, not wrapped (the trace uses it)
        self.pacer = None               # callable(ms) -> None, set by the runner
        self.cp_high_mv = 0
        self.cp_low_mv = 0
        self.duty = _board.PILOT_STEADY_HIGH
        self.powered = True             # False during a simulated power cut
        # contactor: commanded coil, actual contacts (what the mirror contact reports)
        self.contactor_delay_ms = contactor_delay_ms
        self.contactor_cmd = False
        self.contacts_closed = False
        self._contact_change_ms = 0
        self.contactor_welded = False
        self.contactor_stuck_open = False
        # residual-current monitor
        self.rcd_fault = False
        self.rcd_selftest_ok = True
        self.rcd_test_on = False
        # temperature sensor, tenths of a degree C (None: no sensor)
        self.has_temperature = temperature_dc is not None
        self._temp_from = temperature_dc if temperature_dc is not None else 0
        self._temp_to = self._temp_from
        self._temp_start = 0
        self._temp_span = 1
        self.led = _board.LED_BOOT
        self.lock = False
        self.watchdog_feeds = 0
        self._meter_uart = meter_uart
        self.meter_line = None
        self.crash_text = None          # what a previous run left (runner sets it)
        self._storage = storage
        self.reset_requests = 0

    # -- time ------------------------------------------------------------------------
    def ticks_ms(self):
        return self.now_ms & _TICKS_MASK

    def sleep_ms(self, ms):
        if self.pacer is not None:
            self.pacer(ms)
        self.now_ms += ms

    # -- control pilot -----------------------------------------------------------------
    def set_pilot(self, duty_permille):
        self.duty = duty_permille

    def sample_pilot(self):
        m = self.model
        fe = self.frontend
        d = self.duty
        if not self.powered or d < 0:
            hi = 0                      # no oscillator: the CP sits at 0 V (state E)
            lo = 0
        elif d >= _board.PILOT_STEADY_HIGH:
            hi = m.high_mv
            lo = hi
        elif d <= _board.PILOT_STEADY_LOW:
            hi = m.low_mv
            lo = hi
        else:
            hi = m.high_mv
            lo = m.low_mv
        self.cp_high_mv = fe.measure_cp(hi)
        self.cp_low_mv = fe.measure_cp(lo)

    def read_pp_ohms(self):
        return self.frontend.measure_pp(self.model.pp_ohms)

    # -- contactor ---------------------------------------------------------------------
    def set_contactor(self, closed):
        if closed != self.contactor_cmd:
            self.contactor_cmd = closed
            self._contact_change_ms = self.now_ms

    def _contacts(self):
        # The armature moves contactor_delay_ms after the coil changes.
        if self.contactor_cmd:
            if (not self.contacts_closed and not self.contactor_stuck_open
                    and self.now_ms - self._contact_change_ms >= self.contactor_delay_ms):
                self.contacts_closed = True
        elif self.contacts_closed and not self.contactor_welded:
            if self.now_ms - self._contact_change_ms >= self.contactor_delay_ms:
                self.contacts_closed = False
        return self.contacts_closed

    def contactor_mirror_closed(self):
        # The mirror contact is mechanically linked to the main contacts: a welded contact
        # keeps it closed (IEC 60947-4-1 Annex F), which is how the firmware detects it.
        return self._contacts()

    # -- residual current ----------------------------------------------------------------
    def rcd_tripped(self):
        return self.rcd_fault or (self.rcd_test_on and self.rcd_selftest_ok)

    def set_rcd_test(self, on):
        self.rcd_test_on = on

    # -- temperature -------------------------------------------------------------------
    def ramp_temperature(self, to_dc, over_ms):
        """From the present reading to `to_dc` linearly over `over_ms` of simulated time."""
        self._temp_from = self.temperature_dc()
        self._temp_to = to_dc
        self._temp_start = self.now_ms
        self._temp_span = over_ms if over_ms > 0 else 1
        self.has_temperature = True

    def temperature_dc(self):
        if not self.has_temperature:
            return None
        el = self.now_ms - self._temp_start
        if el >= self._temp_span:
            return self._temp_to
        return self._temp_from + (self._temp_to - self._temp_from) * el // self._temp_span

    # -- lock, indication, supervision ----------------------------------------------------
    def set_lock(self, locked):
        self.lock = locked

    def lock_confirmed(self):
        return self.lock

    def set_led(self, pattern):
        self.led = pattern

    def feed_watchdog(self):
        self.watchdog_feeds = (self.watchdog_feeds + 1) & _TICKS_MASK

    # -- buses and system ------------------------------------------------------------------
    def attach_meter(self, uart):
        """Put a meter on the RS-485 bus (before the firmware starts and asks for it)."""
        self._meter_uart = uart

    def meter_uart(self, baudrate=9600, parity="N"):
        # Over TCP there is no line coding; remembered so a run can show what was asked.
        self.meter_line = (baudrate, parity)
        return self._meter_uart

    def storage_root(self):
        return self._storage

    def power_off(self):
        """Mains gone: the coil drops (contacts open after the armature delay), the CP
        oscillator stops, the residual-current test output is released."""
        self.powered = False
        self.duty = -1                  # no output at all (the trace shows -1)
        self.set_contactor(False)
        self.rcd_test_on = False
        self.reset_requests = 0

    def power_on(self):
        self.powered = True
        self.duty = _board.PILOT_STEADY_HIGH

    def reset_cause(self):
        return "power_on" if not self.reset_requests else "soft"

    def last_crash(self):
        return self.crash_text

    def reset(self):
        # A reset releases every output: the coil drops, and the board comes back up the way
        # the ESP32 board's constructor leaves it, pilot at steady +12 V (no current offered)
        # before the new firmware's first tick samples it.
        self.reset_requests += 1
        self.set_contactor(False)
        self.rcd_test_on = False
        self.lock = False
        self.duty = _board.PILOT_STEADY_HIGH
        raise SimReset()

    def wall_time(self):
        # A fixed, repeatable UTC start (2026-01-05 08:00, a Monday) plus simulated time.
        return 1767600000 + self.now_ms // 1000


class SimReset(Exception):
    """Raised by SimBoard.reset(): the runner restarts the firmware on the same board."""

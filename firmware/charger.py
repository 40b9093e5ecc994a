"""The IEC 61851-1 Mode 3 charge controller: pilot states, contactor, and the safety checks.

Data flows one way through `tick()`: the station writes the measured inputs (plain
attributes), calls `tick(now_ms)`, and drives the board from the outputs. `tick()` classifies
the pilot, checks every safety input, decides, and sets the outputs; it allocates nothing,
does no I/O and uses no float, so it runs every 10 ms whatever the network or the meter do.
Everything that opens the contactor happens inside `tick()`. Commands from the backend, the
authorization layer or the operator (`authorize`, `pause`, `set_backend_limit`, ...) only set
requests that the next tick acts on.

Annex A timing as implemented (docs/faults.md explains the choices):
  - C2 confirmed -> contactor closed after b_to_c_debounce_ms (0.5 s), well inside 3 s; the
    residual-current self-test and the socket lock run at plug-in, before that.
  - C->B, C->A, E, F, diode fault, residual-current trip -> open in the tick that confirms
    it (pilot_confirm_n readings: 20 ms at a 10 ms tick).
  - PWM switched off while the EV stays in C -> open after pwm_off_open_ms (6 s).
  - Any new fault that stops charging -> contactor open at once, state F (-12 V) for
    fault_hold_ms (>= 300 ms, Table A.5), then x1 (+12 V) while the fault stays.
  - Current increases at most once per duty_update_interval_ms (5 s); decreases (including
    pause) apply at once, because they protect the cable, the site or the contactor.
  - An F hold runs its full fault_hold_ms before a commanded reset (`ready_for_reset`).
Every value in the timing keys' ranges (firmware/config.py) keeps these limits.

A reset clears none of the latched faults nor the backend limit: the station keeps them in
firmware/safestate.py and restores them into a new Charger before its first tick.
"""
from firmware.board import (
    LED_CHARGING, LED_CONNECTED, LED_FAULT, LED_IDLE, LED_PAUSED, LED_UNAVAILABLE,
    PILOT_STEADY_HIGH, PILOT_STEADY_LOW)
from firmware.compat import const, ticks_diff
from firmware.events import (
    EV_CONTACTOR, EV_LOCK, EV_OFFER, EV_SELFTEST, EV_STATE, EV_WAKEUP, EventRing)
from firmware.faults import (
    CONTACTOR_NOT_CLOSING, CONTACTOR_WELDED, CP_SHORT, DIODE_FAULT, LOCK_FAILED, OVERCURRENT,
    OVERTEMP, PILOT_FAULT, PP_INVALID, RCD_SELFTEST_FAILED, RCD_TRIPPED, TEMP_SENSOR_FAILED,
    VENTILATION_UNSUPPORTED, FaultSet)
from firmware.pilot import (
    CURRENT_MAX_MA, CURRENT_MIN_MA, PILOT_A, PILOT_B, PILOT_C, PILOT_D, PILOT_E, PILOT_F,
    PILOT_HOLD, PilotFilter, classify, duty_for_current, pp_rating_ma)
from firmware.pilot import DIODE_FAULT as _LEVEL_DIODE_FAULT
from firmware.pilot import PILOT_FAULT as _LEVEL_PILOT_FAULT
from firmware.states import (
    STATE_A, STATE_B1, STATE_B2, STATE_C1, STATE_C2, STATE_D1, STATE_D2, STATE_E, STATE_F,
    STATE_UNAVAILABLE)

# Why the contactor moved (EV_CONTACTOR, b).
CONTACTOR_CHARGE = const(0)          # closed: C2/D2 confirmed and everything ready
CONTACTOR_EV_STOPPED = const(1)      # EV left C/D (opened S2): C->B
CONTACTOR_UNPLUGGED = const(2)       # C->A
CONTACTOR_FAULT = const(3)           # a fault that stops charging
CONTACTOR_PWM_OFF = const(4)         # PWM off and the EV stayed in C for pwm_off_open_ms
CONTACTOR_PILOT_LOST = const(5)      # the pilot no longer reads a charging state
CONTACTOR_REASON_NAMES = ("charge", "ev_stopped", "unplugged", "fault", "pwm_off_timeout",
                          "pilot_lost")

# Which limit sets the offered current (`limit_reason`, EV_OFFER b).
LIMIT_CONFIG = const(0)      # max_current_ma (installation)
LIMIT_CABLE = const(1)       # the cable's PP rating
LIMIT_BACKEND = const(2)     # set_backend_limit()
LIMIT_THERMAL = const(3)     # over-temperature derating
LIMIT_COMMS = const(4)       # the comms-loss fallback
LIMIT_PAUSED = const(5)      # pause() by the backend
LIMIT_NONE = const(6)        # nothing offered for another reason: no EV, not authorized,
                             # unavailable, or a fault that stops charging
LIMIT_NAMES = ("config", "cable", "backend", "thermal", "comms", "paused", "none")

# IEC 61851-1: the EV follows a lower duty within 5 s, so the old offer stays the
# over-current reference for that long.
_EV_RESPONSE_MS = const(5000)
# A PP reading must be bad this long before it counts (contact bounce while plugging).
_PP_DEBOUNCE_MS = const(200)
# Temperature readings outside this range (tenths of a degree C) are a broken sensor.
_TEMP_MIN_DC = const(-400)
_TEMP_MAX_DC = const(1500)

# Residual-current self-test phases.
_ST_IDLE = const(0)
_ST_DRIVE = const(1)       # test output on, waiting for the trip line
_ST_RELEASE = const(2)     # test output off, waiting for the trip line to clear

# Wake-up phases (once per plug-in).
_WAKE_ARMED = const(0)
_WAKE_ACTIVE = const(1)
_WAKE_DONE = const(2)


class ChargerError(ValueError):
    pass


def _check_ma(name, ma):
    if ma is True or ma is False or not isinstance(ma, int):
        raise ChargerError("%s: expected an integer (mA)" % name)
    if ma < 0 or ma > CURRENT_MAX_MA:
        raise ChargerError("%s: %d mA out of range 0..%d" % (name, ma, CURRENT_MAX_MA))


def _check_bool(name, on):
    if on is not True and on is not False:
        raise ChargerError("%s: expected true or false" % name)


class Charger:
    def __init__(self, cfg, events=None, faults=None):
        self.cfg = cfg
        self.events = events if events is not None else EventRing(64)
        self.faults = faults if faults is not None else FaultSet(self.events)
        if self.faults.events is None:
            self.faults.events = self.events
        self._filter = PilotFilter(2)
        self._ceiling_ma = CURRENT_MAX_MA  # the hardware's rating (set_ceiling)
        self.reload_config()

        # -- inputs (written by the station before each tick) --
        self.cp_high_mv = 12000
        self.cp_low_mv = 12000
        self.pp_ohms = 100000
        self.rcd_tripped = False
        self.mirror_closed = False
        self.temp_dc = None
        self.phase_ma = [0, 0, 0]
        self.phase_ma_valid = False
        self.lock_ok = True

        # -- outputs (read by the station after each tick) --
        self.duty_pm = PILOT_STEADY_HIGH
        self.contactor = False
        self.rcd_test = False
        self.lock = False
        self.state = STATE_A
        self.offered_ma = 0
        self.led = LED_IDLE
        self.limit_reason = LIMIT_NONE
        self.pilot_level = PILOT_HOLD      # confirmed raw level (firmware.pilot PILOT_*)

        # -- requests (set by commands between ticks) --
        self.authorized = self._free
        self.available = True
        self.paused = False
        self._backend_ma = -1              # -1: no backend limit
        self._comms_ma = -1                # -1: no comms-loss fallback active
        self._selftest_requested = False

        self._now = 0
        self._level_since = 0
        self._connected = False           # an EV was seen (B/C/D) since the last A
        self._c_stable = False            # C/D confirmed for b_to_c_debounce_ms
        self._pwm_reads = 0               # consecutive readings of the level under PWM
        self._prev_blocking = 0
        self._f_hold = False
        self._f_since = 0
        self._open_ok = True              # contactor open long enough to re-close
        self._opened_at = 0
        self._mismatch = False
        self._mismatch_since = 0
        self._pwm_off = False
        self._pwm_off_since = 0
        self._offer_changed_at = 0
        self._offer_rate_ok = True
        self._thermal = 0                 # 0 none, 1 half, 2 quarter, 3 stop
        self._temp_seen = False           # the sensor has given a reading since boot
        self._cable_ma = 0
        self._pp_bad = False
        self._pp_bad_since = 0
        self._oc_over = False
        self._oc_since = 0
        self._oc_ref_ma = 0
        self._oc_ref_since = 0
        self._oc_ref_active = False
        self._st_phase = _ST_IDLE
        self._st_since = 0
        self._st_took = 0
        self._st_session_passed = False
        self._st_last_pass = 0
        self._st_period_started = False
        self._st_due = False
        self._lock_since = 0
        self._wake = _WAKE_ARMED
        self._wake_since = 0
        self._b2 = False
        self._b2_since = 0
        self._limit_ma = 0
        self._limit_why = LIMIT_CONFIG

    # -- configuration -----------------------------------------------------------------
    def reload_config(self):
        """Copy the charge controller's keys out of the Config (call after a config change;
        the tick reads only these copies, so a lookup cannot allocate or fail mid-tick)."""
        c = self.cfg
        self._max_ma = c["max_current_ma"]
        self._vent = c["ventilation_supported"]
        self._wake_enabled = c["wake_up_enabled"]
        self._wake_after = c["wake_up_after_ms"]
        self._wake_f = c["wake_up_pilot"] == "F"
        self._wake_hold = c["wake_up_hold_ms"]
        self._oc_margin = c["overcurrent_margin_ma"]
        self._oc_grace = c["overcurrent_grace_ms"]
        self._t_derate = c["temp_derate_dc"]
        self._t_restore = c["temp_restore_dc"]
        self._t_quarter = c["temp_quarter_dc"]
        self._t_stop = c["temp_stop_dc"]
        self._temp_required = c["temp_sensor_required"]
        self._rcd_selftest = c["rcd_selftest"]
        self._st_timeout = c["rcd_selftest_timeout_ms"]
        self._st_period = c["rcd_selftest_period_ms"]
        self._welded_ms = c["welded_check_ms"]
        self._close_timeout = c["contactor_close_timeout_ms"]
        self._debounce = c["b_to_c_debounce_ms"]
        self._fault_hold = c["fault_hold_ms"]
        self._pwm_off_open = c["pwm_off_open_ms"]
        self._lock_enabled = c["lock_enabled"]
        self._lock_timeout = c["lock_timeout_ms"]
        self._rate_ms = c["duty_update_interval_ms"]
        self._socket = c["socket_outlet"]
        self._free = c["auth_mode"] == "free"
        n = c["pilot_confirm_n"]
        if n != self._filter.confirm_n:
            # Keep the confirmed level: a config change is no pilot change, and forgetting
            # it would read as "pilot lost" and open the contactor under load.
            f = PilotFilter(n)
            f.level = self._filter.level
            self._filter = f

    # -- commands (between ticks; they only record the request) ------------------------
    def authorize(self, on):
        """The authorization layer allows (True) or withdraws (False) charging. Without it
        the EV sees B1/C1 (steady +12 V). Authorization ends when the EV is unplugged
        (with auth_mode "free" each session starts authorized)."""
        _check_bool("authorize", on)
        self.authorized = on

    def set_available(self, on):
        """Operator "inoperative" (False): a running charge is stopped as for pause (PWM off,
        contactor open when the EV stops or after pwm_off_open_ms); a connected EV then sees
        x1 (steady +12 V) until it is unplugged, and after that the pilot is held at -12 V
        (state F) and the state is UNAVAILABLE."""
        _check_bool("set_available", on)
        self.available = on

    def set_backend_limit(self, ma):
        """Backend current limit in mA (0 = pause; under 6000 also pauses), until replaced
        or cleared (None). An expiry is the station's to count: it may outlast ticks."""
        if ma is None:
            self._backend_ma = -1
            return
        _check_ma("backend limit", ma)
        self._backend_ma = ma

    def set_ceiling(self, ma):
        """The hardware's rated current (board file): no limit, configured or commanded,
        makes the charger offer more."""
        _check_ma("ceiling", ma)
        self._ceiling_ma = ma

    def ceiling_ma(self):
        return self._ceiling_ma

    def clear_backend_limit(self):
        self.set_backend_limit(None)

    def backend_limit_ma(self):
        """The backend limit in force (mA), or -1 when there is none."""
        return self._backend_ma

    def set_comms_fallback(self, ma):
        """Backend unreachable: limit to `ma` (0 = pause) until clear_comms_fallback()."""
        _check_ma("comms fallback", ma)
        self._comms_ma = ma

    def clear_comms_fallback(self):
        self._comms_ma = -1

    def pause(self):
        """Backend stop inside a session: offer nothing (PWM off) but keep the session."""
        self.paused = True

    def resume(self):
        self.paused = False

    def request_selftest(self):
        """Run the residual-current self-test as soon as the contactor is open."""
        self._selftest_requested = True

    def clear_fault(self, code, remote):
        """Ask to clear fault `code`; None when cleared, else the reason it was refused."""
        return self.faults.clear_request(code, bool(remote), self._now)

    def ready_for_reset(self, force=False):
        """True when a reset now would cut nothing short: no F hold running (IEC 61851-1
        Table A.5: at least fault_hold_ms, whatever comes next, a reboot included) and the
        contactor open. `force`: the EV has had its time to stop, open or not."""
        if self._f_hold:
            return False
        return force or not self.contactor

    def pilot_unconfirmed(self):
        """True when the last tick saw a new pilot level that awaits its confirming
        reading (the station then samples again at once instead of a tick later)."""
        return self._filter.pending()

    def effective_limit_ma(self):
        """min(max_current_ma, cable rating, backend limit, comms fallback, thermal); under
        6000 means pause. `limit_why()` names the binding one."""
        return self._compute_limit()

    def limit_why(self):
        """LIMIT_* code of the limit that binds effective_limit_ma()."""
        self._compute_limit()
        return self._limit_why

    def status(self):
        """A snapshot for telemetry (allocates: not for the tick)."""
        from firmware.states import NAMES
        return {
            "state": NAMES[self.state], "offered_ma": self.offered_ma,
            "duty_pm": self.duty_pm, "contactor": self.contactor,
            "limit": LIMIT_NAMES[self.limit_reason], "authorized": self.authorized,
            "available": self.available, "paused": self.paused,
            "faults": self.faults.active_names(),
        }

    # -- the safety tick ---------------------------------------------------------------
    def tick(self, now_ms):
        """Classify, decide, act. No allocation, no I/O, no float."""
        now = now_ms
        self._now = now
        fs = self.faults

        # -- sense: the pilot (not while we drive -12 V ourselves: then the EV is invisible)
        if self.duty_pm != PILOT_STEADY_LOW:
            sampled_pwm = 0 < self.duty_pm < PILOT_STEADY_HIGH
            raw = classify(self.cp_high_mv, self.cp_low_mv, sampled_pwm)
            level = self._filter.update(raw)
            if level != self.pilot_level:
                self.pilot_level = level
                self._level_since = now
                self._c_stable = False
            # C2 is C read while the PWM runs, the only time the EV's diode shows: closing
            # waits for confirm_n such readings (capped: a small int, no allocation).
            if sampled_pwm and raw == level:
                if self._pwm_reads < 100:
                    self._pwm_reads += 1
            else:
                self._pwm_reads = 0
        else:
            self._pwm_reads = 0
        level = self.pilot_level
        requesting = level == PILOT_C or level == PILOT_D
        ev_seen = level == PILOT_B or requesting

        # -- check: every safety input, every tick
        self._check_pilot(now, level)
        if level == PILOT_A:
            if self._connected:
                self._on_unplug(now)
            fs.unplugged(now)
        elif ev_seen:
            self._connected = True
        self._check_rcd(now)
        self._check_mirror(now)
        self._check_temperature(now)
        self._check_pp(now, level, ev_seen)
        self._check_overcurrent(now)
        self._check_lock(now)
        self._selftest(now)                 # before deciding: its failure blocks this tick
        fs.update(now)

        if requesting and not self._c_stable \
                and ticks_diff(now, self._level_since) >= self._debounce:
            self._c_stable = True
        if not self._open_ok and ticks_diff(now, self._opened_at) >= self._welded_ms:
            self._open_ok = True

        # -- decide: faults first
        blocking = fs.blocking()
        if blocking & ~self._prev_blocking:
            self._open(now, CONTACTOR_FAULT)
            self._f_hold = True
            self._f_since = now
        self._prev_blocking = blocking
        if self._f_hold and ticks_diff(now, self._f_since) >= self._fault_hold:
            self._f_hold = False

        # -- the offer (what the PWM says)
        limit = self._compute_limit()
        if self.paused:
            why = LIMIT_PAUSED
            target = 0
        elif blocking or not self.authorized or not self.available or not self._connected:
            why = LIMIT_NONE
            target = 0
        else:
            why = self._limit_why
            target = limit if limit >= CURRENT_MIN_MA else 0
        self.limit_reason = why
        self._update_offer(now, target, why)

        # -- decide: pilot output and contactor
        duty = PILOT_STEADY_HIGH
        close = False
        open_reason = CONTACTOR_PILOT_LOST
        state = -1                       # -1: derive from the pilot level below
        if self._f_hold:
            duty = PILOT_STEADY_LOW
            state = STATE_F
        elif blocking:
            pass                         # x1: the EV stays visible so unplug is seen
        elif (not self.available and not self.contactor and not self._connected
                and not STATE_B1 <= self.state <= STATE_D2):
            # -12 V hides the EV, so F waits until the connected EV has left and its A
            # has been reported: a replug meanwhile would inherit its authorization.
            duty = PILOT_STEADY_LOW
            state = STATE_UNAVAILABLE
        else:
            pwm = self.offered_ma > 0 and ev_seen and self.available
            if pwm:
                duty = duty_for_current(self.offered_ma)
            duty = self._wake_up(now, level, pwm, duty)
            if requesting:
                # Closing needs PWM on (C2/D2) and the level read under it, the debounce,
                # a passed self-test, the lock confirmed, and the contactor open long
                # enough for the welded check after its last opening. Staying closed needs
                # only PWM on: a lost lock or a failed check opens through its fault.
                close = 0 < duty < PILOT_STEADY_HIGH and (
                    self.contactor or (self._c_stable and self._selftest_ok()
                                       and self._pwm_reads >= self._filter.confirm_n
                                       and self._lock_ready() and self._open_ok
                                       and not self.mirror_closed))
                if self.contactor and not close and duty == PILOT_STEADY_HIGH:
                    # PWM off while the EV stays in C: it should stop within 3 s; open at
                    # pwm_off_open_ms at the latest.
                    if not self._pwm_off:
                        self._pwm_off = True
                        self._pwm_off_since = now
                    if ticks_diff(now, self._pwm_off_since) < self._pwm_off_open:
                        close = True
                    else:
                        open_reason = CONTACTOR_PWM_OFF
            elif level == PILOT_B:
                open_reason = CONTACTOR_EV_STOPPED
            elif level == PILOT_A:
                open_reason = CONTACTOR_UNPLUGGED

        # -- act
        if close and not self.contactor:
            self.contactor = True
            self._mismatch = False
            self._pwm_off = False
            self.events.push(now, EV_CONTACTOR, 1, CONTACTOR_CHARGE)
        elif not close and self.contactor:
            self._open(now, open_reason)
        if close and 0 < duty < PILOT_STEADY_HIGH:
            self._pwm_off = False
        if duty == PILOT_STEADY_LOW and self.pilot_level != PILOT_HOLD:
            # While we drive -12 V the EV is invisible: its last level is stale from now on
            # and is read afresh (confirm_n readings) once +12 V or PWM is back.
            self._filter.reset()
            self.pilot_level = PILOT_HOLD
            self._level_since = now
            self._c_stable = False
        self.duty_pm = duty

        if state < 0:
            if duty == PILOT_STEADY_LOW:
                state = STATE_F               # a wake-up on -12 V
            else:
                state = self._state_for(level, duty != PILOT_STEADY_HIGH)
        if state != self.state:
            self.events.push(now, EV_STATE, state, self.state)
            self.state = state
        self._update_led(blocking, ev_seen)

    # -- tick helpers (allocation-free) -------------------------------------------------
    def _open(self, now, reason):
        if self.contactor:
            self.contactor = False
            self._open_ok = False
            self._opened_at = now
            self._mismatch = False
            self.events.push(now, EV_CONTACTOR, 0, reason)
        self._pwm_off = False

    def _on_unplug(self, now):
        # A session ends at unplug: its authorization, pause and per-session checks go.
        # With auth_mode "free" every session starts authorized.
        self._connected = False
        self.authorized = self._free
        self.paused = False
        self._st_session_passed = False
        self._cable_ma = 0                  # the next plug brings its own rating
        self._wake = _WAKE_ARMED
        self._offer_rate_ok = True

    def _check_pilot(self, now, level):
        fs = self.faults
        if level == PILOT_HOLD:
            return
        if level == PILOT_E:
            fs.raise_(CP_SHORT, now)
        else:
            fs.clear(CP_SHORT, now)
        # -12 V read back while we drive +12 V / PWM: nothing on the EV side does that.
        if level == _LEVEL_PILOT_FAULT or level == PILOT_F:
            fs.raise_(PILOT_FAULT, now)
        else:
            fs.clear(PILOT_FAULT, now)
        if level == _LEVEL_DIODE_FAULT:
            fs.raise_(DIODE_FAULT, now)
        elif level == PILOT_A or 0 < self.duty_pm < PILOT_STEADY_HIGH:
            # The diode shows only under PWM (or is gone with the EV): a reading on steady
            # +12 V says nothing about it, so the cause stays present until one of these.
            fs.clear(DIODE_FAULT, now)       # latched until unplug by the fault table
        if level == PILOT_D and not self._vent:
            fs.raise_(VENTILATION_UNSUPPORTED, now)
        else:
            fs.clear(VENTILATION_UNSUPPORTED, now)

    def _check_rcd(self, now):
        if self._st_phase != _ST_IDLE:
            return                          # the self-test expects the trip line
        if self.rcd_tripped:
            self.faults.raise_(RCD_TRIPPED, now)
        else:
            self.faults.clear(RCD_TRIPPED, now)

    def _check_mirror(self, now):
        fs = self.faults
        if self.mirror_closed != self.contactor:
            if not self._mismatch:
                self._mismatch = True
                self._mismatch_since = now
            elapsed = ticks_diff(now, self._mismatch_since)
            if self.contactor:
                if elapsed >= self._close_timeout:
                    fs.raise_(CONTACTOR_NOT_CLOSING, now)
            elif elapsed >= self._welded_ms:
                fs.raise_(CONTACTOR_WELDED, now)
        else:
            self._mismatch = False
            fs.clear(CONTACTOR_NOT_CLOSING, now)
            if not self.mirror_closed:
                fs.clear(CONTACTOR_WELDED, now)   # cause gone; stays latched until cleared

    def _check_temperature(self, now):
        fs = self.faults
        t = self.temp_dc
        if t is None or t < _TEMP_MIN_DC or t > _TEMP_MAX_DC:
            # None is "no sensor on this board"; after a reading it is a sensor lost, which
            # must not reset a stop or a derating to full current.
            if t is not None or self._temp_required or self._temp_seen:
                fs.raise_(TEMP_SENSOR_FAILED, now)
            else:
                fs.clear(TEMP_SENSOR_FAILED, now)
                self._thermal = 0
        else:
            self._temp_seen = True
            fs.clear(TEMP_SENSOR_FAILED, now)
            # Step down one level only below that level's threshold minus the hysteresis
            # (derate - restore), then step up to whatever the temperature demands.
            hyst = self._t_derate - self._t_restore
            lvl = self._thermal
            if lvl == 3 and t < self._t_stop - hyst:
                lvl = 2
            if lvl == 2 and t < self._t_quarter - hyst:
                lvl = 1
            if lvl == 1 and t < self._t_restore:
                lvl = 0
            if t >= self._t_stop:
                lvl = 3
            elif t >= self._t_quarter and lvl < 2:
                lvl = 2
            elif t >= self._t_derate and lvl < 1:
                lvl = 1
            self._thermal = lvl
        if self._thermal == 3:
            fs.raise_(OVERTEMP, now)
        else:
            fs.clear(OVERTEMP, now)

    def _check_pp(self, now, level, ev_seen):
        if not self._socket:
            self._cable_ma = CURRENT_MAX_MA
            self.faults.clear(PP_INVALID, now)
            return
        rating = pp_rating_ma(self.pp_ohms)
        if rating > 0:
            self._cable_ma = rating
            self._pp_bad = False
            self.faults.clear(PP_INVALID, now)
            return
        # A bad reading keeps the last rating: one reading (the plug leaving first) must not
        # flip the offer; PP_INVALID after the debounce is what stops charging.
        if not ev_seen:
            if level == PILOT_HOLD:
                return                      # EV unknown (just back from F): keep the verdict
            self._pp_bad = False
            self.faults.clear(PP_INVALID, now)
            return
        if not self._pp_bad:
            self._pp_bad = True
            self._pp_bad_since = now
        if ticks_diff(now, self._pp_bad_since) >= _PP_DEBOUNCE_MS:
            self.faults.raise_(PP_INVALID, now)

    def _check_overcurrent(self, now):
        fs = self.faults
        if self._oc_ref_active and ticks_diff(now, self._oc_ref_since) >= _EV_RESPONSE_MS:
            self._oc_ref_active = False
        if not (self.contactor and self.phase_ma_valid):
            self._oc_over = False
            fs.clear(OVERCURRENT, now)
            return
        allowed = self.offered_ma
        if self._oc_ref_active and self._oc_ref_ma > allowed:
            allowed = self._oc_ref_ma
        allowed += self._oc_margin
        p = self.phase_ma
        if p[0] > allowed or p[1] > allowed or p[2] > allowed:
            if not self._oc_over:
                self._oc_over = True
                self._oc_since = now
            elif ticks_diff(now, self._oc_since) >= self._oc_grace:
                fs.raise_(OVERCURRENT, now)
        else:
            self._oc_over = False
            fs.clear(OVERCURRENT, now)

    def _want_lock(self):
        if not self._lock_enabled:
            return False
        # Never release a plug that may be live.
        if self.contactor or self.mirror_closed or self.faults.is_active(CONTACTOR_WELDED):
            return True
        return (self._connected and self.authorized and self.available
                and not self.faults.blocking())

    def _check_lock(self, now):
        want = self._want_lock()
        if want != self.lock:
            self.lock = want
            self._lock_since = now
            self.events.push(now, EV_LOCK, 1 if want else 0, 0)
        if want and not self.lock_ok:
            if ticks_diff(now, self._lock_since) >= self._lock_timeout:
                self.faults.raise_(LOCK_FAILED, now)
        else:
            if want:
                self._lock_since = now       # a later loss of feedback gets a full timeout
            self.faults.clear(LOCK_FAILED, now)

    def _lock_ready(self):
        return not self._lock_enabled or (self.lock and self.lock_ok)

    def _selftest_ok(self):
        return not self._rcd_selftest or (self._st_session_passed
                                          and self._st_phase == _ST_IDLE)

    def _selftest(self, now):
        fs = self.faults
        phase = self._st_phase
        if not self._st_period_started:
            self._st_period_started = True
            self._st_last_pass = now
        if not self._st_due and ticks_diff(now, self._st_last_pass) >= self._st_period:
            self._st_due = True
        if phase == _ST_IDLE:
            if not self._rcd_selftest:
                self._selftest_requested = False
                return
            wanted = (self._selftest_requested or self._st_due
                      or (self._connected and not self._st_session_passed))
            if (wanted and not self.contactor and not self.mirror_closed and not self._f_hold
                    and not self.rcd_tripped and not fs.is_active(RCD_SELFTEST_FAILED)
                    and not fs.is_active(RCD_TRIPPED)):
                self._st_phase = _ST_DRIVE
                self._st_since = now
                self.rcd_test = True
            return
        elapsed = ticks_diff(now, self._st_since)
        if phase == _ST_DRIVE:
            if self.rcd_tripped:
                self._st_phase = _ST_RELEASE
                self._st_since = now
                self.rcd_test = False
                self._st_took = elapsed
            elif elapsed >= self._st_timeout:
                self._selftest_done(now, False, elapsed)
        elif not self.rcd_tripped:
            self._selftest_done(now, True, self._st_took)
        elif elapsed >= self._st_timeout:
            self._selftest_done(now, False, elapsed)

    def _selftest_done(self, now, passed, took):
        self._st_phase = _ST_IDLE
        self.rcd_test = False
        self._selftest_requested = False
        self._st_due = False
        self._st_last_pass = now
        if passed:
            # Only a test made with the EV connected counts for its session.
            self._st_session_passed = self._connected
        else:
            self._st_session_passed = False
            # The cause is not "present" afterwards: a clear request re-arms the test.
            self.faults.raise_(RCD_SELFTEST_FAILED, now, False)
        self.events.push(now, EV_SELFTEST, 1 if passed else 0, took)

    def _wake_up(self, now, level, pwm, duty):
        # An EV sitting in B2 without requesting is woken once per plug-in by a short
        # steady level (x1 or F), which many EVs take as "restart your charge logic".
        if self._wake == _WAKE_ACTIVE:
            # On -12 V the EV is invisible (level HOLD): only the time ends an F wake-up.
            if (ticks_diff(now, self._wake_since) >= self._wake_hold
                    or not self.offered_ma or not self.available
                    or (not self._wake_f and level != PILOT_B and level != PILOT_HOLD)):
                self._wake = _WAKE_DONE
                self.events.push(now, EV_WAKEUP, 0, 0)
                return duty
            return PILOT_STEADY_LOW if self._wake_f else PILOT_STEADY_HIGH
        if pwm and level == PILOT_B:
            if not self._b2:
                self._b2 = True
                self._b2_since = now
            elif (self._wake == _WAKE_ARMED and self._wake_enabled
                    and ticks_diff(now, self._b2_since) >= self._wake_after):
                self._wake = _WAKE_ACTIVE
                self._wake_since = now
                self.events.push(now, EV_WAKEUP, 1, 0)
                return PILOT_STEADY_LOW if self._wake_f else PILOT_STEADY_HIGH
        else:
            self._b2 = False
        return duty

    def _compute_limit(self):
        lim = self._max_ma
        if self._ceiling_ma < lim:
            lim = self._ceiling_ma          # the hardware's rating binds, not the config
        why = LIMIT_CONFIG
        if self._socket and self._connected and self._cable_ma < lim:
            lim = self._cable_ma
            why = LIMIT_CABLE
        if self._backend_ma >= 0 and self._backend_ma < lim:
            lim = self._backend_ma
            why = LIMIT_BACKEND
        if self._comms_ma >= 0 and self._comms_ma < lim:
            lim = self._comms_ma
            why = LIMIT_COMMS
        if self._thermal and lim >= CURRENT_MIN_MA:
            if self._thermal == 3:
                t = 0
            else:
                t = lim >> self._thermal     # half, quarter
                if t < CURRENT_MIN_MA:
                    t = CURRENT_MIN_MA
            if t < lim:
                lim = t
                why = LIMIT_THERMAL
        if self.paused:
            lim = 0
            why = LIMIT_PAUSED
        self._limit_ma = lim
        self._limit_why = why
        return lim

    def _update_offer(self, now, target, why):
        if not self._offer_rate_ok and ticks_diff(now, self._offer_changed_at) >= self._rate_ms:
            self._offer_rate_ok = True
        cur = self.offered_ma
        if target == cur:
            return
        if target > cur and not self._offer_rate_ok:
            return
        if target < cur:
            # The EV gets _EV_RESPONSE_MS to follow a lower offer before over-current counts.
            self._oc_ref_ma = cur
            self._oc_ref_since = now
            self._oc_ref_active = True
        self.offered_ma = target
        self._offer_changed_at = now
        # Without an EV there is nothing to protect from flapping: the next session's
        # first offer goes out at once.
        self._offer_rate_ok = not self._connected
        self.events.push(now, EV_OFFER, target, why)

    def _state_for(self, level, pwm):
        if level == PILOT_A:
            return STATE_A
        if level == PILOT_B:
            return STATE_B2 if pwm else STATE_B1
        if level == PILOT_C:
            return STATE_C2 if pwm else STATE_C1
        if level == PILOT_D:
            return STATE_D2 if pwm else STATE_D1
        if level == PILOT_E:
            return STATE_E
        if level == PILOT_HOLD:
            return self.state               # nothing confirmed yet: keep what was shown
        return STATE_F                      # pilot or diode fault: not available

    def _update_led(self, blocking, ev_seen):
        if blocking or self._f_hold:
            self.led = LED_FAULT
        elif not self.available:
            self.led = LED_UNAVAILABLE
        elif self.contactor:
            self.led = LED_CHARGING
        elif ev_seen:
            self.led = LED_PAUSED if (self.authorized and not self.offered_ma) \
                else LED_CONNECTED
        else:
            self.led = LED_IDLE

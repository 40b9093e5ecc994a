"""The energy meter as the charge point sees it: integer readings, stale and plausibility.

`poll(now_ms)` is called every control-loop iteration and never waits on the meter: it
advances the Modbus master's state machine and, every `meter_poll_ms`, starts one read
cycle through the map's poll plan. A cycle commits all values at once, so voltage, current,
power and energy always come from the same cycle.

Readings are integers: `voltage_dv` (0.1 V) and `current_ma` per phase (lists of 3; L2/L3
stay 0 on single-phase meters), `power_w`, `import_wh`, `export_wh` (None until read, and
always None where the meter has no export register). `current_ma` feeds the charger's
over-current check; `import_wh` gives the session energy.

Stale: after `meter_stale_after` consecutive failed cycles `stale` is set; the next good
cycle clears it. The last values stay readable; whoever bills or limits on them must look
at `stale` (the integrator raises / clears the METER_STALE fault from it).

Plausibility (billing must not use a reading that cannot be true): energy never goes
backwards; |power| <= meter_max_power_w and <= what the phase voltages and currents allow
(V x I summed over the phases, this cycle's or the last one's, +10 % and 50 W; a first such
reading only has its power held back, since the registers may have updated between our
requests: the second in a row is implausible); energy
rises no faster than meter_max_power_w allows over the time since the last accepted reading
(plus one step of the register's resolution). A failing reading sets `implausible`,
`implausible_reason` and counts `implausible_count`; its power and energy are not taken
(the last plausible ones stay), while its voltages and currents are (the over-current check
errs on the side of caution). The next plausible reading clears the flag.

Discontinuities (a meter reset or exchanged without telling the station): where the map has
a serial-number register it is read with the first cycle after request_serial() /
request_reading(serial=True) and with every cycle whose energy is implausible, so a swap is
known at once: that reading starts a new energy segment. Without a serial number (or with
the same one: a reset), two implausible energy readings in a row that agree with each other
are a new baseline: the committed reading starts a new segment whose base is the first of
the two, so only the interval before the first is lost. A new segment is reported once, in
`base_wh` of the reading that starts it (None otherwise), counted in `rebased` (and `swaps`
when the serial number changed); `rebase()` starts one with the next reading.

`sampled_ms` is when the committed reading's cycle started (its registers were read after
that): whoever bills compares it with the contactor's and the session's times.

`poll()` returns a bitmask of what changed (STALE_CHANGED, IMPLAUSIBLE_CHANGED,
NEW_READING, FAILED for every failed cycle); an optional `on_change(kind, active, reason)`
callback hears the stale / implausible transitions ("stale" or "implausible").
"""
from firmware.compat import const, ticks_add, ticks_diff
from firmware import meters
from firmware.modbus import ModbusMaster, DONE, ERROR, ERROR_NAMES

STALE_CHANGED = const(1)
IMPLAUSIBLE_CHANGED = const(2)
NEW_READING = const(4)
FAILED = const(8)

# Reasons a reading is implausible.
NOT_A_NUMBER = "not_a_number"
POWER_RANGE = "power_range"
POWER_VI = "power_vi"           # more power than the phases' voltage x current allow
IMPORT_BACKWARDS = "import_backwards"
EXPORT_BACKWARDS = "export_backwards"
IMPORT_JUMP = "import_jump"
EXPORT_JUMP = "export_jump"

_MS_PER_HOUR = const(3600000)
# Implausible energy readings that agree with each other this many times in a row are a
# new meter (or a reset one), not a fault; the first of them is the new base.
_REBASE_AGREE = const(2)
_DV_MA_PER_W = const(10000)     # 0.1 V x 1 mA = 0.1 mW
_VI_SLACK_W = const(50)         # power sampled a few ms apart from voltage and current
_NO_SERIAL = const(-1)          # the serial request of this cycle failed


class MeterService:
    def __init__(self, cfg, stream, de=None, on_change=None):
        if stream is None:
            raise ValueError("meter service needs a stream (the board has no meter UART)")
        self.map = meters.load_map(cfg["meter_map"], cfg["meter_custom_map"])
        if de is None:
            de = getattr(stream, "set_de", None)
        self.master = ModbusMaster(stream, baud=cfg["meter_baud"], parity=cfg["meter_parity"],
                                   timeout_ms=cfg["meter_timeout_ms"],
                                   retries=cfg["meter_retries"], de=de)
        self.on_change = on_change
        # Public readings (the lists are updated in place: safe to keep a reference).
        self.voltage_dv = [0, 0, 0]
        self.current_ma = [0, 0, 0]
        self._settings(cfg)
        self.stale = False
        self.implausible = False
        self.implausible_reason = ""
        self.implausible_count = 0
        self.last_error = ""        # why the last failed cycle failed
        self.consecutive_failures = 0
        self.cycles = 0
        self.cycles_failed = 0
        self._scratch = [0] * meters.N_QUANTITIES
        self._bad = 0
        self._step = -1             # plan step in flight, -1 when idle
        self._next_ms = None
        self._energy_ms = 0         # when import/export were last accepted
        self._rebase = True         # no energy baseline yet
        self._cand = [0, 0, 0, 0]   # agreeing implausible readings: count, import, export,
                                    # import of the first
        self._cand_ms = 0
        self._cycle_ms = 0
        self._want_serial = False
        self._serial_read = _NO_SERIAL
        self._new_segment = False
        self._vi_now = 0            # the phases' voltage x current, W: this cycle ...
        self._vi_last = 0           # ... and the last one
        self._vi_held = False       # the last cycle's power was beyond them
        self.rebased = 0            # energy segments started after a discontinuity
        self.swaps = 0              # ... of which the serial number changed
        self.serial = None          # the meter's serial number, None until read
        self.serial_failures = 0
        self.base_wh = None         # import where the segment of this reading starts
        self.sampled_ms = None      # when this reading's cycle started

    def _settings(self, cfg):
        self._meter_key = (cfg["meter_map"], cfg["meter_custom_map"], cfg["meter_addr"])
        self.addr = cfg["meter_addr"]
        self.poll_ms = cfg["meter_poll_ms"]
        self.stale_after = cfg["meter_stale_after"]
        self.max_power_w = cfg["meter_max_power_w"]
        self.master.timeout_ms = cfg["meter_timeout_ms"]
        self.master.retries_allowed = cfg["meter_retries"]
        self.phases = self.map.phases
        self.has_export = self.map.has_export
        for k in range(3):
            self.voltage_dv[k] = 0
            self.current_ma[k] = 0
        self.power_w = 0
        self.import_wh = None
        self._ref_import = None     # the import the next reading is judged against
        self.export_wh = None
        self.last_ok_ms = None
        self.readings = 0           # increments with every committed reading

    def configure(self, cfg):
        """Apply changed meter_* settings at run time (baud and parity need a reboot).
        The map is validated first: a bad one raises MeterMapError and changes nothing.
        Another meter (map or address) starts from no reading and a new energy baseline."""
        key = (cfg["meter_map"], cfg["meter_custom_map"], cfg["meter_addr"])
        if key == self._meter_key:
            self.poll_ms = cfg["meter_poll_ms"]
            self.stale_after = cfg["meter_stale_after"]
            self.max_power_w = cfg["meter_max_power_w"]
            self.master.timeout_ms = cfg["meter_timeout_ms"]
            self.master.retries_allowed = cfg["meter_retries"]
            return
        new_map = meters.load_map(cfg["meter_map"], cfg["meter_custom_map"])
        self.master.cancel()
        self._step = -1
        self._next_ms = None
        self.map = new_map
        self._settings(cfg)
        self._scratch = [0] * meters.N_QUANTITIES
        self._rebase = True
        self._new_segment = True
        self._cand[0] = 0
        self.serial = None

    def poll(self, now_ms):
        """Advance the meter bus; never blocks on the meter. Returns a bitmask of changes."""
        plan = self.map.plan
        master = self.master
        if self._step < 0:
            if self._next_ms is not None and ticks_diff(now_ms, self._next_ms) < 0:
                return 0
            # Fixed rate, but a late cycle does not build a backlog.
            self._next_ms = ticks_add(now_ms, self.poll_ms)
            self._step = 0
            self._bad = 0
            self._cycle_ms = now_ms
            self.cycles += 1
            start = plan[0]
            master.start_read(self.addr, self.map.fc, start[0], start[1])
        status = master.poll(now_ms)
        n = len(plan)
        while status == DONE:
            if self._step == n:
                self._serial_read = self.map.decode_serial(master.rx, master.data_start)
                self._step = -1
                return self._complete(now_ms)
            self._bad += self.map.decode(self._step, master.rx, master.data_start,
                                         self._scratch)
            self._step += 1
            if self._step == n:
                if not self._serial_wanted(now_ms):
                    self._step = -1
                    return self._complete(now_ms)
                fc, addr, _code, width = self.map.serial
                master.start_read(self.addr, fc, addr, width)
            else:
                start = plan[self._step]
                master.start_read(self.addr, self.map.fc, start[0], start[1])
            status = master.poll(now_ms)
        if status == ERROR:
            if self._step == n:
                # Only the serial number did not come: the values stand.
                self.serial_failures += 1
                self._step = -1
                return self._complete(now_ms)
            self._step = -1
            return self._failed()
        return 0

    def _serial_wanted(self, now_ms):
        # After the last value request: read the serial number too when asked, or when the
        # energy just jumped (a swap is then known at once, not after a second reading).
        self._serial_read = _NO_SERIAL
        if self.map.serial is None:
            return False
        if self._want_serial:
            return True
        r = self._check(now_ms, True)
        return r == IMPORT_BACKWARDS or r == IMPORT_JUMP or r == EXPORT_BACKWARDS \
            or r == EXPORT_JUMP

    def request_reading(self, serial=False):
        """Start a fresh cycle as soon as the bus is free (the final register of a session,
        read after the contactor opened), with the serial number when `serial`. Returns its
        number for `cycle_finished()`."""
        self._next_ms = None
        if serial:
            self._want_serial = True
        return self.cycles + 1

    def request_serial(self):
        """Read the serial number with the next cycle (a session starts)."""
        self._want_serial = True

    def cycle_finished(self, n):
        """True once cycle `n` has ended, with a reading or a failure."""
        return self.cycles > n or (self.cycles == n and self._step < 0)

    def expect(self, import_wh, now_ms, allow_ms, serial=None):
        """Judge the first reading against `import_wh` (the register the billing ledger
        last saw, from flash) as if it had been read `allow_ms` ago, instead of taking it
        blindly: a garbage first reading after a boot is then rejected, and a meter
        exchanged while the station was off starts a new segment (at once when its serial
        number, read with the first cycle, is not `serial`; else after two agreeing
        readings)."""
        if self.import_wh is None and import_wh is not None:
            self._ref_import = import_wh
            self._energy_ms = ticks_add(now_ms, -allow_ms)
            self._rebase = False
            if serial is not None and self.map.serial is not None:
                self.serial = serial
                self._want_serial = True

    def rebase(self):
        """Accept the next reading's energy as the new baseline (after a meter exchange)."""
        self._rebase = True
        self._new_segment = True

    # -- cycle outcomes --------------------------------------------------------------
    def _failed(self):
        master = self.master
        self.cycles_failed += 1
        self.consecutive_failures += 1
        self.last_error = ERROR_NAMES[master.error]
        if master.exception_code:
            self.last_error = "exception %d" % master.exception_code
        if not self.stale and self.consecutive_failures >= self.stale_after:
            self.stale = True
            self._notify("stale", True, self.last_error)
            return STALE_CHANGED | FAILED
        return FAILED

    def _complete(self, now_ms):
        changes = NEW_READING
        self.consecutive_failures = 0
        self.last_ok_ms = now_ms
        if self.stale:
            self.stale = False
            changes |= STALE_CHANGED
            self._notify("stale", False, "")
        s = self._scratch
        for k in range(3):
            self.voltage_dv[k] = s[meters.V_L1 + k]
            self.current_ma[k] = s[meters.I_L1 + k]
        reason = self._check(now_ms)
        take_power = True
        if reason == POWER_VI and not self._vi_held:
            # Once: a meter updates its registers between our requests, so at a step
            # (a contactor closing) the power may be new and the currents old. Its power
            # is not taken; the next cycle tells such skew from a meter that means it.
            self._vi_held = True
            take_power = False
            reason = self._check(now_ms, True)
        elif reason != NOT_A_NUMBER and reason != POWER_RANGE and reason != POWER_VI:
            self._vi_held = False
        self._vi_last = self._vi_now
        base = None
        serial = self._serial_read
        if serial != _NO_SERIAL:
            self._want_serial = False
            if self.serial is not None and serial != self.serial:
                # Another meter: whatever its registers say, they start a new segment.
                self.swaps += 1
                self._rebase = True
                self._new_segment = True
                if reason != NOT_A_NUMBER and reason != POWER_RANGE and reason != POWER_VI:
                    reason = ""
            self.serial = serial
        if reason and reason != NOT_A_NUMBER and reason != POWER_RANGE \
                and reason != POWER_VI and self._replaced(now_ms):
            # The registers jumped and then ran on consistently: a meter exchanged (or
            # reset) without telling the station. The segment starts at the first of the
            # agreeing readings, so only the interval before it is lost.
            reason = ""
            base = self._cand[3]
            self.rebased += 1
        elif not reason and self._new_segment:
            base = s[meters.IMPORT]
            if self.import_wh is not None:
                self.rebased += 1
        if reason:
            self.implausible_count += 1
            self.implausible_reason = reason
            if not self.implausible:
                self.implausible = True
                changes |= IMPLAUSIBLE_CHANGED
                self._notify("implausible", True, reason)
        else:
            if take_power:
                self.power_w = s[meters.POWER]
            self.import_wh = s[meters.IMPORT]
            self._ref_import = self.import_wh
            if self.has_export:
                self.export_wh = s[meters.EXPORT]
            self._energy_ms = now_ms
            self._rebase = False
            self._new_segment = False
            self._cand[0] = 0
            self.base_wh = base
            self.sampled_ms = self._cycle_ms
            if self.implausible:
                self.implausible = False
                self.implausible_reason = ""
                changes |= IMPLAUSIBLE_CHANGED
                self._notify("implausible", False, "")
        self.readings += 1
        return changes

    def _replaced(self, now_ms):
        s = self._scratch
        imp = s[meters.IMPORT]
        exp = s[meters.EXPORT] if self.has_export else 0
        c = self._cand
        elapsed = ticks_diff(now_ms, self._cand_ms)
        if c[0] and not self._energy_rule(meters.IMPORT, imp, c[1], elapsed, 1, 1) and (
                not self.has_export
                or not self._energy_rule(meters.EXPORT, exp, c[2], elapsed, 1, 1)):
            c[0] += 1
        else:
            c[0] = 1
            c[3] = imp
        c[1] = imp
        c[2] = exp
        self._cand_ms = now_ms
        if c[0] >= _REBASE_AGREE:
            c[0] = 0
            return True
        return False

    def _check(self, now_ms, skip_vi=False):
        s = self._scratch
        if self._bad:
            return NOT_A_NUMBER
        power = s[meters.POWER]
        if power > self.max_power_w or power < -self.max_power_w:
            return POWER_RANGE
        # Active power cannot exceed the apparent power of the phases (per phase first:
        # the products stay small ints on the ESP32), this cycle's or the last one's (a
        # step down: the currents new, the power old).
        vi = 0
        for k in range(self.phases):
            vi += s[meters.V_L1 + k] * s[meters.I_L1 + k] // _DV_MA_PER_W
        self._vi_now = vi
        if self._vi_last > vi:
            vi = self._vi_last
        if not skip_vi and (power > vi + vi // 10 + _VI_SLACK_W
                            or -power > vi + vi // 10 + _VI_SLACK_W):
            return POWER_VI
        if self._rebase:
            return ""
        elapsed = ticks_diff(now_ms, self._energy_ms)
        reason = self._energy_rule(meters.IMPORT, s[meters.IMPORT], self._ref_import, elapsed,
                                   IMPORT_BACKWARDS, IMPORT_JUMP)
        if reason or not self.has_export:
            return reason
        return self._energy_rule(meters.EXPORT, s[meters.EXPORT], self.export_wh, elapsed,
                                 EXPORT_BACKWARDS, EXPORT_JUMP)

    def _energy_rule(self, quantity, new, old, elapsed, backwards, jump):
        if old is None:
            return ""
        delta = new - old
        if delta < 0:
            return backwards
        if elapsed < 0:
            # The last accepted reading is more than 2**29 ms (6.2 days) old: no basis
            # for a rate check, only the direction rule applies.
            return ""
        allowed = self.max_power_w * elapsed // _MS_PER_HOUR + \
            self.map.energy_step_wh(quantity, new)
        if delta > allowed:
            return jump
        return ""

    def _notify(self, kind, active, reason):
        if self.on_change is not None:
            self.on_change(kind, active, reason)

    # -- reporting -------------------------------------------------------------------
    def reading(self):
        """The current reading as a dict (telemetry, tools; allocates)."""
        return {
            "voltage_dv": list(self.voltage_dv),
            "current_ma": list(self.current_ma),
            "power_w": self.power_w,
            "import_wh": self.import_wh,
            "export_wh": self.export_wh,
            "last_ok_ms": self.last_ok_ms,
            "stale": self.stale,
            "implausible": self.implausible,
            "implausible_reason": self.implausible_reason,
        }

    def stats(self):
        """Bus and service counters (allocates; for telemetry and the technician)."""
        out = self.master.stats()
        out["cycles"] = self.cycles
        out["cycles_failed"] = self.cycles_failed
        out["consecutive_failures"] = self.consecutive_failures
        out["implausible_count"] = self.implausible_count
        out["rebased"] = self.rebased
        out["swaps"] = self.swaps
        out["serial"] = self.serial
        out["serial_failures"] = self.serial_failures
        out["stale"] = self.stale
        out["last_error"] = self.last_error
        out["requests_per_poll"] = len(self.map.plan)
        out["bytes_per_poll"] = self.map.plan_bytes()
        return out

"""The station as the backend's command target (firmware.command_target.CommandTarget) and the
idTags read at the station: start, stop, authorize, limits, availability, configuration,
reboot, self-test, faults cleared by a person.

A mixin of firmware.station.Station (which holds the charger, sessions, store and the
rest); split from it so that the loop (firmware/station.py) stays readable. Every command
that must survive a reset is on flash before it returns its reply.
"""
from firmware import config_store
from firmware import faults as _faults
from firmware import states as _states
from firmware.auth import ASK_BACKEND, SOURCE_BACKEND, SOURCE_READER
from firmware.compat import const, ticks_add, ticks_diff
from firmware.config import Config, is_hardware, needs_reboot
from firmware.meters import load_map
from firmware.session import REASON_REBOOT, REASON_REMOTE_STOP, TIME_WALL
from firmware.storage import StorageError

AVAILABILITY_FILE = "inoperative"   # present: the operator took the station out of service

# The result codes these methods return with a reason: firmware/commands.py's error codes
# (docs/mqtt.md "Error codes"), the same strings. Not imported from there: firmware.commands
# is the MQTT command set (with messages, owner and the ledger, some 3 KB of heap), which an
# OCPP station (firmware/backend/station_ops.py) does without. tests/unit/test_station_cmds
# checks that every one equals its namesake in firmware.commands.
PROPERTY_CONSTRAINT = "PropertyConstraintViolation"
NO_EV = "NO_EV"
NO_SESSION = "NO_SESSION"
INOPERATIVE = "INOPERATIVE"
BUSY = "BUSY"
ALREADY = "ALREADY"
NOT_AUTHORIZED = "NOT_AUTHORIZED"
OCCUPIED = "OCCUPIED"
STORAGE = "STORAGE"
ON_SITE = "ON_SITE"
DISABLED = "DISABLED"
OTHER_SESSION = "OTHER_SESSION"
STOP_SKEW_S = const(5)       # firmware.commands.STOP_SKEW_S: a stop sent this long before
                             # the running session began was meant for an earlier one
CODES = ("PROPERTY_CONSTRAINT", "NO_EV", "NO_SESSION", "INOPERATIVE", "BUSY", "ALREADY",
         "NOT_AUTHORIZED", "OCCUPIED", "STORAGE", "ON_SITE", "DISABLED", "OTHER_SESSION",
         "STOP_SKEW_S")

_REBOOT_GRACE_MS = 1000     # the reply goes out before the restart
_REBOOT_FORCE_MS = 7000     # a charging EV gets pwm_off_open_ms to stop first


class Commands:
    def cmd_start(self, now_ms, id_tag=None, connector_id=None):
        # connector_id is checked by the dispatcher (this station has one connector).
        c = self.charger
        if not c.available:
            return INOPERATIVE, "station is inoperative"
        if self._reboot_at is not None:
            # The reboot paused charging so the EV stops first; resuming would have the
            # reset cut a charging EV under load.
            return BUSY, "reboot scheduled"
        if id_tag is not None:
            # OCPP RemoteStartTransaction: the backend names who pays; the EV may plug in
            # afterwards (the session starts at the authorization).
            try:
                ok, why = self.auth.request(id_tag, True, SOURCE_BACKEND)
            except ValueError as e:
                return PROPERTY_CONSTRAINT, str(e)
            err = self._authorize(id_tag, ok, why, now_ms)
            if err is None and c.paused:
                c.resume()
            return err
        if not _states.ev_connected(c.state):
            return NO_EV, "no EV connected"
        if c.paused:
            c.resume()
            return None
        if c.authorized:
            return ALREADY, "already started"
        # A remote start authorizes the connected EV (OCPP RemoteStartTransaction).
        c.authorize(True)
        self.sessions.set_id_tag(None, now_ms, SOURCE_BACKEND)
        return None

    def cmd_stop(self, now_ms, session_id=None, sent_at=None):
        c = self.charger
        active = self.sessions.active
        if active is None:
            return NO_SESSION, "no session"
        # A stop held back by an outage must not end the next driver's charge.
        if session_id is not None and session_id != active["id"]:
            return OTHER_SESSION, "session %s is not the running one (%s)" % (
                session_id, active["id"])
        if sent_at is not None and active["time_source"] == TIME_WALL \
                and sent_at + STOP_SKEW_S < active["start_time"]:
            return OTHER_SESSION, "sent %d s before the running session began" % (
                active["start_time"] - sent_at)
        if c.paused:
            return ALREADY, "already stopped"
        c.pause()
        self.sessions.stop_reason(REASON_REMOTE_STOP)
        return None

    def cmd_authorize(self, id_tag, now_ms):
        try:
            ok, why = self.auth.request(id_tag, True, SOURCE_BACKEND)
        except ValueError as e:
            return PROPERTY_CONSTRAINT, str(e)
        return self._authorize(id_tag, ok, why, now_ms)

    def present_id_tag(self, id_tag, now_ms):
        """An idTag read at the station (the board's RFID reader). Returns (accepted,
        reason) and tells the backend, which decides in backend mode while online."""
        online = self.backend is not None and self.backend.online
        try:
            ok, why = self.auth.request(id_tag, online, SOURCE_READER)
        except ValueError as e:
            ok, why = False, str(e)
        if why == ASK_BACKEND:
            self.backend.id_tag(id_tag, now_ms)
            return False, why
        err = self._authorize(id_tag, ok, why, now_ms) if ok else None
        if err:
            ok, why = False, err[1]
        self._queue_event({"type": "id_tag", "id_tag": id_tag, "accepted": ok, "reason": why})
        return ok, why

    def _authorize(self, id_tag, ok, why, now_ms):
        if not ok:
            return NOT_AUTHORIZED, "not authorized: %s" % why
        if not self.charger.available:
            return INOPERATIVE, "station is inoperative"
        active = self.sessions.active
        holder = active["id_tag"] if active is not None else None
        if holder is not None and self.charger.authorized:
            # The card that started the session pays for it: another card presented at a
            # station in use must not take the session (and its bill) over.
            if id_tag.upper() != holder.upper():
                return OCCUPIED, "the session belongs to another idTag"
            return None
        self.charger.authorize(True)
        self.sessions.set_id_tag(id_tag, now_ms, why)
        return None

    def cmd_set_limit(self, limit_ma, expires_s, now_ms):
        # Under 6 A is a pause (the charger's rule, IEC 61851-1: PWM off, x1), lifted by a
        # limit of 6 A or more or by the expiry.
        try:
            self.charger.set_backend_limit(limit_ma)
        except ValueError as e:
            return PROPERTY_CONSTRAINT, str(e)
        # The station counts the expiry down itself: a week does not fit a ticks deadline.
        self._limit_left_ms = None if expires_s is None else expires_s * 1000
        self._limit_counted = now_ms
        # On flash before the reply: the limit holds across resets (a flash failure is a
        # STORAGE_ERROR; the limit still applies, and the write is retried).
        self._save_safe(now_ms, True)
        return None

    def _limit_expiry(self, now):
        self._limit_left_ms -= ticks_diff(now, self._limit_counted)
        self._limit_counted = now
        if self._limit_left_ms <= 0:
            self._limit_left_ms = None
            self.charger.clear_backend_limit()
            self._queue_event({"type": "limit_expired"})

    def cmd_set_availability(self, operative, now_ms):
        # Stored first: a change that cannot be kept across a reset changes nothing.
        try:
            if operative:
                self.store.remove(AVAILABILITY_FILE)
            else:
                self.store.write_atomic(AVAILABILITY_FILE, b"1")
        except StorageError as e:
            return STORAGE, "availability not stored: %s" % e
        self.charger.set_available(operative)
        return None

    def cmd_get_config(self, keys):
        return self.cfg.public(keys)

    def cmd_set_config(self, changes):
        # Validate and store a copy first: a change that is refused or cannot be stored
        # changes nothing in the running station.
        trial = Config(self.cfg.changed_from_defaults())
        try:
            changed = trial.update(changes)
            meter_keys = [k for k in changed if k.startswith("meter_")]
            if meter_keys:
                load_map(trial["meter_map"], trial["meter_custom_map"])
        except ValueError as e:
            return PROPERTY_CONSTRAINT, str(e)
        guard = self._hardware_guard(trial, changes, changed)
        if guard:
            return guard
        try:
            config_store.save(self.store, trial)
        except StorageError as e:
            return STORAGE, "config not stored: %s" % e
        self.cfg.update(changes)
        self.charger.reload_config()
        if self._fallback and "comms_fallback_ma" in changed:
            # The charger holds the fallback it was given when the link was lost.
            self.charger.set_comms_fallback(self.cfg["comms_fallback_ma"])
        if self.meter is not None and meter_keys:
            self.meter.configure(self.cfg)
        later = [k for k in changed if needs_reboot(k)]
        for k in later:
            if k not in self.pending_reboot:
                self.pending_reboot.append(k)     # stored, applied after the next reboot
        if later:
            self._queue_event({"type": "config_pending_reboot", "keys": later})
        return None

    def _hardware_guard(self, trial, changes, changed):
        # What the hardware is (a socket or a cable, its phases) changes only with the
        # contactor open; no setting may exceed the hardware's rated current.
        if self.charger.contactor:
            for k in changed:
                if is_hardware(k):
                    return (BUSY,
                            "%s: not while the contactor is closed (stop the charge first)" % k)
        ceiling = self.ceiling_ma
        if ceiling is not None:
            for k in ("max_current_ma", "comms_fallback_ma"):
                if k in changes and trial[k] > ceiling:
                    return (PROPERTY_CONSTRAINT, "%s: %d above the hardware rating %d"
                            " (board file rated_current_ma)" % (k, trial[k], ceiling))
        return None

    def cmd_reboot(self, now_ms):
        if self._reboot_at is not None:
            return BUSY, "reboot already scheduled"
        self.charger.pause()
        self.sessions.stop_reason(REASON_REBOOT)
        self._reboot_at = ticks_add(now_ms, _REBOOT_GRACE_MS)
        self._reboot_deadline = ticks_add(now_ms, _REBOOT_FORCE_MS)
        return None

    def _reboot_due(self, now):
        if ticks_diff(now, self._reboot_at) < 0:
            return
        # A fault raised meanwhile shows F for its full fault_hold_ms first (Table A.5),
        # deadline or not; a charging EV gets until the deadline to stop.
        if not self.charger.ready_for_reset(ticks_diff(now, self._reboot_deadline) >= 0):
            return
        self._reboot_now = True

    def cmd_selftest(self, now_ms):
        if not self.cfg["rcd_selftest"]:
            # The charger drops the request: no test would run and no result would come.
            return DISABLED, "the residual-current self-test is disabled (rcd_selftest)"
        if self.charger.contactor:
            return BUSY, "charging: the self-test runs when the contactor is open"
        self.charger.request_selftest()
        return None

    def cmd_diagnostics(self):
        return self.diagnostics()

    def cmd_clear_fault(self, name, now_ms):
        try:
            code = _faults.by_name(name).code
        except ValueError as e:
            return PROPERTY_CONSTRAINT, str(e)
        err = self.clear_fault(code, True, now_ms)
        if err is None:
            return None
        if err.endswith("on site"):
            return ON_SITE, err
        if err.endswith("not active"):
            return ALREADY, err
        return BUSY, err                  # its cause is still present: later

    def clear_fault(self, code, remote, now_ms):
        """A person asks to clear fault `code` (`remote`: from the backend; else on site,
        diag.clear). None when cleared, else why not. A latch cleared is on flash before
        this returns, so a reset right after it (the loop stopped at the REPL, say) does
        not bring it back."""
        err = self.charger.clear_fault(code, remote)
        if err is None and self.safe.due(self.faults, self.charger):
            self._save_safe(now_ms, True)
        return err

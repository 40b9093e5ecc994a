"""The charger's events (and the meter's readings) turned into sessions, history and
backend events: the slow half of each loop iteration, after the safety tick.

Two holds pause the events, never the loop: a session cut by a reset waiting for the
meter at boot, and an unplug waiting for its final meter reading. A mixin of
firmware.station.Station; split from it so that the loop (firmware/station.py) stays
readable.
"""
from firmware import faults as _faults
from firmware import states as _states
from firmware.auth import ACCEPTED_FREE
from firmware.charger import (
    CONTACTOR_EV_STOPPED, CONTACTOR_FAULT, CONTACTOR_PWM_OFF, CONTACTOR_REASON_NAMES,
    CONTACTOR_UNPLUGGED, LIMIT_NAMES)
from firmware.compat import ticks_add, ticks_diff
from firmware.events import (
    EV_CONTACTOR, EV_FAULT_CLEARED, EV_FAULT_RAISED, EV_OFFER, EV_SELFTEST, EV_STATE,
    EV_WAKEUP, KIND_NAMES)
from firmware.meter_service import FAILED, NEW_READING, STALE_CHANGED
from firmware.session import (
    FAULT_PREFIX, LIMIT_PREFIX, REASON_EV_STOPPED, REASON_EV_UNPLUGGED, REASON_INOPERATIVE)
from firmware.station_report import coded_ma

_EVENTS_PER_STEP = 8        # charger events handled per iteration (the ring holds 64)
_DETAIL_CHARS = 600          # crash text carried in an INTERNAL_ERROR fault record
_FINAL_READING_WAIT_MS = 3000  # longest wait for a session's final meter reading


class EventHandling:
    def _drain_events(self, now):
        # Charger events (and idTags read at the station) reach the sessions in order. Two
        # holds pause them, never the rest of the loop: a cut session waiting for the
        # meter at boot, and an unplug waiting for its final meter reading.
        if self._recover_until is not None and not self._recovered(now):
            return
        if self._held is not None and not self._release_held(now):
            return
        if self._retry_ev is not None:
            # Taken from the ring already, so a failure (out of memory, say) would lose it:
            # one more try, in order; a second failure drops it (counted as a service error).
            ev = self._retry_ev
            self._retry_ev = None
            self._on_event(ev)
        for _ in range(_EVENTS_PER_STEP):
            if not self.flash.free():
                break               # an event wrote (a fault record): the rest next time
            ev = self.events.pop()
            if ev is None:
                break
            if (ev[1] == EV_STATE and ev[2] == _states.STATE_A and self.meter is not None
                    and not self.meter.stale and self.sessions.active is not None):
                # The session closes on a register read after the contactor opened, so
                # the energy of its last poll interval is billed too: hold the unplug (and
                # what follows it) until that reading is in.
                self._held = ev
                # The session ended when the EV left: what comes later (a stop, a reboot,
                # a power cut) does not rewrite its end.
                self._storage_op(self.sessions.unplugged, ev[0])
                self._held_cycle = self.meter.request_reading(True)
                self._held_until = ticks_add(now, _FINAL_READING_WAIT_MS)
                return
            self._handle(ev)
        if self.reader is not None:
            tag = self.reader.poll()
            if tag is not None:
                self.present_id_tag(tag, now)

    def _poll_meter(self, now):
        m = self.meter
        changed = m.poll(now)
        c = self.charger
        self._fault_flag(_faults.METER_STALE, m.stale, now)
        self._fault_flag(_faults.METER_IMPLAUSIBLE, m.implausible, now)
        # Over-current is judged only on currents the meter has just confirmed.
        c.phase_ma_valid = m.readings > 0 and not m.stale
        if self.sessions.serial_wanted:
            self.sessions.serial_wanted = False
            m.request_serial()
        if c.contactor:
            # The contactor closed (a new EV, free mode) while a session still waits for
            # its final reading, or a session cut by a reset for the register at boot:
            # the next reading holds the new energy. The waiting one ends estimated.
            if self._held is not None:
                self._release_now()
            if self.sessions.recovering:
                self._storage_op(self.sessions.recover, now)
        if changed & FAILED:
            self.sessions.on_meter(now, None, None, False)
        if changed & STALE_CHANGED and m.stale:
            self._storage_op(self.sessions.recover, now)
        if changed & NEW_READING:
            cur = m.current_ma
            phase = c.phase_ma
            phase[0] = cur[0]
            phase[1] = cur[1]
            phase[2] = cur[2]
            if m.implausible:
                self.sessions.on_rejected(now)
            else:
                self._storage_op(self.sessions.on_meter, now, m.import_wh, m.power_w, True,
                                 m.base_wh, m.sampled_ms, c.contactor, m.serial)

    def _release_held(self, now):
        # Until a register read after the contactor opened is in (a failed cycle asks
        # for another), the meter is stale, or the documented limit has passed.
        m = self.meter
        if self.sessions.awaiting_final and not m.stale \
                and ticks_diff(now, self._held_until) < 0:
            if m.cycle_finished(self._held_cycle):
                self._held_cycle = m.request_reading(True)
            return False
        self._release_now()
        return True

    def _release_now(self):
        ev = self._held
        self._held = None
        self._handle(ev)

    def _recovered(self, now):
        # The first valid meter reading recovers (SessionManager.on_meter); a meter that
        # does not answer leaves the checkpoint's values.
        if self.meter.stale or ticks_diff(now, self._recover_until) >= 0:
            self._storage_op(self.sessions.recover, now)
        if self.sessions.recovering:
            return False
        self._recover_until = None
        return True

    def _fault_flag(self, code, on, now):
        if on:
            if not self.faults.is_present(code):
                self.faults.raise_(code, now)
        elif self.faults.is_present(code):
            self.faults.clear(code, now)

    def _handle(self, ev):
        self._retry_ev = ev
        self._on_event(ev)
        self._retry_ev = None

    def _on_event(self, ev):
        t, kind, a, b = ev
        s = self.sessions
        self.history.add(kind, a, b, self.board.ticks_ms(), t)
        if kind == EV_STATE:
            s.on_state(t, a)
            if a == _states.STATE_A:
                pass
            elif not _states.ev_connected(b) and _states.ev_connected(a) and self.auth.autostart():
                s.set_id_tag(None, t, ACCEPTED_FREE)
            self._queue_event({"type": "state", "state": _states.NAMES[a],
                               "from": _states.NAMES[b], "t_ms": t})
        elif kind == EV_CONTACTOR:
            s.on_contactor(t, a, None if a else self._stop_cause(b))
            self._queue_event({"type": "contactor", "closed": bool(a),
                               "reason": CONTACTOR_REASON_NAMES[b], "t_ms": t})
        elif kind == EV_FAULT_RAISED or kind == EV_FAULT_CLEARED:
            f = _faults.by_code(a)
            raised = kind == EV_FAULT_RAISED
            if raised:
                if f.blocking:
                    self._stop_fault = f.name
                s.on_fault(t, f.name)
            else:
                s.on_fault_cleared(t, f.name)
            rec = {"fault": f.name, "raised": raised, "ocpp": f.ocpp, "text": f.text,
                   "t_ms": t, "boot": self.boot_id}
            if a == _faults.INTERNAL_ERROR:
                if raised:
                    # What went wrong, for whoever reads the record: the crash before this
                    # boot, or the background task that failed.
                    detail = self.last_service_error or self.boot_report["crash"] or ""
                    rec["detail"] = detail[-_DETAIL_CHARS:]
                elif b:
                    self.board.clear_crash()     # read and cleared by a person
            # UTC, or null: the clock was not set (t_ms and boot order it then).
            rec["time"] = self.board.wall_time()
            # Fault events must reach the backend: outbox (persisted, resent until acked).
            if self.link is not None:
                from firmware.outbox import KIND_FAULT    # MQTT's; with the link
                self._deliver(KIND_FAULT, rec)
        elif kind == EV_OFFER:
            self._queue_event({"type": "offer", "offered_ma": coded_ma(a),
                               "limit": LIMIT_NAMES[b], "t_ms": t})
        elif kind == EV_SELFTEST:
            self._queue_event({"type": "selftest", "passed": bool(a), "took_ms": b, "t_ms": t})
        elif kind == EV_WAKEUP:
            self._queue_event({"type": "wakeup", "active": bool(a), "t_ms": t})
        else:
            self._queue_event({"type": KIND_NAMES[kind], "a": a, "b": b, "t_ms": t})
        if self.backend is not None:
            self.backend.on_event(ev)

    def _stop_cause(self, why):
        # What a contactor opening means for the session's stop reason (docs/sessions.md).
        # A stop the backend or the station asked for is the session's own (stop_reason);
        # here: the EV, a fault, or the limits that turned the PWM off.
        c = self.charger
        if why == CONTACTOR_UNPLUGGED:
            return REASON_EV_UNPLUGGED
        if why == CONTACTOR_FAULT:
            return FAULT_PREFIX + (self._stop_fault or "unknown")
        if why == CONTACTOR_EV_STOPPED or why == CONTACTOR_PWM_OFF:
            if not c.available:
                return REASON_INOPERATIVE       # the operator took the station out of service
            if c.offered_ma == 0 and not c.paused:
                # The limits in force left nothing to offer (x1): backend, comms, thermal.
                return LIMIT_PREFIX + LIMIT_NAMES[c.limit_reason]
            if why == CONTACTOR_EV_STOPPED:
                return REASON_EV_STOPPED
        return CONTACTOR_REASON_NAMES[why]

"""What the backend sees of the station: retained status, telemetry, diagnostics, events,
and the records that go through the outbox (fault records, session start and end records,
one flash write per loop iteration: firmware/flashsched.py).

A mixin of firmware.station.Station; split from it so that the loop (firmware/station.py)
stays readable.
"""
from firmware import faults as _faults
from firmware import states as _states
from firmware.charger import LIMIT_NAMES
from firmware.compat import ticks_diff
from firmware.pilot import DUTY_PAUSED, CURRENT_MIN_MA, current_for_duty, duty_for_current
from firmware.storage import StorageError
from firmware.version import VERSION

_SESSIONS_PER_STEP = 1      # finished session records moved to the outbox per iteration
                            # (one flash write each: firmware/flashsched.py)
_TELEMETRY_CHECK_MS = 1000  # how often telemetry is considered (the link's on-change gap)
_UNDELIVERED_MAX = 16       # records the outbox could not store, retried from RAM


def applied_ma(duty_pm):
    """The current the applied duty tells the EV (IEC 61851-1 Table A.8), 0 when no PWM:
    what the station offers, not the target it was computed from (52000 mA has no duty of
    its own: the PWM codes 51 A)."""
    if 0 < duty_pm < DUTY_PAUSED:
        ma = current_for_duty(duty_pm)
        return ma if ma > 0 else 0
    return 0


def coded_ma(target_ma):
    """The current a duty for `target_ma` codes (0 below 6 A: no duty, a pause)."""
    if target_ma < CURRENT_MIN_MA:
        return 0
    return current_for_duty(duty_for_current(target_ma))


class Reporting:
    def storage_damage(self):
        """Damage found on flash and writes that failed, counted since boot: every one is
        also a STORAGE_ERROR and a storage_damage event (docs/faults.md)."""
        d = self.sessions.damage()
        ob = self.outbox
        if ob is not None:          # None: an OCPP station has no outbox (firmware/station.py)
            d["outbox_corrupt_entries"] = ob.corrupt_entries
            d["outbox_orphans_removed"] = ob.orphans_removed
            d["outbox_journal_damaged_bytes"] = getattr(ob.journal, "damaged_bytes_total", 0)
        d["allow_list_unreadable"] = 1 if self.auth.allow_list.error else 0
        return d

    def _damage_total(self):
        ob = self.outbox
        n = self.sessions.damage_total() + (1 if self.auth.allow_list.error else 0)
        if ob is None:
            return n
        return n + ob.corrupt_entries + ob.orphans_removed \
            + getattr(ob.journal, "damaged_bytes_total", 0)

    def _check_damage(self, now):
        # Compared as one int per iteration; the report is built only when it grows.
        total = self._damage_total()
        if total == self._damage_seen:
            return
        self._damage_seen = total
        self.faults.raise_(_faults.STORAGE_ERROR, now, present=False)
        ev = self.storage_damage()
        ev["type"] = "storage_damage"
        self._queue_event(ev)

    def _offer_sessions(self):
        # Finished session records move from the session journal to the outbox a few at a
        # time (a record is ~1.5 KB as a dict) and only while the outbox holds fewer session
        # records than it can: it never has to drop one session to take another. The rest
        # wait on flash in the session journal. Without a backend they wait there too, and
        # go out at the first boot with one.
        if self.link is None or not self.flash.free():
            return
        # The outbox's module, imported with the link (an OCPP station has neither).
        from firmware.outbox import KIND_SESSION, KIND_SESSION_START
        # (A start record does not count: its end record takes its place.)
        held = [r.id for r in self.outbox.records() if r.kind == KIND_SESSION]
        room = self.outbox.capacity - len(held)
        if room <= 0:
            return
        # Start records first (the backend learns of a session when it is authorized),
        # only into free places: an end record takes its start's place later.
        for rec in self.sessions.pop_started():
            if len(self.outbox) >= self.outbox.capacity or not self.flash.free():
                break
            self._deliver(KIND_SESSION_START, rec)
            self.sessions.start_delivered(rec["id"])
        if not self.flash.free():
            return
        for rec in self.sessions.pop_completed(min(room, _SESSIONS_PER_STEP)):
            if rec["id"] not in held:
                self._deliver(KIND_SESSION, rec)

    def _on_overflow(self, kind, record_id):
        from firmware.outbox import KIND_SESSION      # an outbox's callback: imported
        if kind == KIND_SESSION:
            # Only a smaller outbox_capacity after a reboot gets here: the record is still
            # pending in the session journal; offer the journal's records again.
            self.sessions.redeliver()

    def _deliver(self, kind, rec):
        # Without a backend nothing would ever acknowledge a record: session records then
        # stay pending in the session journal (and go out at the first boot with a
        # backend); fault events stay in the fault history and counters.
        if self.link is None:
            return
        from firmware.outbox import OutboxError
        try:
            self.outbox.put(kind, rec)
        except StorageError as e:
            # pop_completed() handed the record out once: dropping it here would hold it
            # back until the next boot. Kept in RAM and retried, one per iteration; past
            # _UNDELIVERED_MAX the oldest goes (a session record stays pending on flash).
            if len(self._undelivered) >= _UNDELIVERED_MAX:
                self._undelivered.pop(0)
            self._undelivered.append((kind, rec))
            self.faults.raise_(_faults.STORAGE_ERROR, self.board.ticks_ms(), present=False)
            self._queue_event({"type": "storage_error", "error": str(e)})
        except OutboxError as e:
            # A record the outbox refuses (over its size limit) cannot go out; a session
            # record stays pending in the session journal. Made visible, never silent.
            self.last_service_error = str(e)
            self.faults.raise_(_faults.INTERNAL_ERROR, self.board.ticks_ms(), present=False)
            self._queue_event({"type": "record_rejected", "kind": kind, "error": str(e)})

    def _queue_event(self, fields):
        if self.link is not None:
            self.link.publish_event(fields)

    def _on_ack(self, kind, record_id):
        from firmware.outbox import KIND_SESSION      # an outbox's callback: imported
        if kind == KIND_SESSION:
            self._storage_op(self.sessions.acknowledged, record_id)

    def _comms(self, now):
        lost = self.backend.comms_lost(now)
        if lost and not self._fallback:
            self._fallback = True
            self.charger.set_comms_fallback(self.cfg["comms_fallback_ma"])
        elif not lost and self._fallback:
            # The link's link_up event tells the backend how long the fallback applied.
            self._fallback = False
            self.charger.clear_comms_fallback()
        self._fault_flag(_faults.BACKEND_OFFLINE, lost, now)

    def _report(self, now):
        # Nothing here may build a message per loop iteration: compare first, build on change.
        c = self.charger
        last = self._last_status
        by_limit = self._paused_by_limit()
        if (c.state != last[0] or self.faults.active != last[1] or c.available != last[2]
                or c.offered_ma != last[3] or c.contactor != last[4] or by_limit != last[5]):
            last[0] = c.state
            last[1] = self.faults.active
            last[2] = c.available
            last[3] = c.offered_ma
            last[4] = c.contactor
            last[5] = by_limit
            self.link.publish_status(self.status())
        if ticks_diff(now, self._tele_checked) < _TELEMETRY_CHECK_MS:
            return
        self._tele_checked = now
        if self.sessions.active is not None:
            # In a session: the link's interval and power deadband decide.
            if self.link.publish_telemetry(self.telemetry(), now_ms=now):
                self._tele_sent = now
        elif self.link.online and (ticks_diff(now, self._tele_sent)
                                   >= self.cfg["telemetry_idle_interval_s"] * 1000):
            # Idle: the retained status carries every change; telemetry is a rare heartbeat
            # (on a paid cellular link an idle station costs little), never stored offline.
            self.link.publish_telemetry(self.telemetry(), force=True, now_ms=now)
            self._tele_sent = now

    def _paused_by_limit(self):
        # The limits in force (backend, comms fallback, thermal) leave less than the 6 A a
        # duty can offer: the charger offers nothing until they rise (IEC 61851-1, x1).
        # True once the charger has acted on it (offered_ma 0), so a status never pairs it
        # with the old offer.
        c = self.charger
        return (c.offered_ma == 0 and not c.paused
                and c.effective_limit_ma() < CURRENT_MIN_MA)

    def status(self):
        c = self.charger
        active = self.sessions.active
        return {
            "state": _states.NAMES[c.state],
            "available": c.available,
            "authorized": c.authorized,
            "paused": c.paused,
            "paused_by_limit": self._paused_by_limit(),
            "offered_ma": applied_ma(c.duty_pm),
            "limit": LIMIT_NAMES[c.limit_reason],
            "contactor": c.contactor,
            "faults": self.faults.active_names(),
            "session": active["id"] if active else None,
            "boot": self.boot_id,
            "version": VERSION,
        }

    def telemetry(self):
        c = self.charger
        out = {"state": _states.NAMES[c.state], "offered_ma": applied_ma(c.duty_pm),
               "contactor": c.contactor, "temp_dc": c.temp_dc}
        m = self.meter
        if m is not None:
            out["power_w"] = m.power_w
            out["import_wh"] = m.import_wh
            out["current_ma"] = list(m.current_ma)
            out["voltage_dv"] = list(m.voltage_dv)
            out["meter_stale"] = m.stale
        active = self.sessions.active
        if active:
            out["session"] = active["id"]
            out["session_wh"] = active.get("energy_wh")
        return out

    def diagnostics(self):
        c = self.charger
        out = {"status": self.status(), "boot": self.boot_report,
               "uptime_s": self.uptime_s,
               "iterations": self.iterations,
               "pilot": {"high_mv": c.cp_high_mv, "low_mv": c.cp_low_mv,
                         "duty_pm": c.duty_pm, "pp_ohms": c.pp_ohms},
               "limit_ma": c.effective_limit_ma(),
               "fault_history": [(t, _faults.by_code(code).name, raised)
                                 for t, code, raised in self.faults.history(8)],
               "counters": self.counters.values(),
               "outbox": self.outbox.stats() if self.outbox is not None else None,
               "storage_damage": self.storage_damage(),
               "config_error": self.config_error,
               "service_errors": self.service_errors,
               "collections": self.collections,
               "last_service_error": self.last_service_error}
        if self.meter is not None:
            out["meter"] = self.meter.stats()
        if self.link is not None:
            out["mqtt"] = self.link.stats()
        elif self.backend is not None:
            out["backend"] = self.backend.stats()
        if self.sessions.error:
            out["session_error"] = self.sessions.error
        return out

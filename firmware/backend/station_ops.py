"""What a backend may ask of the station (firmware/backend/api.py): each operation checks
what it can, acts through the station's own methods and returns a result code.

A backend reads the charger, the fault set and the meter through the properties below and
never writes them: every change goes through an operation here.
"""
from firmware.auth import ACCEPTED_BACKEND, SOURCE_BACKEND
from firmware.backend.api import (
    BUSY, INOPERATIVE, INVALID, NO_EV, OK, REJECTED, SCHEDULED, STORAGE, UNSUPPORTED)
from firmware.config import needs_reboot
from firmware.session import REASON_AUTH_TIMEOUT
from firmware.states import ev_connected


class StationOps:
    def __init__(self, station):
        self._st = station
        self.charger = station.charger
        self.faults = station.faults
        self.cfg = station.cfg

    # -- views ---------------------------------------------------------------------------
    @property
    def meter(self):
        return self._st.meter

    def ticks_ms(self):
        return self._st.board.ticks_ms()

    def wall_time(self):
        return self._st.board.wall_time()

    def session_id_tag(self):
        """The idTag the running session was authorized with (None: free charging)."""
        active = self._st.sessions.active
        return active["id_tag"] if active is not None else None

    def use_allow_list(self, allow_list):
        """The backend's list of locally authorized idTags replaces the station's own (OCPP's
        Local Authorization List); the station's offline rules (firmware/auth.py) use it."""
        self._st.auth.allow_list = allow_list

    def storage_failed(self, e):
        """A backend's own flash write failed: STORAGE_ERROR, as the station's do."""
        def fail():
            raise e
        self._st._storage_op(fail)

    # -- operations ----------------------------------------------------------------------
    def start(self, id_tag, now):
        """Authorize `id_tag` on the connector from the backend (OCPP RemoteStart): charging
        starts once the EV is (or gets) plugged in."""
        st = self._st
        c = self.charger
        if not c.available:
            return INOPERATIVE
        if st._reboot_at is not None:
            return BUSY
        if c.authorized and ev_connected(c.state):
            return BUSY
        try:
            st.sessions.set_id_tag(id_tag, now, SOURCE_BACKEND)
        except ValueError:
            return INVALID
        if c.paused:
            c.resume()
        c.authorize(True)
        return OK

    def authorize_result(self, id_tag, accepted, now):
        """The backend's answer for a card read at the station."""
        st = self._st
        if not accepted:
            st._queue_event({"type": "id_tag", "id_tag": id_tag, "accepted": False,
                             "reason": "backend"})
            return REJECTED
        if not self.charger.available:
            return INOPERATIVE
        if st._authorize(id_tag, True, ACCEPTED_BACKEND, now) is not None:
            return BUSY
        return OK

    def stop(self, reason, now):
        """End charging for the backend (the session record keeps `reason`); the EV stays
        plugged in and needs a new authorization to charge again."""
        c = self.charger
        if not c.authorized:
            return NO_EV
        c.authorize(False)
        c.resume()                 # a backend pause ends with the authorization
        try:
            self._st.sessions.stop_reason(reason)
        except ValueError:
            pass
        return OK

    def authorization_expired(self, now):
        """An authorization not followed by a plug-in in time (OCPP ConnectionTimeOut)."""
        c = self.charger
        if not c.authorized or ev_connected(c.state):
            return NO_EV
        c.authorize(False)
        self._st._storage_op(self._st.sessions.end, now, REASON_AUTH_TIMEOUT)
        return OK

    def set_limit(self, limit_ma, now):
        """The backend's current limit (None: none); under 6 A pauses (IEC 61851-1)."""
        if limit_ma is None:
            self.charger.clear_backend_limit()
            self._st._limit_left_ms = None
            self._st._save_safe(now, True)
            return OK
        return OK if self._st.cmd_set_limit(limit_ma, None, now) is None else INVALID

    def set_availability(self, operative, now):
        return OK if self._st.cmd_set_availability(operative, now) is None else STORAGE

    def reset(self, hard, now):
        """A clean restart after the reply has gone out (a charging EV is paused first)."""
        return SCHEDULED if self._st.cmd_reboot(now) is None else BUSY

    def unlock(self, now):
        """Release the connector lock (only with a lock, and never under load)."""
        c = self.charger
        if not self.cfg["lock_enabled"]:
            return UNSUPPORTED
        if c.authorized:
            self.stop("unlock", now)
        return BUSY if c.contactor else OK

    def set_config(self, changes):
        """Validate and persist station settings; SCHEDULED when one takes a reboot."""
        why = self._st.cmd_set_config(changes)
        if why is not None:
            return STORAGE if why.startswith("config not stored") else INVALID
        for key in changes:
            if needs_reboot(key):
                return SCHEDULED
        return OK

    def settle_sessions(self, n=2):
        """Billing records of finished sessions: with OCPP the transaction messages carry
        them, so they are let go of once on flash (else the session journal would keep
        them for a backend that never acknowledges)."""
        s = self._st.sessions
        for rec in s.pop_started():
            s.start_delivered(rec["id"])       # StartTransaction carries it
        for rec in s.pop_completed(n):
            s.acknowledged(rec["id"])          # a flash failure is retried next time

"""The OCPP 1.6 transaction of the station's one connector: started, sampled and stopped
from the charger's state into the transaction log (txlog.py), online or not.

One step per loop iteration (from the backend's): a transaction starts once the EV is
connected and authorized, samples the meter every MeterValueSampleInterval and at every
ClockAlignedDataInterval boundary, and stops when either ends (the reason: what ended it,
or what the central system asked for). The messages themselves go out from the log, in
order, through the backend (messages.py renders them).
"""
from firmware.backend.api import OK
from firmware.compat import const, ticks_add, ticks_diff
from firmware.states import ev_connected

_RECOVER_WAIT_MS = const(5000)    # at boot: the meter's register for a cut transaction

FREE_ID_TAG = "FREE"              # the idTag of a transaction in auth_mode "free"


class Transactions:
    def __init__(self, b, now):
        self.b = b
        self.stop_reason = None       # why the running transaction is being ended
        self.finishing = False        # one ended and its EV is still plugged in
        self.pending_available = None   # ChangeAvailability scheduled after the transaction
        self._meter_at = now
        self._auth_since = None
        self.aligned_at = None        # ticks of the next ClockAlignedDataInterval boundary
        self._aligned_t = 0           # ... and its time in seconds since 1970
        self._aligned_iv = 0
        self.aligned_due = None       # a clock-aligned sample outside a transaction, to send
        # A transaction running when the station went down was cut by a reset: stopped as
        # PowerLoss once the meter tells the energy (or it does not answer in time).
        self._orphan_until = ticks_add(now, _RECOVER_WAIT_MS) if b.log.running else None

    def _meter_wh(self):
        m = self.b.ops.meter
        if m is None or m.stale or not m.readings:
            return None
        return m.import_wh

    def step(self, now):
        b = self.b
        self._transaction(now)
        if self.aligned_at is not None or b.cfg["ocpp_aligned_interval_s"]:
            self._aligned(now)

    def _transaction(self, now):
        b = self.b
        c = b.ops.charger
        connected = ev_connected(c.state)
        log = b.log
        if self._orphan_until is not None:
            m = b.ops.meter
            if m is not None and not m.readings and ticks_diff(now, self._orphan_until) < 0:
                return
            self._orphan_until = None
            self.end(now, "PowerLoss")
        if log.running is None:
            if connected and c.authorized:
                wh = self._meter_wh()
                tag = b.ops.session_id_tag() or FREE_ID_TAG
                log.start(tag[:20], wh if wh is not None else 0, b.time(now))
                if b.smart is not None:
                    b.smart.changed()         # Relative schedules start now
                self._meter_at = now
                self.finishing = False
                self._auth_since = None
            elif not connected:
                self.finishing = False
                if c.authorized:
                    # Authorized without an EV: ConnectionTimeOut (OCPP 1.6 9.1.9).
                    if self._auth_since is None:
                        self._auth_since = now
                    elif ticks_diff(now, self._auth_since) >= \
                            b.cfg["ocpp_connection_timeout_s"] * 1000:
                        self._auth_since = None
                        b.ops.authorization_expired(now)
                        if b.smart is not None:
                            b.smart.transaction_ended()   # RemoteStart's TxProfile
                else:
                    self._auth_since = None
            return
        if not (connected and c.authorized):
            self.end(now, self.stop_reason or ("Local" if connected else "EVDisconnected"))
            self.finishing = connected
            return
        interval = b.cfg["ocpp_meter_interval_s"]
        if interval and ticks_diff(now, self._meter_at) >= interval * 1000:
            self._meter_at = now
            self._sample(now)

    def _sample(self, now):
        b = self.b
        m = b.ops.meter
        if m is None or m.stale or not m.readings:
            return
        b.log.meter(b.time(now), m.import_wh, m.power_w, list(m.current_ma),
                    list(m.voltage_dv))

    def _aligned(self, now):
        """ClockAlignedDataInterval (OCPP 1.6 9.1.2): a sample at every UTC boundary of the
        interval (midnight-aligned), context Sample.Clock; into the transaction log during a
        transaction, else sent as it is (not kept while offline). The next boundary is a
        ticks deadline taken from the clock once per interval, so the loop compares ticks."""
        b = self.b
        iv = b.cfg["ocpp_aligned_interval_s"]
        if not iv or iv != self._aligned_iv:
            self.aligned_at = None
            self._aligned_iv = iv
        if not iv or not b.cfg["ocpp_aligned_data"]:
            return
        if self.aligned_at is None:
            t = b.time(now)
            if not t:
                return              # no clock yet: nothing to align to
            left = iv - t % iv
            if t + left <= self._aligned_t:
                left += iv          # the clock read a second early: that boundary is done
            self._aligned_t = t + left
            self.aligned_at = ticks_add(now, left * 1000)
            return
        if ticks_diff(now, self.aligned_at) < 0:
            return
        self.aligned_at = None
        m = b.ops.meter
        if m is None or m.stale or not m.readings:
            return
        t = self._aligned_t
        if b.log.running is not None:
            b.log.meter(t, m.import_wh, m.power_w, list(m.current_ma), list(m.voltage_dv), "C")
        else:
            self.aligned_due = ("M", 0, t, m.import_wh, m.power_w, list(m.current_ma),
                                list(m.voltage_dv), "C")

    def end(self, now, reason):
        """The running transaction's StopTransaction into the log."""
        b = self.b
        b.log.stop(self._meter_wh(), b.time(now), reason)
        self.stop_reason = None
        if b.smart is not None:
            b.smart.transaction_ended()
        if self.pending_available is not None:
            b.ops.set_availability(self.pending_available, now)
            self.pending_available = None

    def stop(self, reason, session_reason, now):
        """End the running transaction for the central system (RemoteStop, Reset, Unlock)."""
        b = self.b
        if b.log.running is None:
            return False
        self.stop_reason = reason
        if b.ops.stop(session_reason, now) != OK:
            self.stop_reason = None
            return False
        self._transaction(now)
        return True

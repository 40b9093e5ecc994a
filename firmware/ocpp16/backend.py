"""The OCPP 1.6J backend: the charge point side of OCPP-J over one WebSocket (docs/ocpp.md).

One step per loop iteration, never waiting on the network (firmware/ws.py). Per step:
    connection (open, backoff) -> received messages (answers; the central system's CALLs,
    through the router) -> at most one CALL of ours: BootNotification until accepted, then
    a triggered message, Authorize, StatusNotification on change, the TxLog's oldest
    message, Heartbeat -> transactions (transactions.py: start, meter values, stop, into
    the TxLog, online or not) -> Smart Charging.

This module: the connection, registration, the order of our CALLs and what their answers
do. Parts: rpc.py (framing, the one CALL in flight), router.py (incoming CALLs to the
modules in ops/), transactions.py (the transaction from the charger's state),
messages.py (the payloads, rendered at send time), txlog.py (the transaction messages on
flash), status.py, keys.py, clock.py.
"""
import os

from firmware.backend.api import OK, Backend
from firmware.compat import const, presize, ticks_add, ticks_diff, unload
from firmware.ocpp16 import clock, messages, rpc, status as _status
from firmware.ocpp16.authcache import AuthCache
from firmware.ocpp16.localauth import LocalList
from firmware.ocpp16.router import dispatch
from firmware.ocpp16.transactions import Transactions
from firmware.ocpp16.txlog import TxLog
from firmware.storage import StorageError
from firmware.ws import CLOSED, OPEN, WsClient

_MAX_MESSAGE = const(4096)        # larger frames close the connection (heap safety)
_RX_PER_STEP = const(4)
_BACKOFF_MIN_MS = const(1000)
_BOOT_RETRY_S = const(60)         # BootNotification retry when the answer has no interval
_SETTLE_MS = const(1000)

# Registration (BootNotification.conf status)
_UNKNOWN = const(0)
_PENDING = const(1)
_REJECTED = const(2)
_ACCEPTED = const(3)
REGISTRATION_NAMES = ("unknown", "pending", "rejected", "accepted")

_TX_KINDS = ("S", "M", "T")       # the context of a transaction message (txlog.py "S", "M", "T")
_SMART_FILE = "ocpp_cp.json"      # firmware/ocpp16/smart.py PROFILES_FILE


# Every attribute of Ocpp16Backend, given first (compat.presize: its table is made once at
# its final size, not regrown a dozen times during the construction); tests/unit/test_presize.py
# checks the list is complete.
BACKEND_ATTRS = ("cfg", "ops", "store", "identity", "url", "ws", "caller", "log", "cache",
                 "local", "registration", "_boot_at", "_was_open", "_attempting", "_attempt_at",
                 "_backoff_ms", "_offline_since", "_last_call", "_sent", "_status_retry_at",
                 "_auth_tag", "_trigger", "_tx_attempts", "_tx_retry_at", "_settle_at",
                 "_cs_time", "smart", "_clock", "tx", "calls", "answers", "errors_in",
                 "errors_out", "malformed", "connects", "tx_dropped")


class Ocpp16Backend(Backend):
    def __init__(self, cfg, ops, store):
        presize(self, BACKEND_ATTRS)
        self.cfg = cfg
        self.ops = ops
        self.store = store
        now = ops.ticks_ms()
        self.identity = cfg["ocpp_id"] or cfg["station_id"]
        self.url = cfg["ocpp_url"].rstrip("/") + "/" + self.identity
        self.ws = WsClient(max_message=_MAX_MESSAGE, ping_s=cfg["ocpp_ping_s"],
                           connect_timeout_ms=cfg["ocpp_connection_timeout_s"] * 1000)
        self.caller = rpc.Caller()
        self.log = TxLog(store)
        # The central system's Local Authorization List is the station's allow-list now;
        # what the central system answered for each card is asked after the list (3.5.3).
        self.cache = AuthCache(store, cfg, self._seconds)
        self.local = LocalList(store, cfg, self._seconds, self.cache)
        ops.use_allow_list(self.local)
        self.registration = _UNKNOWN
        self._boot_at = now
        self._was_open = False
        self._attempting = False
        self._attempt_at = now
        self._backoff_ms = _BACKOFF_MIN_MS
        self._offline_since = now
        self._last_call = now
        self._sent = [None, None]     # (status, errorCode) last confirmed, connector 0 and 1
        self._status_retry_at = now
        self._auth_tag = None         # a card waiting for Authorize
        self._trigger = None          # (action, connectorId) asked by TriggerMessage
        self._tx_attempts = 0
        self._tx_retry_at = now
        self._settle_at = now
        self._cs_time = None          # (seconds since 1970, ticks) from the central system
        self.smart = None             # SmartCharging, once a charging profile is installed
        self._clock = clock.Watch()   # the clock being set: they plan again
        if store.exists(_SMART_FILE):
            self.smart_charging()
        self.tx = Transactions(self, now)
        self.calls = 0
        self.answers = 0
        self.errors_in = 0
        self.errors_out = 0
        self.malformed = 0
        self.connects = 0
        self.tx_dropped = 0

    # -- the Backend interface ---------------------------------------------------------------
    @property
    def online(self):
        return self.ws.state == OPEN and self.registration == _ACCEPTED

    def resolve(self):
        self.ws.resolve(self.url)

    def comms_lost(self, now):
        return (self.ws.state != OPEN
                and ticks_diff(now, self._offline_since) >= self.cfg["comms_loss_timeout_s"] * 1000)

    def owed(self):
        """True while the central system owes an answer (a CALL of ours in flight, the
        connection being opened, a ping): a simulator holds its clock to wall time then."""
        ws = self.ws
        return self.caller.busy() or ws.state not in (OPEN, CLOSED) or ws.pings > ws.pongs

    def id_tag(self, id_tag, now):
        if self.cfg["ocpp_local_pre_authorize"] and id_tag in self.local:
            # LocalPreAuthorize (OCPP 1.6 3.5.1): a card the local list or the cache accepts
            # starts at once; the central system hears of it in StartTransaction.
            self.ops.authorize_result(id_tag, True, now)
            return
        self._auth_tag = id_tag

    def close(self, reason):
        if self.log.running is not None:
            self.tx.end(self.ops.ticks_ms(), self.tx.stop_reason or "Reboot")
        self.ws.close_now(reason)

    def stats(self):
        out = self.ws.stats()
        out.update({"registration": REGISTRATION_NAMES[self.registration],
                    "calls": self.calls, "answers": self.answers, "errors_in": self.errors_in,
                    "errors_out": self.errors_out, "malformed": self.malformed,
                    "timeouts": self.caller.timeouts, "connects": self.connects,
                    "tx_pending": self.log.pending(), "tx_dropped": self.tx_dropped,
                    "auth_cache_entries": self.cache.count,
                    "auth_cache_damaged": self.cache.damaged,
                    "meter_dropped": self.log.dropped_meter})
        return out

    # -- the step ----------------------------------------------------------------------------
    def step(self, now):
        ws = self.ws
        if ws.state == CLOSED:
            if self._was_open:
                self._disconnected(now)
            elif self._attempting:
                self._retry_later(now)       # refused, timed out, handshake failed
            self._attempting = False
            if ticks_diff(now, self._attempt_at) >= 0:
                self._connect(now)
        else:
            ws.step(now)
            if ws.state == OPEN and not self._was_open:
                self._was_open = True
                self.connects += 1
                self._backoff_ms = _BACKOFF_MIN_MS
                self._sent[0] = self._sent[1] = None    # the central system hears it afresh
            n = 0
            while ws.inbox and n < _RX_PER_STEP:
                self._on_message(ws.inbox.pop(0), now)
                n += 1
            if self.caller.timed_out(now):
                self._failed(now, True)
            if ws.state == OPEN and not self.caller.busy():
                self._next_call(now)
        tx = self.tx
        try:
            tx.step(now)
            if (self.smart is not None or tx.aligned_at is not None) \
                    and self._clock.due(now) and self._clock.jumped(self.time(now), now):
                # Set by NTP or by the central system's time mid-schedule: the profiles'
                # limit and the next aligned boundary are reckoned from the new time.
                if self.smart is not None:
                    self.smart.changed()
                tx.aligned_at = None
            if self.smart is not None:
                self.smart.step(self, now)
                if self.smart.idle():
                    self._drop_smart()
            if ticks_diff(now, self._settle_at) >= 0:
                self._settle_at = ticks_add(now, _SETTLE_MS)
                self.ops.settle_sessions()
        except StorageError as e:
            self.ops.storage_failed(e)

    def _connect(self, now):
        pw = self.cfg["ocpp_password"]
        try:
            if self.url.startswith("wss://") and self.ws.tls_context is None:
                self.ws.tls_context = self._tls()
            self.ws.open(self.url, now, "ocpp1.6", self.identity, pw if pw else None)
            self._attempting = True
        except (OSError, ValueError, Exception) as e:  # noqa: BLE001 - any failure backs off
            self.ws.error = "connect: %s" % (e,)
            self._retry_later(now)

    def _tls(self):
        """The TLS context of wss:// (Security Profile 2): the server's certificate must
        chain to `ocpp_ca_file` and name the URL's host (the handshake checks both). No CA,
        no connection: the station never talks to an unverified central system."""
        import ssl
        from firmware.net import der     # wss:// only: ws:// keeps the module off the heap
        ca = self.cfg["ocpp_ca_file"]
        if not ca:
            raise ValueError("wss:// needs ocpp_ca_file")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = ssl.CERT_REQUIRED
        # MicroPython's mbedtls takes DER only: a PEM file is handed over decoded.
        ctx.load_verify_locations(cadata=der(ca))
        return ctx

    def _retry_later(self, now):
        # Half the backoff plus a random part of the other half: a fleet that lost its
        # central system together does not reconnect in step.
        half = self._backoff_ms // 2
        self._attempt_at = ticks_add(now, half + _random16() % (half + 1))
        self._backoff_ms = min(self._backoff_ms * 2, self.cfg["ocpp_backoff_max_s"] * 1000)

    def _disconnected(self, now):
        self._was_open = False
        self._offline_since = now
        if self.caller.busy():
            self.caller.cancel()     # not an attempt: it is sent again once back
        self._retry_later(now)

    # -- incoming ----------------------------------------------------------------------------
    def _send(self, text):
        if not self.ws.send_text(text):
            # Only a full send queue gets here: the link is stuck; start afresh.
            self.ws.close_now("send queue full")

    def _send_pieces(self, make):
        # A message in pieces (rpc.pieces): no block of the message's size is needed.
        if not self.ws.send_pieces(make):
            self.ws.close_now("send queue full")

    def _on_message(self, raw, now):
        try:
            kind, uid, a, b = rpc.decode(raw)
        except rpc.CallError as e:
            self.malformed += 1
            if e.uid is not None:
                self._send(rpc.encode_error(e.uid, e.code, e.description))
            return
        if kind == rpc.CALL:
            self._incoming(uid, a, b, now)
        elif self.caller.answered(uid):
            self.answers += 1
            if kind == rpc.CALLRESULT:
                self._answered(a if isinstance(a, dict) else {}, now)
            else:
                self.errors_in += 1
                self._failed(now, False)

    def _incoming(self, uid, action, payload, now):
        if self.registration == _REJECTED:
            # OCPP 1.6 4.2.1: a rejected charge point takes no requests until accepted.
            self._send(rpc.encode_error(uid, rpc.SECURITY, "not registered"))
            return
        try:
            reply = dispatch(self, action, payload, now)
        except rpc.CallError as e:
            self.errors_out += 1
            self._send(rpc.encode_error(uid, e.code, e.description))
            return
        except Exception as e:  # noqa: BLE001 - a handler bug must not take the link down
            self.errors_out += 1
            self._send(rpc.encode_error(uid, rpc.INTERNAL, "%s" % (e,)))
            return
        try:
            # In pieces (GetConfiguration's answer is a function of its own pieces, key by
            # key): never one string.
            self._send_pieces(lambda: rpc.result_pieces(uid, reply))
            return
        except MemoryError:
            # A large answer on a tight heap: the central system still hears that the call
            # failed instead of waiting for its timeout.
            reply = None
            self.errors_out += 1
            text = rpc.encode_error(uid, rpc.INTERNAL, "out of memory")
        self._send(text)

    # -- our CALLs ---------------------------------------------------------------------------
    def _call(self, action, payload, context, now):
        uid = self.caller.begin(action, context, now, self.cfg["ocpp_call_timeout_s"] * 1000)
        try:
            self._send_pieces(lambda: rpc.call_pieces(uid, action, payload))
        except MemoryError:
            # Not sent, so not in flight: the same message is tried again in a later step
            # (a MeterValues of 1 KB on a tight heap), not after the call timeout.
            self.caller.cancel()
            raise
        self.calls += 1
        self._last_call = now

    def _next_call(self, now):
        if self.registration != _ACCEPTED:
            if ticks_diff(now, self._boot_at) >= 0:
                self._call("BootNotification", messages.boot(self.cfg), None, now)
            return
        trig = self._trigger
        if trig is not None:
            self._trigger = None
            if self._triggered(trig, now):
                return
        if self._auth_tag is not None:
            self._call("Authorize", {"idTag": self._auth_tag}, self._auth_tag, now)
            self._auth_tag = None
            return
        if ticks_diff(now, self._status_retry_at) >= 0 and self._status_due(now):
            return
        e = self.log.head()
        if e is not None and ticks_diff(now, self._tx_retry_at) >= 0:
            msg = messages.render(self, e)
            if msg is None:
                self.tx_dropped += 1
                self.log.delivered()
                return
            self._call(msg[0], msg[1], e[0], now)
            return
        tx = self.tx
        if tx.aligned_due is not None:
            self._call("MeterValues", messages.meter_values(self, None, tx.aligned_due), None,
                       now)
            tx.aligned_due = None
            return
        hb = self.cfg["ocpp_heartbeat_s"]
        if hb and ticks_diff(now, self._last_call) >= hb * 1000:
            self._call("Heartbeat", {}, None, now)

    def _triggered(self, trig, now):
        action, conn = trig
        if action == "BootNotification":
            self._call(action, messages.boot(self.cfg), None, now)
        elif action == "Heartbeat":
            self._call(action, {}, None, now)
        elif action == "StatusNotification":
            self._sent[0 if conn == 0 else 1] = None
            return self._status_due(now)
        elif action == "MeterValues":
            self._call(action, messages.meter_values(self, None), None, now)
        else:
            return False
        return True

    def _status_due(self, now):
        ops = self.ops
        c = ops.charger
        for conn in (0, 1):
            if conn == 0:
                st = _status.station(c, ops.faults)
            else:
                st = _status.connector(c, ops.faults, self.log.running is not None,
                                       self.tx.finishing)
            code, name = _status.error(ops.faults)
            sent = self._sent[conn]
            if sent is not None and sent[0] == st and sent[1] == code:
                continue
            p = {"connectorId": conn, "status": _status.NAMES[st], "errorCode": code,
                 "timestamp": clock.iso(self.time(now))}
            if name is not None:
                p["vendorErrorCode"] = name
            self._call("StatusNotification", p, (conn, st, code), now)
            return True
        return False

    # -- answers -----------------------------------------------------------------------------
    def _answered(self, p, now):
        action = self.caller.action
        ctx = self.caller.context
        t = p.get("currentTime")
        if isinstance(t, str):
            try:
                self._cs_time = (clock.parse(t), now)
                if self.smart is not None:
                    self.smart.changed()
            except ValueError:
                pass
        if action == "BootNotification":
            interval = p.get("interval")
            if not isinstance(interval, int) or interval < 0:
                interval = 0
            st = p.get("status")
            if st == "Accepted":
                self.registration = _ACCEPTED
                if interval and interval != self.cfg["ocpp_heartbeat_s"]:
                    # The central system sets the heartbeat (OCPP 1.6 4.2.1).
                    self.ops.set_config({"ocpp_heartbeat_s": interval})
            else:
                self.registration = _PENDING if st == "Pending" else _REJECTED
                self._boot_at = ticks_add(now, (interval or _BOOT_RETRY_S) * 1000)
        elif action == "StatusNotification":
            self._sent[ctx[0]] = (ctx[1], ctx[2])
        elif action == "Authorize":
            info = p.get("idTagInfo")
            ok = isinstance(info, dict) and info.get("status") == "Accepted"
            self.cache.update(ctx, info)
            self.ops.authorize_result(ctx, ok, now)
        elif ctx in _TX_KINDS:
            tx_id = None
            info = p.get("idTagInfo")
            e = self.log.head()
            if info is not None and e is not None and ctx != "M":
                self.cache.update(e[2], info)        # Start- and StopTransaction.conf
            if ctx == "S":
                tx_id = p.get("transactionId")
                if not isinstance(tx_id, int):
                    self._failed(now, False)
                    return
                r = self.log.running
                if (isinstance(info, dict) and info.get("status") != "Accepted"
                        and r is not None and e is not None and r[0] == e[1]):
                    # StopTransactionOnInvalidId: the central system refuses this idTag.
                    self.tx.stop_reason = "DeAuthorized"
                    self.ops.stop("deauthorized", now)
            self._tx_attempts = 0
            self.log.delivered(tx_id)

    def _failed(self, now, timeout):
        """The CALL in flight got a CALLERROR (or no answer in time)."""
        action = self.caller.action
        ctx = self.caller.context
        if action == "BootNotification":
            self._boot_at = ticks_add(now, _BOOT_RETRY_S * 1000)
        elif action == "StatusNotification":
            self._status_retry_at = ticks_add(now, self.cfg["ocpp_tx_retry_s"] * 1000)
        elif action == "Authorize":
            self.ops.authorize_result(ctx, False, now)
        elif ctx in _TX_KINDS:
            # TransactionMessageAttempts / RetryInterval (OCPP 1.6 4.10): the wait grows
            # with each attempt; after the last the message is given up.
            self._tx_attempts += 1
            if self._tx_attempts >= self.cfg["ocpp_tx_attempts"]:
                self._tx_attempts = 0
                self.tx_dropped += 1
                self.log.delivered()
            else:
                self._tx_retry_at = ticks_add(
                    now, self.cfg["ocpp_tx_retry_s"] * 1000 * self._tx_attempts)

    # -- transactions ------------------------------------------------------------------------
    def time(self, now):
        """Seconds since 1970: the station's clock, else the central system's, else 0."""
        t = self.ops.wall_time()
        if t is not None:
            return t
        if self._cs_time is not None:
            return self._cs_time[0] + ticks_diff(now, self._cs_time[1]) // 1000
        return 0

    def _seconds(self):
        return self.time(self.ops.ticks_ms())

    def smart_charging(self):
        """The charging profiles (firmware/ocpp16/smart.py), loaded when first needed: a
        station without a profile keeps none of it on the heap."""
        if self.smart is None:
            from firmware.ocpp16.smart import SmartCharging
            self.smart = SmartCharging(self.store)
        return self.smart

    def _drop_smart(self):
        # The last profile is gone and its limit lifted: the module leaves the heap too.
        self.smart = None
        unload("firmware.ocpp16.smart")

    def in_transaction(self):
        return self.log.running is not None

    def stop_tx(self, reason, session_reason, now):
        """End the running transaction for the central system (RemoteStop, Reset, Unlock)."""
        return self.tx.stop(reason, session_reason, now)


def _random16():
    r = os.urandom(2)
    return r[0] << 8 | r[1]

"""The MQTT link to the operator backend, built on micropython-lib's umqtt.simple.

The control loop calls `step(now_ms)` every iteration and it NEVER waits on the network:
the connection is a small state machine advanced one bounded step at a time.

    OFFLINE --(backoff elapsed)--> TCP --(writable)--> HELLO --(CONNECT written)--> CONNACK
       ^                                                                              |
       +---------------- any error, timeout, protocol violation ---------- ONLINE <---+

What umqtt.simple does and what this module adds:
- umqtt's connect() resolves, connects, handshakes and waits for CONNACK in one blocking
  call, and subscribe() and QoS 1 publish() wait for their acknowledgements forever. So the
  link writes CONNECT and SUBSCRIBE itself (from the client's own fields: client id, will,
  credentials) without waiting, and polls CONNACK/SUBACK non-blockingly in later steps.
  It publishes QoS 0 only; records that must arrive go through the Outbox and are resent
  until the backend acks them on the ack topic.
- check_msg() ends with setblocking(True), an infinite wait on the ESP32. The socket umqtt
  sees is a _Wire over a firmware.net.Conn (timeout 0, poll(0)): a packet's first byte is
  handed to umqtt only once the whole packet is buffered, so the "blocking" reads after it
  come from memory; writes are queued and flushed without waiting. A packet that started
  but has not completed within mqtt_io_timeout_ms is a dead connection.
- ping() only sends: the link tracks PINGRESP and drops the connection when it does not
  arrive within half the keepalive.
- Protocol checks in umqtt are asserts: an AssertionError (or any malformed input) is a
  protocol error and closes the connection.

Blocking per step: none on the network (docs/architecture.md, "The network seam").
- OFFLINE: the broker's address comes from firmware.resolver: an IP literal at once, a
  name from a lookup in a _thread (getaddrinfo releases the GIL on the ESP32), cached, and
  looked up again hourly and after every 4th failed attempt while the old one stays in use.
- TCP connect: non-blocking connect() (EINPROGRESS) then poll(0) per step, bounded by
  mqtt_connect_timeout_ms in total.
- TLS: the handshake advances in non-blocking steps, but the step that processes the
  server's flight runs the public-key operations with the GIL held (no thread helps). Those
  steps run only while `quiet()` says a stall is harmless (the station: contactor open);
  otherwise the handshake waits (tls_deferred counts the steps).
- CONNACK / messages: reads take what has arrived; writes what the stack accepts.
"""
import errno
import sys

from firmware.compat import const, presize, ticks_add, ticks_diff
from firmware import messages
from firmware.commands import (CommandDispatcher, FORMATION_VIOLATION, MAX_COMMAND_BYTES,
                               RETAINED)
from firmware.ledger import Ledger
from firmware.outbox import KIND_TELEMETRY

if sys.implementation.name != "micropython":
    # umqtt.simple imports MicroPython's u-names; on CPython (host tests) they are the same
    # modules under their standard names.
    import binascii as _binascii
    import socket as _socket
    import struct as _struct
    sys.modules.setdefault("usocket", _socket)
    sys.modules.setdefault("ustruct", _struct)
    sys.modules.setdefault("ubinascii", _binascii)

from umqtt.simple import MQTTClient, MQTTException  # noqa: E402
import struct  # noqa: E402

from firmware.net import RX_SIZE, Conn, der as _der  # noqa: E402
from firmware.resolver import Resolver  # noqa: E402

# Connection states
OFFLINE = 0
TCP = 1
HELLO = 2
CONNACK = 3
ONLINE = 4
STATE_NAMES = ("offline", "tcp", "hello", "connack", "online")

# MQTT 3.1.1 control packet types (first byte, upper nibble)
_CONNECT = const(0x10)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBSCRIBE = const(0x82)
_SUBACK = const(0x90)
_PINGRESP = const(0xD0)

_CONNACK_REASONS = ("accepted", "unacceptable protocol version", "client id rejected",
                    "server unavailable", "bad user name or password", "not authorized")

_RX_PACKETS_PER_STEP = const(4)    # bounded work per step; the rest waits for the next step
_EVENTS_PER_STEP = const(4)
_EVENT_QUEUE = const(16)
_REPLY_QUEUE = const(4)
_ACK_QUEUE = const(64)             # acknowledged ids waiting to be applied (two full acks)
_ACKS_PER_STEP = const(2)          # each costs flash writes: a few per step, not a batch
_MAX_PACKET = const(8192)          # larger incoming packets are a protocol error (heap safety)
_TELEMETRY_MIN_GAP_MS = const(1000)  # on-change telemetry no more often than this
_RESOLVE_EVERY = const(4)          # look the host name up again after this many failed attempts
_MAX_BACKOFF_SHIFT = const(16)    # 2**16 x the minimum is beyond any maximum
_OUTAGE_SPREAD_MS = const(8000)   # first retry after a lost connection: anywhere in 0..8 s

class _Wire:
    """The stream umqtt.simple reads and writes, over a firmware.net.Conn; nothing here waits.

    umqtt reads a packet's first byte "non-blocking", then the rest "blocking". Here the
    first byte is handed out only once the whole packet is in the receive buffer (its length
    is in its header), so the "blocking" reads that follow are served from memory. Writes
    are queued on the connection and flushed without waiting. A packet that has started to
    arrive but not completed within io_timeout_ms is a dead connection."""

    def __init__(self, conn, io_timeout_ms):
        self.conn = conn
        self.io_timeout_ms = io_timeout_ms
        self.blocking = False
        self.op = 0            # first byte of the packet being read
        self.left = None       # bytes of the current packet not read yet, once its length is known
        self.packets = 0       # packets started (a step reads until none is complete)
        self.now = 0
        self._pos = 0          # read position inside the current packet (in conn.buf)
        self._end = 0          # its end: the packet is dropped from the buffer at the next one
        self._partial_since = None

    @property
    def rx(self):
        return self.conn.rx

    @property
    def tx(self):
        return self.conn.tx

    def arm(self, now_ms):
        """Start a step: flush what is queued."""
        self.now = now_ms
        self.conn.flush()

    def setblocking(self, flag):
        self.blocking = flag

    def settimeout(self, t):
        self.blocking = t != 0

    def _whole(self):
        """The size of the first packet when all of it is buffered, else 0."""
        c = self.conn
        buf = c.buf
        n = c.n
        size = 0
        sh = 0
        i = 1
        while True:
            if i >= n:
                return 0
            b = buf[i]
            size |= (b & 0x7F) << sh
            i += 1
            if not b & 0x80:
                break
            sh += 7
            if sh > 21:
                # MQTT 3.1.1 2.2.3: at most four bytes.
                raise MQTTException("remaining length longer than 4 bytes")
        if size > _MAX_PACKET:
            raise MQTTException("packet of %d bytes exceeds %d" % (size, _MAX_PACKET))
        total = i + size
        c.reserve(total)
        return total if n >= total else 0

    def read(self, n):
        if not self.blocking:
            c = self.conn
            if self._end:
                c.drop(self._end)
                self._end = 0
            c.fill()
            total = self._whole() if c.n else 0
            if not total:
                if c.eof:
                    return b""
                if c.n == 0:
                    self._partial_since = None
                elif self._partial_since is None:
                    self._partial_since = self.now
                elif ticks_diff(self.now, self._partial_since) >= self.io_timeout_ms:
                    raise OSError(errno.ETIMEDOUT)
                return None
            self._partial_since = None
            self._end = total
            self._pos = 1
            self.left = None
            self.packets += 1
            self.op = c.buf[0]
            return bytes((self.op,))
        if self.left is not None:
            # umqtt reads a PUBLISH's topic and packet id by their own length fields: a field
            # running past the remaining length would be read out of the next packets.
            if n < 0 or n > self.left:
                raise MQTTException("field of %d bytes beyond the packet (%d left)" % (n, self.left))
            self.left -= n
        if n < 0 or self._pos + n > self._end:
            raise MQTTException("read of %d bytes beyond the packet" % n)
        data = bytes(self.conn.buf[self._pos:self._pos + n])
        self._pos += n
        return data

    def write(self, buf, length=None):
        mv = memoryview(buf)
        if length is not None:
            mv = mv[:length]
        self.conn.send(mv)
        return len(mv)

    def close(self):
        self.conn.close()


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _mqtt_str(b):
    return struct.pack("!H", len(b)) + b


class _Client(MQTTClient):
    """umqtt.simple's client with CONNECT and SUBSCRIBE built as packets, so that the link
    can write them without waiting for their acknowledgements, and with a bound on the size
    of incoming packets."""

    poisoned = False     # a packet could not be read: the session would deliver it again

    def connect_packet(self, clean_session=True):
        flags = 0x02 if clean_session else 0
        payload = _mqtt_str(self.client_id)
        if self.lw_topic:
            flags |= 0x04 | (self.lw_qos & 0x3) << 3 | (0x20 if self.lw_retain else 0)
            payload += _mqtt_str(self.lw_topic) + _mqtt_str(self.lw_msg)
        if self.user:
            flags |= 0xC0
            payload += _mqtt_str(self.user) + _mqtt_str(self.pswd or b"")
        body = b"\x00\x04MQTT\x04" + bytes((flags,)) + struct.pack("!H", self.keepalive) + payload
        return bytes((_CONNECT,)) + _varint(len(body)) + body

    def subscribe_packet(self, topics, qos=0):
        self.pid = self.pid % 0xFFFF + 1
        body = struct.pack("!H", self.pid)
        for t in topics:
            body += _mqtt_str(t) + bytes((qos,))
        return bytes((_SUBSCRIBE,)) + _varint(len(body)) + body

    def publish_parts(self, topic, parts):
        """A QoS 0 PUBLISH whose payload is written piece by piece (publish() with the
        pieces joined, without the joined copy)."""
        sz = 2 + len(topic)
        for p in parts:
            sz += len(p)
        self.sock.write(bytes((_PUBLISH,)) + _varint(sz))
        self._send_str(topic)
        for p in parts:
            self.sock.write(p)

    def _recv_len(self):
        n = 0
        sh = 0
        while True:
            b = self.sock.read(1)[0]
            n |= (b & 0x7F) << sh
            if not b & 0x80:
                break
            sh += 7
            if sh > 21:
                # MQTT 3.1.1 2.2.3: at most four bytes.
                raise MQTTException("remaining length longer than 4 bytes")
        if n > _MAX_PACKET:
            self.poisoned = True
            raise MQTTException("packet of %d bytes exceeds %d" % (n, _MAX_PACKET))
        self.sock.left = n
        return n


# Every attribute of MqttLink, given first (compat.presize: its table's size is final
# before the objects it holds are made); tests/unit check the list is complete.
LINK_ATTRS = ("cfg", "station_id", "outbox", "_wall", "dispatcher", "topics", "_sf", "_quiet",
              "_resolver", "_rand", "boot_delay_ms", "_record_next_ms", "_client",
              "_keepalive_ms", "_state", "_wire", "_conn", "_rxbuf", "_hello", "_refreshed_at",
              "_tls_ctx", "_attempt", "_next_attempt_ms", "_deadline_ms", "_now",
              "_last_step_ms", "_sub_pid", "subscribed", "offline_since_ms", "_offline_ms",
              "_fallback", "_ever_connected", "_last_rx_ms", "_last_tx_ms", "_rx_seen",
              "_tx_seen", "_ping_sent_ms", "last_error", "disabled_reason", "_status",
              "_status_dirty", "_events", "_replies", "_acks", "_telemetry", "_tele_last_ms",
              "_tele_last_power", "_ha", "_bytes_sent", "_bytes_received", "connects",
              "attempts", "failures", "disconnects", "protocol_errors", "tls_errors",
              "internal_errors", "pings", "tls_deferred", "ping_timeouts", "rx_commands",
              "rx_acks", "bad_acks", "dropped_acks", "foreign_messages", "dropped_events",
              "telemetry_sent", "telemetry_stored", "records_sent", "events_sent",
              "replies_sent")


class MqttLink:
    """The station's connection to the backend. See the module docstring and docs/mqtt.md.

    cfg: firmware.config.Config (mqtt_*, telemetry_*, comms_*, outbox_* keys).
    outbox: firmware.outbox.Outbox; target: a firmware.command_target.CommandTarget.
    socket_factory: an object with getaddrinfo() and socket() like the socket module
      (the default); tests pass one that records how sockets are used.
    rand: rand(n) -> int in [0, n) for backoff jitter; default from the random module.
    wall_time: () -> UTC seconds or None (clock not set); stamps events, telemetry and
      replies and checks command expiry. ledger: firmware.ledger.Ledger of the commands
      executed (exactly once); default one in RAM only.
    spawn: how the broker's name is looked up off the control path (firmware/resolver.py;
      default _thread.start_new_thread, None: inline).
    quiet: quiet() -> True while a stalled loop is harmless (the station: contactor open);
      TLS handshake steps, seconds of crypto on the ESP32, run only then. None: always.
    """

    def __init__(self, cfg, station_id, outbox, target, socket_factory=None, rand=None,
                 wall_time=None, ledger=None, spawn=-1, quiet=None):
        presize(self, LINK_ATTRS)
        self.cfg = cfg
        self.station_id = station_id
        self.outbox = outbox
        self._wall = wall_time or _no_clock
        self.dispatcher = CommandDispatcher(target, self._wall,
                                            ledger if ledger is not None else Ledger(),
                                            cfg, station_id)
        self.topics = messages.Topics(cfg["mqtt_prefix"], station_id)
        if socket_factory is None:
            import socket as socket_factory
        self._sf = socket_factory
        self._quiet = quiet
        self._resolver = None
        if cfg["mqtt_host"]:
            self._resolver = Resolver(cfg["mqtt_host"], cfg["mqtt_port"],
                                      getattr(socket_factory, "SOCK_STREAM", 1),
                                      getaddrinfo=socket_factory.getaddrinfo, spawn=spawn)
        if rand is None:
            import random
            # Seeded from the hardware RNG at start-up (esp_random() on the ESP32); the
            # station id and os.urandom are mixed in so that boards powered up in the same
            # instant, whose early entropy may agree, still draw different delays.
            random.seed(random.getrandbits(24) ^ _seed(station_id))

            def rand(n):
                return random.getrandbits(30) % n if n > 0 else 0
        self._rand = rand
        # Stations boot together after a power cut: the first attempt is anywhere in
        # 0..mqtt_boot_spread_s, or they would all connect in the same second.
        spread = cfg["mqtt_boot_spread_s"] * 1000
        self.boot_delay_ms = rand(spread + 1) if spread else 0
        self._record_next_ms = None     # no record before this (outbox_flush_per_s)
        user = cfg["mqtt_user"]
        self._client = _Client(station_id.encode(), cfg["mqtt_host"], cfg["mqtt_port"],
                               user=user.encode() if user else None,
                               password=cfg["mqtt_password"].encode() if user else None,
                               keepalive=cfg["mqtt_keepalive_s"])
        self._client.set_callback(self._on_message)
        self._client.set_last_will(self.topics.status, messages.encode(messages.will()),
                                   retain=True, qos=1)
        self._keepalive_ms = cfg["mqtt_keepalive_s"] * 1000
        self._state = OFFLINE
        self._wire = None
        self._conn = None
        # Made once, while the heap is young: every connection reads into it (firmware/net.py).
        self._rxbuf = bytearray(RX_SIZE)
        self._hello = None
        self._refreshed_at = 0
        self._tls_ctx = None
        self._attempt = 0
        self._next_attempt_ms = None
        self._deadline_ms = 0
        self._now = 0
        self._last_step_ms = None
        self._sub_pid = None
        self.subscribed = False
        self.offline_since_ms = None
        self._offline_ms = 0
        self._fallback = False
        self._ever_connected = False
        self._last_rx_ms = 0
        self._last_tx_ms = 0
        self._rx_seen = 0
        self._tx_seen = 0
        self._ping_sent_ms = None
        self.last_error = None
        self.disabled_reason = self._check_config()
        # what to send
        self._status = messages.encode(messages.status(None, True))
        self._status_dirty = False
        self._events = []
        self._replies = []
        self._acks = []
        self._telemetry = None
        self._tele_last_ms = None
        self._tele_last_power = None
        self._ha = None            # Home Assistant discovery, built once ha_discovery is on
        # counters
        self._bytes_sent = 0
        self._bytes_received = 0
        self.connects = 0
        self.attempts = 0
        self.failures = 0
        self.disconnects = 0
        self.protocol_errors = 0
        self.tls_errors = 0
        self.internal_errors = 0
        self.pings = 0
        self.tls_deferred = 0
        self.ping_timeouts = 0
        self.rx_commands = 0
        self.rx_acks = 0
        self.bad_acks = 0
        self.dropped_acks = 0
        self.foreign_messages = 0
        self.dropped_events = 0
        self.telemetry_sent = 0
        self.telemetry_stored = 0
        self.records_sent = 0
        self.events_sent = 0
        self.replies_sent = 0

    def _check_config(self):
        if not self.cfg["mqtt_host"]:
            return "mqtt_host not set"
        if self.cfg["mqtt_tls"] and not self.cfg["mqtt_ca_file"]:
            # Never fall back to an unverified connection.
            return "mqtt_tls needs mqtt_ca_file"
        if self.cfg["mqtt_user"] and not self.cfg["mqtt_tls"] \
                and not self.cfg["mqtt_plain_credentials"]:
            # The password would cross the network in clear text: only where the site
            # says so locally (service mode or a signed command).
            return "mqtt_user needs mqtt_tls (or mqtt_plain_credentials)"
        return None

    # -- state -----------------------------------------------------------------------------------
    @property
    def online(self):
        return self._state == ONLINE

    @property
    def state(self):
        return self._state

    def comms_lost(self, now_ms):
        """True once the backend has been unreachable for comms_loss_timeout_s; stays True
        until the link is back online (the station then applies comms_fallback_ma). Never
        True when no backend is configured (mqtt_host empty)."""
        if self._state == ONLINE or not self.cfg["mqtt_host"]:
            # No backend configured (a stand-alone station): nothing to lose.
            return False
        if not self._fallback:
            since = self.offline_since_ms if self.offline_since_ms is not None else now_ms
            if self.offline_since_ms is None:
                self.offline_since_ms = now_ms
            if ticks_diff(now_ms, since) >= self.cfg["comms_loss_timeout_s"] * 1000:
                self._fallback = True
        return self._fallback

    def stats(self):
        w = self._conn
        sent = self._bytes_sent + (w.tx if w else 0)
        received = self._bytes_received + (w.rx if w else 0)
        out = {"state": STATE_NAMES[self._state], "bytes_sent": sent,
               "bytes_received": received, "connects": self.connects,
               "reconnects": max(0, self.connects - 1), "attempts": self.attempts,
               "failures": self.failures, "disconnects": self.disconnects,
               "protocol_errors": self.protocol_errors, "tls_errors": self.tls_errors,
               "internal_errors": self.internal_errors,
               "pings": self.pings, "tls_deferred": self.tls_deferred,
               "dns": self._resolver.stats() if self._resolver else None,
               "ping_timeouts": self.ping_timeouts, "rx_commands": self.rx_commands,
               "rejected_commands": self.dispatcher.rejected,
               "duplicate_commands": self.dispatcher.duplicates,
               "failed_commands": self.dispatcher.failed,
               "accepted_commands": self.dispatcher.accepted, "rx_acks": self.rx_acks,
               "bad_acks": self.bad_acks, "dropped_acks": self.dropped_acks,
               "foreign_messages": self.foreign_messages,
               "dropped_events": self.dropped_events, "events_sent": self.events_sent,
               "telemetry_sent": self.telemetry_sent, "telemetry_stored": self.telemetry_stored,
               "records_sent": self.records_sent, "replies_sent": self.replies_sent,
               "boot_delay_ms": self.boot_delay_ms,
               "last_error": self.last_error}
        return out

    # -- what the station publishes -------------------------------------------------------------
    def publish_status(self, fields):
        """Retained status; sent on the next step and again after every reconnect.
        Encoded now, so a value JSON cannot carry is the caller's error (ValueError or
        TypeError here), not a failure inside step()."""
        self._status = messages.encode(messages.status(fields, True))
        self._status_dirty = True

    def publish_event(self, fields):
        """An event dict with a "type" (state change, contactor, link up, ...). Queued
        while offline up to 16, oldest dropped; not persisted."""
        kind = fields.get("type", "event") if isinstance(fields, dict) else "event"
        msg = messages.encode(messages.event(kind, fields, self._wall()))
        if len(self._events) >= _EVENT_QUEUE:
            self._events.pop(0)
            self.dropped_events += 1
        self._events.append(msg)

    def publish_telemetry(self, fields, force=False, now_ms=None):
        """Telemetry every telemetry_interval_s, and sooner when power_w moved by
        telemetry_deadband_w or more (at most once a second), or when forced. While offline
        only the interval samples are kept, in the outbox (kind "telemetry"). Returns True
        when the sample was taken (sent on the next step, or stored)."""
        now = self._now if now_ms is None else now_ms
        if "time" not in fields:
            fields["time"] = self._wall()
        last = self._tele_last_ms
        power = fields.get("power_w")
        due = last is None or ticks_diff(now, last) >= self.cfg["telemetry_interval_s"] * 1000
        if self._state != ONLINE:
            # Offline only the interval samples are kept (on flash: no extra wear for
            # forced or on-change samples).
            if not due or not self.cfg["mqtt_host"]:
                return False
            self._tele_last_ms = now
            self._tele_last_power = power
            self.outbox.put(KIND_TELEMETRY, fields)
            self.telemetry_stored += 1
            return True
        take = force or due
        if not take and power is not None \
                and self._tele_last_power is not None \
                and ticks_diff(now, last) >= _TELEMETRY_MIN_GAP_MS:
            band = self.cfg["telemetry_deadband_w"]
            take = abs(power - self._tele_last_power) >= (band if band > 0 else 1)
        if not take:
            return False
        self._tele_last_ms = now
        self._tele_last_power = power
        self._telemetry = messages.encode(messages.telemetry(fields))
        return True

    # -- the step ---------------------------------------------------------------------------------
    def step(self, now_ms):
        """Advance the link by one bounded step. Never raises for network trouble."""
        self._now = now_ms
        if self.offline_since_ms is None:
            self.offline_since_ms = now_ms
        if self._state != ONLINE and self._last_step_ms is not None:
            self._offline_ms += max(0, ticks_diff(now_ms, self._last_step_ms))
        self._last_step_ms = now_ms
        state = self._state
        try:
            if self._acks:
                self._apply_acks()
            if state == OFFLINE:
                if self._next_attempt_ms is None:
                    self._next_attempt_ms = ticks_add(now_ms, self.boot_delay_ms)
                if self.disabled_reason is None and \
                        ticks_diff(now_ms, self._next_attempt_ms) >= 0:
                    self._begin(now_ms)
            elif state == TCP:
                self._poll_tcp(now_ms)
            elif state == HELLO:
                self._write_hello(now_ms)
            elif state == CONNACK:
                self._poll_connack(now_ms)
            else:
                self._service(now_ms)
        except AssertionError as e:
            self._protocol_error(now_ms, "protocol error%s" % (": %s" % e.args[0] if e.args else ""))
        except MQTTException as e:
            self._protocol_error(now_ms, "protocol error: %s" % (e.args[0] if e.args else "?"))
        except (IndexError, TypeError, ValueError) as e:
            self._protocol_error(now_ms, "protocol error: %r" % e)
        except OSError as e:
            self._fail(now_ms, "%s: %s" % (STATE_NAMES[state], _os_reason(e)))
        except Exception as e:
            # MemoryError while reading a message, or a defect: the control loop must go
            # on, so the connection is dropped and rebuilt; the count shows it happened.
            self.internal_errors += 1
            self._fail(now_ms, "%s: internal error %r" % (STATE_NAMES[state], e))

    def _begin(self, now_ms):
        r = self._resolver
        if self._attempt and self._attempt % _RESOLVE_EVERY == 0 \
                and self._refreshed_at != self._attempt:
            # The broker may have moved: look again (in the background for a name; the
            # cached address is used meanwhile).
            self._refreshed_at = self._attempt
            r.refresh()
        ai = r.get(now_ms)
        if ai is None:
            # Not known yet (the lookup runs in its thread): no attempt, nothing waits.
            if r.last_error is not None:
                self.last_error = "dns: %s" % r.last_error
            return
        if self.cfg["mqtt_tls"]:
            if self._tls_ctx is None:
                self._tls_ctx = self._make_tls()
            if not self._may_stall():
                return
        self.attempts += 1
        self._deadline_ms = ticks_add(now_ms, self.cfg["mqtt_connect_timeout_ms"])
        self._wire = None
        self._conn = Conn(self._sf, ai, self._rxbuf)
        self._state = TCP

    def _may_stall(self):
        # A TLS handshake step runs seconds of public-key crypto with the GIL held on the
        # ESP32 (no thread helps): only while the station says a stalled loop is harmless.
        if self._quiet is None or self._quiet():
            return True
        self.tls_deferred += 1
        return False

    def _make_tls(self):
        # The ssl module's default is no certificate check: require one, against our CA.
        import ssl
        ca = self.cfg["mqtt_ca_file"]
        cert = self.cfg["mqtt_cert_file"]
        key = self.cfg["mqtt_key_file"]
        if not hasattr(ssl, "SSLContext"):
            return _LegacyTls(ssl, ca, cert, key)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = ssl.CERT_REQUIRED
        if sys.implementation.name == "micropython":
            # MicroPython's mbedtls builds parse DER only ("invalid cert" for PEM): the
            # files may be PEM or DER, they are handed over as DER bytes.
            ctx.load_verify_locations(cadata=_der(ca))
            if cert:
                ctx.load_cert_chain(_der(cert), _der(key))
        else:
            ctx.load_verify_locations(cafile=ca)
            if cert:
                ctx.load_cert_chain(cert, key or None)
        return ctx

    def _poll_tcp(self, now_ms):
        conn = self._conn
        if not conn.connected():
            return self._check_deadline(now_ms)
        if self._tls_ctx is not None:
            conn.start_tls(self._tls_ctx, self.cfg["mqtt_host"])
        self._wire = _Wire(conn, self.cfg["mqtt_io_timeout_ms"])
        self._client.sock = self._wire
        # A persistent session (clean session 0, the client id is the station id): the broker
        # keeps the QoS 1 subscription and queues commands while the station is offline;
        # stale ones are refused by their expiry (firmware/commands.py).
        # A packet the station could not read (over 8 KB, malformed) stays queued in that
        # session and would drop every connection: one clean session discards it.
        clean = self._client.poisoned
        self._client.poisoned = False
        self._hello = self._client.connect_packet(clean)
        self._state = HELLO
        self._write_hello(now_ms)

    def _write_hello(self, now_ms):
        try:
            self._write_hello_(now_ms)
        except Exception as e:
            if self._tls_ctx is None:
                raise
            # Certificate verification and handshake failures (ValueError on MicroPython,
            # ssl.SSLError on CPython).
            self.tls_errors += 1
            raise OSError("tls: %s" % _text(e))

    def _write_hello_(self, now_ms):
        # With TLS the handshake comes first: CPython's do_handshake(), or on MicroPython
        # the first writes (they take nothing until it is done).
        conn = self._conn
        if conn.tls and (self._hello is not None or conn.pending):
            if not self._may_stall():
                # Deferred, not failed: the connect deadline starts again when it may run.
                self._deadline_ms = ticks_add(now_ms, self.cfg["mqtt_connect_timeout_ms"])
                return
            if self._hello is not None and not conn.handshake():
                return self._check_deadline(now_ms)
        if self._hello is not None:
            self._wire.write(self._hello)
            self._hello = None
        if conn.flush():
            self._state = CONNACK
            return
        self._check_deadline(now_ms)

    def _check_deadline(self, now_ms):
        if ticks_diff(now_ms, self._deadline_ms) >= 0:
            raise OSError(errno.ETIMEDOUT)

    def _poll_connack(self, now_ms):
        w = self._wire
        w.arm(now_ms)
        op = self._client.check_msg()
        if op is None:
            return self._check_deadline(now_ms)
        if op != _CONNACK:
            raise MQTTException("expected CONNACK, got 0x%02x" % op)
        n = self._client._recv_len()
        body = w.read(n)
        if n != 2:
            raise MQTTException("CONNACK length %d" % n)
        rc = body[1]
        if rc:
            reason = _CONNACK_REASONS[rc] if rc < len(_CONNACK_REASONS) else "code %d" % rc
            raise OSError("connection refused: %s" % reason)
        self._on_connected(now_ms)

    def _on_connected(self, now_ms):
        self._state = ONLINE
        self.connects += 1
        self._last_rx_ms = now_ms
        self._last_tx_ms = now_ms
        self._rx_seen = self._wire.rx
        self._tx_seen = self._wire.tx
        self._ping_sent_ms = None
        self.subscribed = False
        c = self._client
        # QoS 1: a command or ack the station did not PUBACK is delivered again; the
        # ledger answers a repeated command without running it twice.
        packet = c.subscribe_packet((self.topics.cmd, self.topics.ack), 1)
        self._sub_pid = c.pid
        self._wire.write(packet)
        self._send_status()
        fallback = self._fallback
        info = {"offline_s": self._offline_ms // 1000, "fallback_applied": fallback,
                "reconnect": self._ever_connected}
        if fallback:
            info["fallback_ma"] = self.cfg["comms_fallback_ma"]
        if self.last_error:
            info["reason"] = self.last_error
        self._events.insert(0, messages.encode(messages.event("link_up", info, self._wall())))
        if len(self._events) > _EVENT_QUEUE:
            self._events.pop()
            self.dropped_events += 1
        self._ever_connected = True
        self._fallback = False
        self._offline_ms = 0
        self.offline_since_ms = None
        self.outbox.unsend_all()

    def _send_status(self):
        self._status_dirty = False
        self._client.publish(self.topics.status, self._status, True, 0)

    def _publish(self, topic, msg, retain=False):
        self._client.publish(topic, messages.encode(msg), retain, 0)

    def _service(self, now_ms):
        w = self._wire
        w.arm(now_ms)
        c = self._client
        for _ in range(_RX_PACKETS_PER_STEP):
            started = w.packets
            op = c.check_msg()
            if op is not None and op & 0xF0 == _PUBLISH:
                # umqtt.simple 1.4 and later (1.7.0 is frozen in MicroPython v1.28.0) return
                # a PUBLISH's op after handing it to the callback; 1.3 returned None. Either
                # way the packet is done (tests/unit/test_umqtt_frozen.py).
                op = None
            if op is None:
                if w.packets == started:
                    break
                if w.op == _PINGRESP:
                    self._ping_sent_ms = None
                continue
            self._control_packet(op)
        if w.rx != self._rx_seen:
            self._rx_seen = w.rx
            self._last_rx_ms = now_ms
        while self._replies:
            self._publish(self.topics.reply, self._replies.pop(0))
            self.replies_sent += 1
        if self._status_dirty:
            self._send_status()
        for _ in range(_EVENTS_PER_STEP):
            if not self._events:
                break
            self._client.publish(self.topics.event, self._events.pop(0), False, 0)
            self.events_sent += 1
        if self._telemetry is not None:
            msg = self._telemetry
            self._telemetry = None
            self._client.publish(self.topics.telemetry, msg, False, 0)
            self.telemetry_sent += 1
        # A record waits until the connection has taken everything queued before it, and
        # records leave at most outbox_flush_per_s a second: after an outage a fleet's
        # backlog reaches the backend at a rate it can take (docs/mqtt.md, "Reconnect storms").
        rec = None
        if not self._conn.pending and (self._record_next_ms is None or
                                       ticks_diff(now_ms, self._record_next_ms) >= 0):
            rec = self.outbox.due(now_ms)
        if rec is not None:
            data = self.outbox.payload(rec, True)   # None: unreadable, the outbox dropped it
            if data is not None:
                self._client.publish_parts(self.topics.record,
                                           messages.record_parts(rec.kind, rec.seq, rec.id,
                                                                 data))
                self.outbox.sent(rec, now_ms)
                self.records_sent += 1
                self._record_next_ms = ticks_add(now_ms,
                                                 1000 // self.cfg["outbox_flush_per_s"])
        if self._ha is not None or self.cfg["ha_discovery"]:
            self._ha_step()
        self._keepalive(now_ms)
        if w.tx != self._tx_seen:
            self._tx_seen = w.tx
            self._last_tx_ms = now_ms

    def _ha_step(self):
        # Home Assistant discovery configs, one per step (firmware/ha_discovery.py).
        if self._ha is None:
            from firmware.ha_discovery import Discovery
            self._ha = Discovery(self.cfg, self.topics, self.station_id)
        self._ha.step(self._client, self.connects)

    def _keepalive(self, now_ms):
        half = self._keepalive_ms // 2
        if self._ping_sent_ms is not None:
            if ticks_diff(now_ms, self._ping_sent_ms) >= half:
                self.ping_timeouts += 1
                raise OSError("no PINGRESP within %d ms" % half)
            return
        if ticks_diff(now_ms, self._last_rx_ms) >= half or \
                ticks_diff(now_ms, self._last_tx_ms) >= half:
            self._client.ping()
            self.pings += 1
            self._ping_sent_ms = now_ms

    def _control_packet(self, op):
        c = self._client
        n = c._recv_len()
        body = self._wire.read(n) if n else b""
        if op == _SUBACK:
            if n < 3 or (body[0] << 8 | body[1]) != self._sub_pid:
                raise MQTTException("unexpected SUBACK")
            for code in body[2:]:
                if code & 0x80:
                    raise OSError("subscription refused by the broker")
            self.subscribed = True
            self._attempt = 0     # a complete session: the next failure starts backoff anew
            return
        if op == _PUBACK:
            return
        raise MQTTException("unexpected packet 0x%02x" % op)

    # -- incoming ------------------------------------------------------------------------------
    def _on_message(self, topic, msg):
        topic = bytes(topic)
        if topic == self.topics.cmd:
            self.rx_commands += 1
            if self._wire is not None and self._wire.op & 0x01:
                # The PUBLISH's retain flag (umqtt does not pass it on; the wire saw the
                # first byte). A retained command would run again at every reconnect: a
                # retained "reboot" would be a reboot loop.
                reply = self.dispatcher.refuse_unread(bytes(msg),
                                                      "retained commands are not accepted",
                                                      RETAINED)
            elif len(msg) > MAX_COMMAND_BYTES:
                reply = self.dispatcher.reject("payload too large: %d > %d bytes"
                                               % (len(msg), MAX_COMMAND_BYTES),
                                               code=FORMATION_VIOLATION)
            else:
                # The station's work on a command (set_config, set_limit: flash writes of
                # tens of ms) cannot time the connection out: the packet was read whole
                # and the reply is queued, nothing waits on the network.
                reply = self.dispatcher.handle(bytes(msg), self._now)
            if len(self._replies) >= _REPLY_QUEUE:
                self._replies.pop(0)
            self._replies.append(reply)
        elif topic == self.topics.ack:
            try:
                ids = messages.parse_ack(bytes(msg))
            except messages.MessageError:
                self.bad_acks += 1
                return
            self.rx_acks += 1
            # Applied a few per step (step()): each acknowledged record is flash writes.
            for i in ids:
                if len(self._acks) >= _ACK_QUEUE:
                    # Its record is resent after outbox_resend_s and acknowledged again.
                    self.dropped_acks += 1
                else:
                    self._acks.append(i)
        else:
            # Only the station's own topics are acted on (a broker ACL or bridge mistake
            # must not let one station obey another's commands).
            self.foreign_messages += 1

    def _apply_acks(self):
        for _ in range(_ACKS_PER_STEP):
            if not self._acks:
                return
            self.outbox.ack(self._acks.pop(0))

    # -- failure and shutdown ---------------------------------------------------------------------
    def _drop_socket(self):
        conn = self._conn
        if conn is not None:
            self._bytes_sent += conn.tx
            self._bytes_received += conn.rx
            conn.close()
        self._wire = None
        self._conn = None
        self._client.sock = None

    def _protocol_error(self, now_ms, reason):
        self.protocol_errors += 1
        if self._state == ONLINE:
            # Possibly a queued message it cannot read: the next CONNECT is clean.
            self._client.poisoned = True
        self._fail(now_ms, reason)

    def _fail(self, now_ms, reason):
        was_online = self._state == ONLINE
        self._drop_socket()
        self.last_error = reason
        if was_online:
            self.disconnects += 1
            self.offline_since_ms = now_ms
            self._fallback = False
            self._offline_ms = 0
        else:
            self.failures += 1
        self.outbox.unsend_all()
        self._state = OFFLINE
        self._attempt += 1
        low = self.cfg["mqtt_backoff_min_ms"]
        high = self.cfg["mqtt_backoff_max_s"] * 1000
        delay = low << min(self._attempt - 1, _MAX_BACKOFF_SHIFT)
        if delay > high:
            delay = high
        if was_online:
            # A broker restart drops every station in the same instant: full jitter over
            # a window wide enough for a fleet (docs/mqtt.md, "Reconnect storms"), or
            # all of them would be back within the same second.
            delay = self._rand(min(high, max(delay, _OUTAGE_SPREAD_MS)) + 1)
        else:
            # "Equal jitter": half fixed, half random, so stations do not reconnect in lockstep.
            delay = delay // 2 + self._rand(delay // 2 + 1)
        self.backoff_ms = delay
        self._next_attempt_ms = ticks_add(now_ms, delay)

    def close(self, reason="shutdown"):
        """Clean disconnect (before a reboot): retained offline status, then DISCONNECT,
        so the broker does not publish the will."""
        if self._state == ONLINE:
            try:
                self._wire.arm(self._now)
                self._publish(self.topics.status,
                              messages.status({"reason": reason}, False), retain=True)
                self._client.disconnect()
                self._conn.flush()     # what the stack takes now; nothing waits
            except Exception:
                pass
        self._drop_socket()
        self._state = OFFLINE


def _no_clock():
    return None


def _id_hash(station_id):
    """24 bits of the station id (unique in the fleet): djb2, kept a small int on the
    32-bit port."""
    h = 5381
    for b in station_id.encode() if isinstance(station_id, str) else station_id:
        h = ((h * 33) ^ b) & 0xFFFFFF
    return h


def _seed(station_id):
    """The station id's hash mixed with 24 bits of os.urandom."""
    h = _id_hash(station_id)
    try:
        import os
        r = os.urandom(3)
        h ^= r[0] << 16 | r[1] << 8 | r[2]
    except (ImportError, AttributeError, OSError):
        pass
    return h


def _text(e):
    msg = e.args[0] if e.args else repr(e)
    if not isinstance(msg, str):
        msg = str(e) or repr(e)
    return msg.strip()


def _os_reason(e):
    if e.args and isinstance(e.args[0], str):
        return e.args[0]
    code = e.args[0] if e.args else None
    if code == -1:
        return "connection closed by the broker"
    name = errno.errorcode.get(code) if isinstance(code, int) else None
    return name or ("error %s" % code)


class _LegacyTls:
    """Firmware before ssl.SSLContext (MicroPython < 1.23): ssl.wrap_socket with the
    certificates as bytes. Not exercised by the host tests (the unix port is newer)."""

    def __init__(self, ssl, ca, cert, key):
        self._ssl = ssl
        self._kw = {"cert_reqs": ssl.CERT_REQUIRED, "cadata": _der(ca)}
        if cert:
            self._kw["cert"] = _der(cert)
            self._kw["key"] = _der(key)

    def wrap_socket(self, sock, server_hostname=None, do_handshake_on_connect=True):
        return self._ssl.wrap_socket(sock, server_hostname=server_hostname,
                                     do_handshake=do_handshake_on_connect, **self._kw)


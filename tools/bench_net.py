"""The control loop against a network that stalls the way the ESP32 port does.

    micropython -m tools.bench_net RUN.json     # wall time (tools/bench.py, part "net")

The fakes block like the port: a call made on the control thread costs the loop its full
duration; one made on another thread (firmware/resolver.py's lookup) waits for it there.
`Stall.block(ms)` is that cost: on a SimBoard (tests) it advances the simulated clock, on a
wall-clock board (the benchmark) it really waits.

- getaddrinfo of a name: 5 s, then OSError (DNS down) or the address;
- connect: non-blocking EINPROGRESS; a blocking one would wait out the TCP timeout (18 s);
- recv/send with a timeout below 100 ms: one 100 ms wait (ports/esp32/modsocket.c,
  _socket_settimeout), then EAGAIN; without timeout: "forever" (60 s here);
- TLS do_handshake: 2 s of CPU (the GIL held: modtls_mbedtls.c never releases it), or a
  silent peer (it never completes);
- a broker in the socket: CONNACK, SUBACK, PINGRESP, until it goes half-open.

Network states (STATES): dns_down, no_route, black_hole, tls_silent, tls_slow, half_open.
run_state() charges an EV under one of them, unplugs it (or opens S2) at several moments,
and reports the worst CP-change-to-contactor-open time and the longest loop iteration.
"""
import errno
import sys
import time

try:
    import _thread
except ImportError:          # a port without threads: every call is on the control thread
    _thread = None

from firmware.compat import ticks_diff
from firmware.station import TICK_MS, Station
from firmware.storage import Store
from tools.pilotsim.model import S2_C, S2_OPEN
from tools.pilotsim.simboard import SimBoard

DNS_MS = 5000
TCP_TIMEOUT_MS = 18000
FOREVER_MS = 60000
TLS_CPU_MS = 2000
MIN_WAIT_MS = 100            # the ESP32's shortest socket timeout
HALF_OPEN_AFTER_MS = 1500
STATES = ("dns_down", "no_route", "black_hole", "tls_silent", "tls_slow", "half_open")
POLLOUT = 4
_TICKS_MASK = 0x3FFFFFFF


def _ident():
    return _thread.get_ident() if _thread else 0


class Stall:
    """Where the cost of a blocking call goes (see the module docstring)."""

    def __init__(self, board, simulated):
        self.board = board
        self.simulated = simulated
        self.control = _ident()
        self.control_ms = 0            # blocking charged to the control thread
        self.closed = False
        self.in_worker = False         # SimSpawn runs a job: its time is not the loop's

    def block(self, ms):
        if self.in_worker:
            return
        if _ident() == self.control:
            self.control_ms += ms
            if self.simulated:
                self.board.now_ms += ms
                return
        start = self.board.ticks_ms()
        while not self.closed and ticks_diff(self.board.ticks_ms(), start) < ms:
            time.sleep_ms(1) if hasattr(time, "sleep_ms") else time.sleep(0.001)


class SimSpawn:
    """spawn() in simulated time (deterministic tests): a lookup started at t completes at
    t + DNS_MS of the board's clock, at the first sleep from then on, and costs the loop
    nothing. The benchmark uses real threads (_thread) instead."""

    def __init__(self, stall):
        self.stall = stall
        self.jobs = []

    def __call__(self, fn, args):
        self.jobs.append((self.stall.board.now_ms + DNS_MS, fn, args))

    def run_due(self):
        now = self.stall.board.now_ms
        for job in [j for j in self.jobs if j[0] <= now]:
            self.jobs.remove(job)
            self.stall.in_worker = True
            try:
                job[1](*job[2])
            finally:
                self.stall.in_worker = False


class _Poller:
    def __init__(self):
        self.socks = []

    def register(self, s, mask=POLLOUT):
        self.socks.append(s)

    def poll(self, timeout=-1):
        return [(s, POLLOUT) for s in self.socks if s.up]


class FakeNet:
    """A socket factory (getaddrinfo, socket, poll) in one network state."""
    AF_INET = 2
    SOCK_STREAM = 1
    SOCK_DGRAM = 2

    def __init__(self, stall, state):
        self.stall = stall
        self.state = state
        self.lookups = 0
        self.sockets = 0
        self.waits = []             # (call, ms charged) of every blocking call

    def getaddrinfo(self, host, port, af=0, socktype=0):
        self.lookups += 1
        if not _literal(host):
            self.waits.append(("getaddrinfo", DNS_MS))
            self.stall.block(DNS_MS)
            if self.state == "dns_down":
                raise OSError(-202)          # lwIP: EAI_FAIL
        return [(2, socktype or 1, 0, "", ("10.0.0.9", port))]

    def socket(self, af=2, kind=1, proto=0):
        if kind == self.SOCK_DGRAM:
            return _Udp()
        self.sockets += 1
        return FakeSock(self)

    def poll(self):
        return _Poller()


def _literal(host):
    return host.replace(".", "").isdigit()


class FakeSock:
    def __init__(self, net):
        self.net = net
        self.timeout = None
        self.up = False
        self.rx = b""               # what the broker has said, not read yet
        self._in = b""              # what the station wrote, not parsed yet
        self.online_at = None
        self.closed = False

    def _wait(self, call):
        """A call that finds nothing: waits like the port, then EAGAIN."""
        t = self.timeout
        if t == 0:
            raise OSError(errno.EAGAIN)
        ms = FOREVER_MS if t is None else max(MIN_WAIT_MS, int(t * 1000))
        self.net.waits.append((call, ms))
        self.net.stall.block(ms)
        raise OSError(errno.ETIMEDOUT)

    def setblocking(self, flag):
        self.timeout = None if flag else 0

    def settimeout(self, t):
        self.timeout = t

    def connect(self, addr):
        if self.net.state != "no_route":
            self.up = True
        if self.timeout == 0:
            raise OSError(errno.EINPROGRESS)
        if not self.up:
            self.net.waits.append(("connect", TCP_TIMEOUT_MS))
            self.net.stall.block(TCP_TIMEOUT_MS)
            raise OSError(errno.ETIMEDOUT)

    def _silent(self):
        st = self.net.state
        if st == "black_hole":
            return True
        if st == "half_open" and self.online_at is not None:
            b = self.net.stall.board
            return ticks_diff(b.ticks_ms(), self.online_at) >= HALF_OPEN_AFTER_MS
        return False

    def recv(self, n):
        if self.rx and not self._silent():
            data = self.rx[:n]
            self.rx = self.rx[n:]
            return data
        return self._wait("recv")

    def send(self, data):
        if not self.up:
            return self._wait("send")
        data = bytes(data)
        self._in += data
        self._broker()
        return len(data)

    write = send

    def _broker(self):
        # Answer CONNECT, SUBSCRIBE and PINGREQ as a broker does (MQTT 3.1.1).
        while len(self._in) >= 2:
            size = 0
            sh = 0
            i = 1
            while True:
                if i >= len(self._in):
                    return
                b = self._in[i]
                size |= (b & 0x7F) << sh
                i += 1
                if not b & 0x80:
                    break
                sh += 7
            if len(self._in) < i + size:
                return
            op = self._in[0] & 0xF0
            body = self._in[i:i + size]
            self._in = self._in[i + size:]
            if self._silent():
                continue
            if op == 0x10:
                self.rx += b"\x20\x02\x00\x00"
                self.online_at = self.net.stall.board.ticks_ms()
            elif op == 0x80:
                self.rx += b"\x90\x04" + body[:2] + b"\x00\x00"
            elif op == 0xC0:
                self.rx += b"\xd0\x00"

    def close(self):
        self.closed = True


class _Udp:
    """SNTP's socket: the request goes nowhere, no answer comes (a timeout each time)."""

    def setblocking(self, flag):
        pass

    def sendto(self, data, addr):
        return len(data)

    def recv(self, n):
        raise OSError(errno.EAGAIN)

    def close(self):
        pass


class FakeTls:
    """An SSLContext: the handshake costs TLS_CPU_MS of CPU (tls_slow) or never completes
    (tls_silent, and any state without a peer)."""

    def __init__(self, net):
        self.net = net
        self.handshakes = 0

    def wrap_socket(self, sock, server_hostname=None, do_handshake_on_connect=True):
        return _TlsSock(self, sock)


class _TlsSock:
    def __init__(self, ctx, raw):
        self.ctx = ctx
        self.raw = raw
        self.done = False

    def do_handshake(self):
        net = self.ctx.net
        if net.state == "tls_slow" and not self.done:
            self.ctx.handshakes += 1
            net.waits.append(("tls_handshake", TLS_CPU_MS))
            net.stall.block(TLS_CPU_MS)      # the GIL is held: every thread waits
            self.done = True
        if not self.done:
            raise OSError(errno.EAGAIN)

    def recv(self, n):
        return self.raw.recv(n)

    def send(self, data):
        return self.raw.send(data)

    write = send

    def close(self):
        self.raw.close()


class NetBoard(SimBoard):
    """The simulator's board with Wi-Fi (the real drivers.wifi over a connected fake WLAN,
    SNTP by name through the stalling DNS) in its network_step."""

    def __init__(self, **kw):
        SimBoard.__init__(self, **kw)
        self.wifi = None
        self.opened_at = None           # ticks_ms of the last "open" coil command
        self.sim_spawn = None

    def sleep_ms(self, ms):
        SimBoard.sleep_ms(self, ms)
        if self.sim_spawn is not None:
            self.sim_spawn.run_due()

    def set_contactor(self, closed):
        if not closed and self.contactor_cmd:
            self.opened_at = self.ticks_ms()
        SimBoard.set_contactor(self, closed)

    def network_step(self, now_ms):
        if self.wifi is not None:
            self.wifi.step(now_ms)


class _Wlan:
    def active(self, on=None):
        return True

    def isconnected(self):
        return True

    def status(self):
        return 1010                     # network.STAT_GOT_IP


def build(storage, state, board=None, simulated=True, spawn=-1, host="broker.example"):
    """(station, board, net, stall): a Station charging-ready under network `state`.
    spawn: how names are looked up (-1: SimSpawn when simulated, else _thread; None:
    inline, on the loop)."""
    b = board if board is not None else NetBoard()
    stall = Stall(b, simulated)
    if simulated and spawn == -1:
        spawn = b.sim_spawn = SimSpawn(stall)
    net = FakeNet(stall, state)
    tls = state in ("tls_silent", "tls_slow")
    cfg = {"mqtt_host": host, "mqtt_port": 8883 if tls else 1883,
           "mqtt_connect_timeout_ms": 3000, "mqtt_backoff_min_ms": 500,
           "mqtt_backoff_max_s": 2, "mqtt_keepalive_s": 10, "b_to_c_debounce_ms": 0,
           "mqtt_boot_spread_s": 0,
           "station_id": "cp-net"}
    if tls:
        cfg.update({"mqtt_tls": True, "mqtt_ca_file": "ca.der"})   # the context is FakeTls
    # storage: a directory, or a Store (tests: on an in-memory flash)
    st = Station(b, config=cfg, store=storage if isinstance(storage, Store) else Store(storage))
    from firmware.mqtt_link import MqttLink
    link = MqttLink(st.cfg, st.cfg["station_id"], st.outbox, st, socket_factory=net,
                    spawn=spawn, quiet=st._may_stall)
    if tls:
        link._tls_ctx = FakeTls(net)
    st.link = link
    st.backend.link = link           # the MQTT backend plug-in steps this link
    from drivers.wifi import Wifi
    b.wifi = Wifi("site", "secret", ntp_server="pool.ntp.org", wlan=_Wlan(), spawn=spawn,
                  sf=net)
    return st, b, net, stall


def _charge(b):
    b.model.plugged = True
    b.model.s2 = S2_C
    b.model.update()


def _ev_stops(b):
    b.model.s2 = S2_OPEN
    b.model.update()


def _unplug(b):
    b.model.plugged = False
    b.model.s2 = S2_OPEN
    b.model.update()


def run_state(storage, state, trials=4, simulated=True, board=None, spawn=-1,
              host="broker.example", settle_ms=20000, warmup=0):
    """Charge, then change the pilot `trials` times (C->B, then unplug, alternately) while
    the network is in `state`; then `settle_ms` more with the contactor open (a deferred
    TLS handshake runs then). The reaction is taken from the change to the coil's "open"
    command. `warmup` pairs of trials come first and are not counted (in the benchmark
    the first session end imports modules from .mpy files, a stall that is not the
    network's). Returns the figures (ms: simulated on a SimBoard, wall otherwise)."""
    st, b, net, stall = build(storage, state, board, simulated, spawn, host)
    where = None
    longest_steady = 0       # ... other than the one that handles a pilot change
    reactions = []
    longest = 0              # iterations that began with the contactor closed
    longest_open = 0         # the others (a deferred TLS handshake runs there)
    changes = (_ev_stops, _unplug)
    pending = None
    step_no = 0
    t_limit = b.ticks_ms()
    _charge(b)
    # Stimuli at different phases of the loop period and of the link's attempts.
    delays = (700, 2300, 4100, 5900, 7700, 9300)
    armed_at = None
    try:
        while len(reactions) < trials:
            t0 = b.ticks_ms()
            closed = b.contactor_cmd
            change = pending is not None
            ops = st.store.ops
            gcs = st.collections
            st.step()
            spent = ticks_diff(b.ticks_ms(), t0)
            if closed and spent > longest:
                longest = spent
                # What the iteration did: flash operations, a collection (else: the host).
                where = {"iteration": step_no, "state": st.charger.state,
                         "pilot_change": change, "flash_ops": st.store.ops - ops,
                         "collections": st.collections - gcs}
            if closed and not change and spent > longest_steady:
                longest_steady = spent
            elif not closed and spent > longest_open:
                longest_open = spent
            step_no += 1
            if pending is not None and not b.contactor_cmd:
                reactions.append(ticks_diff(b.opened_at, pending))
                pending = None
                if warmup and len(reactions) == 2 * warmup:
                    del reactions[:]
                    warmup = 0
                    longest = longest_open = longest_steady = 0
                armed_at = None
                _charge(b)
            elif pending is None and b.contactor_cmd and b.contacts_closed:
                if armed_at is None:
                    armed_at = b.ticks_ms()
                if ticks_diff(b.ticks_ms(), armed_at) >= delays[len(reactions) % len(delays)]:
                    changes[len(reactions) % 2](b)
                    pending = b.ticks_ms()
            if ticks_diff(b.ticks_ms(), t_limit) > 120000:
                raise RuntimeError("%s: no progress (state %s, faults %s)"
                                   % (state, st.charger.state, st.faults.active_names()))
            if spent < TICK_MS:
                b.sleep_ms(TICK_MS - spent)
        # The pilot change was seen at the sample before the step that opened: the worst
        # case adds up to one period, as in tools/bench_tick.py.
        _unplug(b)
        end = b.ticks_ms()
        while ticks_diff(b.ticks_ms(), end) < settle_ms:
            t0 = b.ticks_ms()
            st.step()
            spent = ticks_diff(b.ticks_ms(), t0)
            if spent > longest_open:
                longest_open = spent
            if spent < TICK_MS:
                b.sleep_ms(TICK_MS - spent)
    finally:
        stall.closed = True
    s = st.link.stats()
    return {"state": state, "reactions_ms": reactions, "reaction_ms_max": max(reactions),
            "loop_stall_ms_max": longest, "loop_stall_ms_max_contactor_open": longest_open,
            "control_blocked_ms": stall.control_ms, "iterations": st.iterations,
            "longest_at": where, "loop_stall_ms_max_no_pilot_change": longest_steady,
            "waits": net.waits, "lookups": net.lookups, "sockets": net.sockets,
            "tls_handshakes": st.link._tls_ctx.handshakes if hasattr(st.link._tls_ctx, "handshakes") else 0,
            "mqtt": {k: s[k] for k in ("state", "attempts", "failures", "connects",
                                       "disconnects", "ping_timeouts", "tls_deferred",
                                       "last_error")},
            "dns": s["dns"], "ntp_failures": b.wifi.sntp.failures,
            "ntp_lookups": b.wifi.sntp.resolver.lookups}


class WallNetBoard(NetBoard):
    """NetBoard on the real clock (the benchmark)."""

    def __init__(self, **kw):
        NetBoard.__init__(self, **kw)
        self._wall0 = time.ticks_ms()

    def ticks_ms(self):
        self.now_ms = ticks_diff(time.ticks_ms(), self._wall0)
        return self.now_ms & _TICKS_MASK

    def sleep_ms(self, ms):
        time.sleep_ms(ms)


def main(argv):
    import json
    with open(argv[1]) as f:
        run = json.load(f)
    out = {}
    for i, state in enumerate(run["states"]):
        storage = "%s/%s" % (run["storage"], state)
        import os
        os.mkdir(storage)
        r = run_state(storage, state, trials=run.get("trials", 4), simulated=False,
                      board=WallNetBoard(), settle_ms=run.get("settle_ms", 8000), warmup=1)
        del r["waits"]
        out[state] = r
    sys.stdout.write(json.dumps({"result": out}) + "\n")


if __name__ == "__main__":
    main(sys.argv)

"""The station's network in simulated time: MQTT to a real broker, in lock-step.

Runs on the MicroPython unix port, inside the runner (tools/pilotsim/runner.py).

The firmware's MqttLink gets `SimNet` as its socket factory. A `SimSocket` is an in-memory
stream (io.IOBase, so select.poll works on it): what the station writes goes on to the
broker over a real TCP connection as it is written, and each packet header going by says
what must come back (CONNECT -> CONNACK, SUBSCRIBE -> SUBACK, PINGREQ -> PINGRESP; each
station PUBLISH reaches the scenario's backend; each backend PUBLISH on cmd/ack reaches the
subscribed station and comes back to the backend; a connection dropped without DISCONNECT
makes the broker publish the will). The station reads only what the relay has put there:
between two control-loop iterations the runner calls `settle()`, which holds the simulated
clock (waits in wall time, at most `cap_ms`) until all that is owed has arrived, whole
packets only, and then delivers it.

So the station sees every answer exactly one control-loop iteration after it asked, on
every run and whatever the machine's load: the broker can no longer change when the
firmware decides anything. Within one delivery, answers come before PUBLISHes; the
backend's trace records come in a fixed order (the station's, then its own).

`stall()` black-holes the path (connections stay open, nothing passes, new connections are
accepted and never answered); `resume()` drops every connection that existed during the
stall, as the far end would after its own timeout. `drop_all()` is a power cut: the
station's connections vanish (the broker then publishes the will).
"""
import errno
import io
import select
import socket

from firmware.compat import sleep_ms, ticks_diff, ticks_ms

_POLL = 3                  # MP_STREAM_POLL
_RD = 0x0001               # MP_STREAM_POLL_RD
_WR = 0x0004
_ERR = 0x0008
_HUP = 0x0010
# Bytes taken from the broker per recv: on a board the network stack's buffers are outside
# the GC heap; here they are in it, beside the firmware, so small (as tools/tcpuart.py).
_RECV_CHUNK = 512

_CONNECT = 0x10
_CONNACK = 0x20
_PUBLISH = 0x30
_SUBSCRIBE = 0x80
_SUBACK = 0x90
_PINGREQ = 0xC0
_PINGRESP = 0xD0
_DISCONNECT = 0xE0

SOCK_STREAM = 1


def _packet_end(buf, i):
    """Where the MQTT packet starting at buf[i] ends, or -1 when it is not complete."""
    n = len(buf)
    j = i + 1
    length = 0
    shift = 0
    while True:
        if j >= n:
            return -1
        b = buf[j]
        j += 1
        length |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
        if shift > 21:
            raise ValueError("malformed MQTT length")
    return j + length if j + length <= n else -1


def split_packets(buf):
    """(complete MQTT packets as bytes, the incomplete rest) of a byte stream."""
    out = []
    i = 0
    while i < len(buf):
        j = _packet_end(buf, i)
        if j < 0:
            break
        out.append(bytes(buf[i:j]))
        i = j
    return out, buf[i:]


class SimSocket(io.IOBase):
    """What MqttLink sees as its TCP socket: the station's end of the relay."""

    def __init__(self, net):
        self.net = net
        self.inbuf = bytearray()        # delivered by the relay, not yet read by the station
        self.timeout = None
        self.closed = False             # closed by the station
        self.eof = False                # the far end has gone (after inbuf is read)
        self.refused = False
        self.conn = None

    def setblocking(self, flag):
        self.timeout = None if flag else 0

    def settimeout(self, t):
        self.timeout = t

    def connect(self, addr):
        self.net._connect(self, addr)

    def ioctl(self, req, arg):
        if req != _POLL:
            return -errno.EINVAL
        ready = 0
        if self.refused:
            return _ERR | _HUP
        if self.inbuf or self.eof:
            ready |= _RD
        if not self.eof:
            ready |= _WR
        else:
            ready |= _HUP
        return ready & (arg | _ERR | _HUP)

    def _take(self, n):
        if self.closed:
            raise OSError(errno.EBADF)
        if self.inbuf:
            if n is None or n < 0 or n > len(self.inbuf):
                n = len(self.inbuf)
            data = bytes(self.inbuf[:n])
            self.inbuf = self.inbuf[n:]
            return data
        if self.eof:
            return b""
        if self.timeout == 0:
            return None             # as a non-blocking MicroPython socket
        # A blocking read with nothing delivered: whole packets only ever arrive, so this
        # is a read past what the peer sent; simulated time cannot pass inside a step.
        raise OSError(errno.ETIMEDOUT)

    def read(self, n=-1):
        return self._take(n)

    def recv(self, n):
        return self._take(n)

    def readinto(self, buf):
        data = self._take(len(buf))
        if data is None:
            return None
        buf[:len(data)] = data
        return len(data)

    def write(self, buf):
        if self.closed:
            raise OSError(errno.EBADF)
        if self.eof or self.refused:
            raise OSError(errno.ECONNRESET)
        # Passed on at once, not kept: a buffer here would grow by every message inside
        # the firmware's own write (a session record: some 870 B), in the heap the
        # firmware's figures are taken in. The broker's answers still reach the station only
        # at settle(), so nothing the firmware sees changes.
        self.net._out(self, buf)
        return len(buf)

    send = write

    def close(self):
        self.closed = True


class _Conn:
    """One station connection: the SimSocket and its real socket to the broker."""

    def __init__(self, sim):
        self.sim = sim
        self.broker = None          # real socket (None while stalled at connect)
        self.rx = b""               # broker bytes not yet a whole packet
        self.answers_owed = 0       # CONNACK/SUBACK/PINGRESP the broker owes
        self.publishes_owed = 0     # backend PUBLISHes the broker owes this station
        self.subscribed = False
        self.connected = False      # the broker accepted CONNECT: a drop publishes the will
        self.disconnected = False   # the station said DISCONNECT: no will
        self.stalled = False
        self.dead = False
        self.batch_answers = []
        self.batch_publishes = []
        self.first = None           # the first byte of the packet whose length is being read
        self.length = 0
        self.shift = 0
        self.left = 0               # bytes of the current packet still to pass


def _recv(sock, buf):
    """recv() into `buf`: the bytes read (b"" at the end; MicroPython's stream readinto,
    CPython's recv_into)."""
    into = getattr(sock, "readinto", None)
    if into is None:
        n = sock.recv_into(buf)
    else:
        # MicroPython's readinto on a blocking socket waits until the buffer is full:
        # non-blocking for the read, what has arrived (poll said readable) is returned.
        sock.setblocking(False)
        try:
            n = into(buf)
        finally:
            sock.setblocking(True)
    if n is None:
        return None             # nothing after all (a non-blocking stream)
    if not n:
        return b""
    return bytes(memoryview(buf)[:n])


class SimNet:
    """The socket factory handed to MqttLink, and the relay it talks through."""

    SOCK_STREAM = SOCK_STREAM

    def __init__(self, host, port, backend=None, cap_ms=2000):
        self.host = host
        self.port = port
        self.backend = backend
        self.cap_ms = cap_ms
        self.conns = []
        self.stalled = False
        self.gave_up = 0            # settles that ran into the cap (should stay 0)
        self.connections = 0
        # What the broker sends is read into this buffer, made once: a recv(_RECV_CHUNK)
        # would ask the heap the firmware's figures are taken in for 512 B every time.
        self._rxbuf = bytearray(_RECV_CHUNK)

    # -- the socket module's face ------------------------------------------------------
    def getaddrinfo(self, host, port, af=0, type=0, proto=0, flags=0):
        return [(2, SOCK_STREAM, 0, "", (host, port))]

    def socket(self, af=2, type=SOCK_STREAM, proto=0):
        return SimSocket(self)

    def _connect(self, sim, addr):
        c = _Conn(sim)
        sim.conn = c
        self.conns.append(c)
        self.connections += 1
        if self.stalled:
            c.stalled = True        # the relay accepts; nothing will ever pass
            return
        try:
            s = socket.socket()
            s.connect(socket.getaddrinfo(self.host, self.port)[0][-1])
        except OSError:
            sim.refused = True
            c.dead = True
            return
        c.broker = s

    # -- stall, resume, power cut ----------------------------------------------------------
    def stall(self):
        self.stalled = True
        for c in self.conns:
            c.stalled = True

    def resume(self):
        self.stalled = False
        for c in self.conns:
            self._drop(c)
        self.settle()

    def drop_all(self):
        for c in self.conns:
            c.stalled = False
            self._drop(c)
        self.settle()

    def _drop(self, c):
        if c.dead:
            return
        c.dead = True
        c.sim.eof = True
        if c.broker is not None:
            try:
                c.broker.close()
            except OSError:
                pass
            c.broker = None
            if c.connected and not c.disconnected and self.backend is not None:
                self.backend.owed += 1      # the broker publishes the station's will

    # -- the relay ----------------------------------------------------------------------------
    def _out(self, sim, buf):
        """What the station writes goes to the broker as it is written (black-holed while
        the path is stalled: resume() drops those connections), and each packet whose
        header goes by counts what it asks for (_up)."""
        c = sim.conn
        if c is None or c.stalled or c.dead or c.broker is None:
            return
        mv = memoryview(buf)
        i = 0
        n = len(mv)
        while i < n:
            if c.left:
                k = min(c.left, n - i)
                c.left -= k
                i += k
                continue
            b = mv[i]
            i += 1
            if c.first is None:
                c.first = b
                c.length = c.shift = 0
                continue
            c.length |= (b & 0x7F) << c.shift
            c.shift += 7
            if not b & 0x80:
                self._up(c, c.first)
                c.left = c.length
                c.first = None
        try:
            _send_all(c.broker, mv)
        except OSError:
            self._drop(c)

    def _forward(self, c):
        if c.sim.closed and not c.dead:
            self._drop(c)

    def _up(self, c, first):
        kind = first & 0xF0
        if kind == _CONNECT or kind == _PINGREQ:
            c.answers_owed += 1
        elif kind == _SUBSCRIBE:
            c.answers_owed += 1
            c.subscribed = True     # the broker handles it before anything sent after it
        elif kind == _PUBLISH:
            if self.backend is not None:
                self.backend.owed += 1
        elif kind == _DISCONNECT:
            c.disconnected = True

    def _receive(self, c):
        if c.dead or c.broker is None:
            return
        while _readable(c.broker):
            try:
                data = _recv(c.broker, self._rxbuf)
            except OSError:
                data = b""
            if data is None:
                return
            if not data:
                self._drop(c)       # the broker closed it: the station reads the end
                return
            if c.stalled:
                continue            # black hole: nothing reaches the station
            packets, c.rx = split_packets(c.rx + data)
            for p in packets:
                kind = p[0] & 0xF0
                if kind == _PUBLISH:
                    c.publishes_owed -= 1
                    c.batch_publishes.append(p)
                else:
                    if kind == _CONNACK:
                        c.connected = True
                    c.answers_owed -= 1
                    c.batch_answers.append(p)

    def backend_published(self, topic_is_station_bound):
        """The scenario's backend published: the broker owes it its own copy, and each
        subscribed station a copy when the topic is one the station subscribes to."""
        if self.backend is not None:
            self.backend.owed += 1
        if topic_is_station_bound:
            for c in self.conns:
                if c.subscribed and not c.dead and not c.stalled:
                    c.publishes_owed += 1

    def _quiet(self):
        for c in self.conns:
            if c.dead or c.stalled:
                continue
            if c.answers_owed > 0 or c.publishes_owed > 0:
                return False
        return self.backend is None or self.backend.owed <= 0

    def settle(self):
        """Forward what the station wrote and wait until every answer it provoked is here
        (wall time, at most cap_ms). Returns False when the cap ran out."""
        start = ticks_ms()
        ok = True
        while True:
            for c in self.conns:
                self._forward(c)
                self._receive(c)
            if self.backend is not None:
                self.backend.receive()
            if self._quiet():
                break
            if ticks_diff(ticks_ms(), start) >= self.cap_ms:
                self.gave_up += 1
                ok = False
                for c in self.conns:
                    c.answers_owed = c.publishes_owed = 0
                if self.backend is not None:
                    self.backend.owed = 0
                break
            sleep_ms(1)
        for c in self.conns:
            # One delivery per iteration: answers first, then PUBLISHes in broker order.
            for p in c.batch_answers:
                c.sim.inbuf += p
            for p in c.batch_publishes:
                c.sim.inbuf += p
            c.batch_answers = []
            c.batch_publishes = []
        self.conns = [c for c in self.conns if not (c.dead and c.sim.closed)]
        if self.backend is not None:
            self.backend.flush()
        return ok


def _readable(s):
    p = select.poll()
    p.register(s, select.POLLIN)
    return bool(p.poll(0))


def _send_all(s, data):
    mv = memoryview(data)
    while len(mv):
        n = s.write(mv)
        if n is None:
            n = 0
        mv = mv[n:]

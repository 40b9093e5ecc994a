"""A TCP relay between the fleet's stations and the broker that can black-hole the path.

    relay = Relay(broker_port); ... relay.blackhole(); ... relay.restore(); relay.close()

There is no root here for iptables, so the loopback path to the broker runs through this
relay (one thread, selectors, non-blocking sockets). `blackhole()` stops forwarding in both
directions WITHOUT closing a socket: bytes stay unread in the kernel's buffers, as on a
network path that drops every packet (TCP retransmits; neither end sees a FIN or a RST).
Connections a station opens meanwhile complete their TCP handshake with the relay's
listener (the kernel answers the SYN) and then hear nothing: CONNECT is not forwarded and
no upstream connection is made until the path is restored. `restore()` forwards again,
held bytes included; the upstream side of a held new connection is opened then, unless the
station closed it meanwhile (its SYN would never have reached the broker: it is dropped,
`abandoned`). An established connection's side that closed meanwhile is seen closed only
after the restore, once its held bytes are through, as its FIN would be.
"""
import errno
import selectors
import socket
import threading
import time

HOST = "127.0.0.1"
_CHUNK = 65536


class _Pair:
    __slots__ = ("down", "up", "to_up", "to_down", "closed", "connecting")

    def __init__(self, down):
        self.down = down
        self.up = None
        self.to_up = b""
        self.to_down = b""
        self.closed = False
        self.connecting = False


class Relay:
    def __init__(self, upstream_port, upstream_host=HOST, port=0):
        self.upstream = (upstream_host, upstream_port)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, port))
        self.sock.listen(1024)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.host = HOST
        self.accepted = 0
        self.upstream_connects = 0
        self.abandoned = 0            # held new connections closed before the restore
        self.blackholed = False
        self.blackholes = []          # (start, end) monotonic
        self._pairs = []
        self._lock = threading.Lock()
        self._stop = False
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.sock, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    # -- control ------------------------------------------------------------------------------
    def blackhole(self):
        with self._lock:
            self.blackholed = True
            self.blackholes.append([time.monotonic(), None])

    def restore(self):
        with self._lock:
            self.blackholed = False
            if self.blackholes and self.blackholes[-1][1] is None:
                self.blackholes[-1][1] = time.monotonic()

    def close(self):
        self._stop = True
        self._thread.join(5)
        for p in self._pairs:
            self._close_pair(p)
        self._sel.close()
        self.sock.close()

    @property
    def connections(self):
        return sum(1 for p in self._pairs if not p.closed)

    # -- the loop ---------------------------------------------------------------------------------
    def _interest(self, p):
        """(down events, up events) wanted now."""
        if self.blackholed or p.closed:
            return 0, 0
        if p.up is None or p.connecting:
            return 0, (selectors.EVENT_WRITE if p.connecting else 0)
        d = (selectors.EVENT_READ if len(p.to_up) < _CHUNK else 0) | \
            (selectors.EVENT_WRITE if p.to_down else 0)
        u = (selectors.EVENT_READ if len(p.to_down) < _CHUNK else 0) | \
            (selectors.EVENT_WRITE if p.to_up else 0)
        return d, u

    def _set(self, s, events, p):
        if s is None:
            return
        try:
            key = self._sel.get_key(s)
        except (KeyError, ValueError):
            key = None
        if events and key is None:
            self._sel.register(s, events, p)
        elif events and key.events != events:
            self._sel.modify(s, events, p)
        elif not events and key is not None:
            self._sel.unregister(s)

    def _refresh(self):
        for p in self._pairs:
            if p.closed:
                continue
            if not self.blackholed and p.up is None:
                if self._abandoned(p):
                    continue
                self._connect_up(p)
            d, u = self._interest(p)
            self._set(p.down, d, p)
            self._set(p.up, u, p)

    def _abandoned(self, p):
        """A connection opened during the black hole whose station has given up on it
        (closed): on a real network its SYN never got through, so the broker never hears of
        it. Its bytes (a stale CONNECT, which would take the station's live session over)
        are dropped with it."""
        while True:
            try:
                data = p.down.recv(_CHUNK)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                data = b""
            if not data:
                self.abandoned += 1
                self._close_pair(p)
                return True
            p.to_up += data

    def _connect_up(self, p):
        up = socket.socket()
        up.setblocking(False)
        try:
            up.connect(self.upstream)
        except OSError as e:
            if e.errno not in (errno.EINPROGRESS, errno.EWOULDBLOCK):
                up.close()
                self._close_pair(p)
                return
        p.up = up
        p.connecting = True
        self.upstream_connects += 1

    def _close_pair(self, p):
        if p.closed:
            return
        p.closed = True
        for s in (p.down, p.up):
            if s is None:
                continue
            try:
                self._sel.unregister(s)
            except (KeyError, ValueError):
                pass
            try:
                s.close()
            except OSError:
                pass

    def _loop(self):
        while not self._stop:
            with self._lock:
                self._refresh()
            for key, ev in self._sel.select(0.05):
                if key.data is None:
                    self._accept()
                    continue
                p = key.data
                if p.closed or self.blackholed:
                    continue
                try:
                    self._io(p, key.fileobj, ev)
                except OSError:
                    self._close_pair(p)
            self._pairs = [p for p in self._pairs if not p.closed]

    def _accept(self):
        while True:
            try:
                s, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            s.setblocking(False)
            self.accepted += 1
            self._pairs.append(_Pair(s))

    def _io(self, p, s, ev):
        if s is p.up and p.connecting:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err)
            p.connecting = False
            return
        if ev & selectors.EVENT_READ:
            data = s.recv(_CHUNK)
            if not data:
                # The peer closed: so does the other side, once its queue is written.
                other = p.up if s is p.down else p.down
                rest = p.to_up if s is p.down else p.to_down
                if rest:
                    try:
                        other.send(rest)
                    except OSError:
                        pass
                self._close_pair(p)
                return
            if s is p.down:
                p.to_up += data
                if not p.connecting:
                    p.to_up = p.to_up[p.up.send(p.to_up):]
            else:
                p.to_down += data
                p.to_down = p.to_down[p.down.send(p.to_down):]
            return
        if ev & selectors.EVENT_WRITE:
            if s is p.up and p.to_up:
                k = s.send(p.to_up)
                p.to_up = p.to_up[k:]
            elif s is p.down and p.to_down:
                k = s.send(p.to_down)
                p.to_down = p.to_down[k:]

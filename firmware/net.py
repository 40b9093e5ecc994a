"""A TCP (optionally TLS) connection that never waits: timeout 0 and select.poll(0) only.

Why nothing here sets a timeout: on the ESP32 any socket timeout below 100 ms becomes one
100 ms wait (ports/esp32/modsocket.c, _socket_settimeout), so "a small timeout" is a 100 ms
stall of the control loop. Every socket is non-blocking from creation; connect() returns
EINPROGRESS and completion is seen with poll(0) (exact on every port); reads take what has
arrived into one receive buffer; writes take what the stack accepts and keep the rest in a
send buffer that later steps flush. The protocol above (firmware/mqtt_link.py) parses
whole packets out of the receive buffer, so no read ever waits for the rest of a packet.

TLS: the handshake advances inside non-blocking reads and writes (MicroPython's SSLSocket
drives mbedtls from read/write; CPython's from do_handshake). A step never waits for the
peer, but the step that processes the server's flight runs the public-key operations, CPU
time with the GIL held (modtls_mbedtls.c never releases it). The caller decides when such a
step may run (MqttLink's `quiet`, docs/architecture.md).
"""
import errno
import sys

import select

if sys.implementation.name != "micropython":
    import socket as _socket
    import ssl as _ssl
    # CPython reports "no data yet" as exceptions: non-blocking, TLS wants more, and a
    # socket timeout (whose errno is None).
    _WANT = (_ssl.SSLWantReadError, _ssl.SSLWantWriteError, BlockingIOError, _socket.timeout)
else:
    _WANT = ()

_WOULD_BLOCK = (errno.EAGAIN, errno.ETIMEDOUT, errno.EINPROGRESS)
_EPIPE = 32            # not in MicroPython's errno module; 32 on Linux and in lwIP
_TX_MAX = 16384        # unsent bytes beyond this: the peer is not reading (a dead connection)
RX_SIZE = 512          # the receive buffer: a status, a command or an ack fits; more grows it


def would_block(e):
    if _WANT and isinstance(e, _WANT):
        return True
    return isinstance(e, OSError) and bool(e.args) and e.args[0] in _WOULD_BLOCK


class Conn:
    """One connection. `ai` is a getaddrinfo() entry (firmware/resolver.py caches it);
    `sf` is the socket module or a stand-in for it (tools/bench_net.py: one with its own
    poll(), as select.poll takes only real sockets).

    connected() -> True once TCP is up (then start_tls() when wanted);
    fill() -> bytes read into `buf` (`n` of them valid from index 0); drop(k) consumes k;
    send(data) queues and flushes; flush() writes what the stack takes; all without waiting.
    """

    def __init__(self, sf, ai, buf=None):
        raw = sf.socket(ai[0], ai[1], ai[2])
        raw.setblocking(False)
        self.raw = raw
        self.stream = raw
        self.tls = False
        # The receive buffer: the owner's, made once and handed to every connection, so
        # that a reconnect on a fragmented heap never needs a new block of this size.
        self.buf = buf if buf is not None else bytearray(RX_SIZE)
        self._base = self.buf
        self.n = 0                # valid bytes in buf
        self.eof = False
        self.rx = 0               # bytes received / sent (counters for the link's stats)
        self.tx = 0
        self._tx = b""            # bytes accepted by send() not yet taken by the stack
        self._poller = None
        try:
            raw.connect(ai[-1])
        except OSError as e:
            if not would_block(e):
                raw.close()
                raise
        self._poller = getattr(sf, "poll", select.poll)()
        self._poller.register(raw, select.POLLOUT)

    def connected(self):
        """poll(0): False while the TCP handshake is under way; raises when it failed."""
        if self._poller is None:
            return True
        ready = self._poller.poll(0)
        if not ready:
            return False
        if ready[0][1] & (select.POLLERR | select.POLLHUP):
            raise OSError(errno.ECONNREFUSED)
        if hasattr(self.raw, "getsockopt"):
            # CPython: the connect's own result (MicroPython reports it as POLLERR).
            import socket
            err = self.raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err)
        self._poller = None
        return True

    def start_tls(self, ctx, server_hostname):
        self.stream = ctx.wrap_socket(self.raw, server_hostname=server_hostname,
                                      do_handshake_on_connect=False)
        self.tls = True

    def handshake(self):
        """CPython: one non-blocking do_handshake(); True when done. MicroPython's TLS
        socket has none: its handshake advances in the first read/write (True here)."""
        hs = getattr(self.stream, "do_handshake", None)
        if hs is None:
            return True
        try:
            hs()
        except Exception as e:
            if would_block(e):
                return False
            raise
        return True

    def _read_into(self, mv):
        s = self.stream
        try:
            if hasattr(s, "recv_into"):
                return s.recv_into(mv)
            if hasattr(s, "readinto"):
                return s.readinto(mv)
            data = s.recv(len(mv))
            if data is None:
                return None
            mv[:len(data)] = data
            return len(data)
        except Exception as e:
            if would_block(e):
                return None
            raise

    def fill(self):
        """Read what has arrived (one non-blocking read). Returns the byte count; sets eof
        when the peer closed."""
        if self.eof or self.n >= len(self.buf):
            return 0
        got = self._read_into(memoryview(self.buf)[self.n:])
        if got is None:
            return 0
        if got == 0:
            self.eof = True
            return 0
        self.n += got
        self.rx += got
        return got

    def reserve(self, size):
        """Make room for a packet of `size` bytes (a larger buffer until the packet is
        consumed, then the base one again)."""
        if size > len(self.buf):
            nb = bytearray(size)
            nb[:self.n] = self.buf[:self.n]
            self.buf = nb

    def drop(self, k):
        """Consume the first k buffered bytes."""
        rest = self.n - k
        if rest > 0:
            self.buf[:rest] = self.buf[k:self.n]
        self.n = rest if rest > 0 else 0
        if self.n == 0 and self.buf is not self._base:
            self.buf = self._base           # a large packet's room is given back

    def send(self, data):
        if self._tx:
            self._tx += bytes(data)
        else:
            k = self._write(data)
            if k < len(data):
                self._tx = bytes(data[k:])
        if len(self._tx) > _TX_MAX:
            raise OSError(errno.ENOBUFS)

    def flush(self):
        """Write what the stack takes of the queued bytes; True when none are left."""
        if self._tx:
            k = self._write(self._tx)
            if k:
                self._tx = self._tx[k:]
        return not self._tx

    @property
    def pending(self):
        return len(self._tx)

    def _write(self, data):
        s = self.stream
        try:
            k = s.write(data) if hasattr(s, "write") else s.send(data)
        except Exception as e:
            if would_block(e):
                return 0
            if isinstance(e, OSError) and e.args and e.args[0] == _EPIPE:
                # Writing after the peer closed: what a read would report as a reset.
                raise OSError(errno.ECONNRESET)
            raise
        k = k or 0
        self.tx += k
        return k

    def close(self):
        for s in (self.stream, self.raw):
            try:
                s.close()
            except Exception:  # noqa: BLE001 - closing a dead socket
                pass
        self._poller = None


def der(path):
    """The first PEM block of `path` decoded to DER (or the file itself when it is DER): what
    the ESP32's ssl takes for cadata, cert and key (MQTT and OCPP alike)."""
    with open(path, "rb") as f:
        data = f.read()
    start = data.find(b"-----BEGIN")
    if start < 0:
        return data
    body_start = data.find(b"\n", start) + 1
    end = data.find(b"-----END", body_start)
    if body_start <= 0 or end < 0:
        raise ValueError("%s: truncated PEM" % path)
    import binascii
    return binascii.a2b_base64(data[body_start:end].replace(b"\r", b"").replace(b"\n", b""))

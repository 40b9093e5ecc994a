"""A UART-like stream over TCP, for talking Modbus RTU frames to a peer on the host.

The peer is a Modbus server using RTU framing over TCP (pymodbus with FramerType.RTU, see
tests/system/meter_peer.py), so the bytes are exactly what would cross the RS-485 pair.
`TcpUart` has the meter_uart contract of firmware/board.py: write(buf), read(n),
readinto(buf[, nbytes]), any(), flush() and set_de(on) (a no-op: TCP has no driver enable).

Runs on CPython and on the MicroPython unix port (socket only, non-blocking reads), so the
firmware's Modbus master can be exercised against a real peer from either.

    from tools.tcpuart import open_stream
    uart = open_stream("tcp:127.0.0.1:5020")
"""
import errno
import socket

try:
    from time import sleep_ms as _sleep_ms
except ImportError:
    import time as _time

    def _sleep_ms(ms):
        _time.sleep(ms / 1000)

_WOULD_BLOCK = (errno.EAGAIN, getattr(errno, "EWOULDBLOCK", errno.EAGAIN))
_CHUNK = 512


def _errno(e):
    code = getattr(e, "errno", None)
    if code is None and e.args:
        code = e.args[0]
    return code


class TcpUart:
    """Receives into one buffer made at start (`_CHUNK` bytes, more than a Modbus RTU frame):
    like a UART's FIFO, `any()` and `readinto()` allocate nothing, so the harness does not
    churn the heap the firmware's figures are taken in (docs/performance.md, Heap)."""

    def __init__(self, host, port):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.connect(socket.getaddrinfo(host, port)[0][-1])
        self._sock.setblocking(False)
        self._buf = bytearray(_CHUNK)
        self._view = memoryview(self._buf)
        self._n = 0                 # bytes waiting in _buf
        # MicroPython's socket is a stream: readinto() returns None when nothing waits.
        self._readinto = getattr(self._sock, "readinto", None)
        self.closed = False
        self.host = host
        self.port = port

    def _pump(self):
        if self.closed or self._n >= _CHUNK:
            return
        try:
            if self._readinto is not None:
                got = self._readinto(self._view[self._n:])
            else:
                got = self._sock.recv_into(self._view[self._n:])
        except OSError as e:
            if _errno(e) in _WOULD_BLOCK:
                return
            raise
        if got is None:             # MicroPython: non-blocking socket with nothing to read
            return
        if not got:
            self.closed = True      # the peer went away: behave like a silent bus
            return
        self._n += got

    def _take(self, n):
        rest = self._n - n
        if rest:
            self._buf[:rest] = self._buf[n:self._n]
        self._n = rest

    def any(self):
        self._pump()
        return self._n

    def readinto(self, buf, nbytes=None):
        self._pump()
        n = len(buf) if nbytes is None else min(nbytes, len(buf))
        n = min(n, self._n)
        if not n:
            return None
        buf[:n] = self._view[:n]
        self._take(n)
        return n

    def read(self, n=-1):
        self._pump()
        if not self._n:
            return None
        if n < 0 or n > self._n:
            n = self._n
        data = bytes(self._view[:n])
        self._take(n)
        return data

    def write(self, buf):
        data = bytes(buf)
        sent = 0
        while sent < len(data):
            try:
                n = self._sock.send(data[sent:])
            except OSError as e:
                if _errno(e) in _WOULD_BLOCK:
                    _sleep_ms(1)
                    continue
                raise
            if n is None:
                _sleep_ms(1)
                continue
            sent += n
        return sent

    def flush(self):
        """Frames leave in write(): nothing is buffered here."""

    def set_de(self, on):
        """No driver-enable line on TCP."""

    def close(self):
        self.closed = True
        self._sock.close()


def open_stream(spec):
    """A stream for "tcp:HOST:PORT"."""
    if not spec.startswith("tcp:"):
        raise ValueError("expected tcp:HOST:PORT, got %r" % spec)
    host, _, port = spec[4:].rpartition(":")
    if not host or not port.isdigit():
        raise ValueError("expected tcp:HOST:PORT, got %r" % spec)
    return TcpUart(host, int(port))

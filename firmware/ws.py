"""A non-blocking WebSocket client (RFC 6455) for OCPP-J: text messages over one socket.

The control loop calls `step(now)` every iteration and it never waits on the network: the
socket is non-blocking, readiness comes from select.poll with timeout 0, and every frame is
parsed incrementally from one receive buffer, so a message that arrives in pieces over many
steps costs no step more than a poll and a read. The buffer is small (`rx_size`, made
once): the answers a station gets are a few hundred bytes. A frame whose header announces
more gets a buffer of its own size for as long as it is being read (never over
`max_message`), so the heap holds a large block only while a large message arrives.

    CLOSED --open()--> CONNECTING --(writable)--> [TLS] --> HANDSHAKE --(101)--> OPEN
       ^                                                                           |
       +------- error, timeout, close frame, ping unanswered ------- CLOSING <------+

What the client does (RFC 6455 section numbers):
- the opening handshake (4.1): `Sec-WebSocket-Protocol` names the subprotocol (OCPP-J 1.6:
  "ocpp1.6", which the server must echo, or the connection is refused); optional HTTP Basic
  authentication (OCPP 1.6 Security Profiles 1 and 2: user = charge point identity);
  `Sec-WebSocket-Accept` is checked where the port has SHA-1;
- client frames are masked with a fresh key each (5.3); server frames must not be (5.1);
- text messages, fragmented or not (5.4), up to `max_message` bytes: a longer frame or
  message closes the connection with 1009 (message too big) before its payload is read,
  so a peer cannot exhaust the heap (as does a frame whose buffer cannot be had); a binary
  message is refused with 1003;
- a message to send can be given in pieces (`send_pieces`): written into the send queue
  one after the other, so a large answer never exists as one string;
- ping is answered with pong (5.5.2); the client pings every `ping_s` seconds and counts
  the connection dead when nothing at all arrives for `ping_s` + `pong_timeout_ms`;
- close (5.5.1, 7): answered, then the socket is shut.

Blocking: `resolve()` (getaddrinfo) is the one blocking call; open() calls it only while the
address is unknown, so a host name should be resolved before the control loop starts (an IP
literal needs no DNS). TLS (wss://) runs its handshake through non-blocking reads and writes,
but the step that handles the server's certificate spends the CPU time of its public-key
operations.
"""
import errno
import os
import select
import socket
import struct
import sys
from binascii import b2a_base64

from firmware.compat import const, presize, ticks_add, ticks_diff

CLOSED = const(0)
CONNECTING = const(1)
TLS = const(2)
HANDSHAKE = const(3)
OPEN = const(4)
CLOSING = const(5)
STATE_NAMES = ("closed", "connecting", "tls", "handshake", "open", "closing")

_OP_CONT = const(0)
_OP_TEXT = const(1)
_OP_BINARY = const(2)
_OP_CLOSE = const(8)
_OP_PING = const(9)
_OP_PONG = const(10)

CLOSE_NORMAL = const(1000)
CLOSE_GOING_AWAY = const(1001)
CLOSE_PROTOCOL = const(1002)
CLOSE_UNSUPPORTED = const(1003)
CLOSE_TOO_BIG = const(1009)

_MAX_HEADER = const(2048)     # HTTP response head; longer is refused
_RX_SIZE = const(512)         # the receive buffer kept between messages
CHUNK = const(256)           # send_pieces copies a message's pieces into blocks of this size
_MAX_OUT = const(16384)       # queued outgoing bytes; more is refused (the caller retries)
_CLOSE_WAIT_MS = const(1000)  # how long a close waits for the peer's close frame
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

if sys.implementation.name == "micropython":
    _WANT = ()
else:
    import ssl as _ssl
    _WANT = (BlockingIOError, _ssl.SSLWantReadError, _ssl.SSLWantWriteError)
_WOULD_BLOCK = (errno.EAGAIN, errno.EINPROGRESS, errno.ETIMEDOUT)


class WsError(Exception):
    pass


def _would_block(e):
    if _WANT and isinstance(e, _WANT):
        return True
    return isinstance(e, OSError) and bool(e.args) and e.args[0] in _WOULD_BLOCK


def parse_url(url):
    """(secure, host, port, path) of a ws:// or wss:// URL; ValueError otherwise."""
    if url.startswith("ws://"):
        secure, rest, port = False, url[5:], 80
    elif url.startswith("wss://"):
        secure, rest, port = True, url[6:], 443
    else:
        raise ValueError("url: ws:// or wss:// expected")
    i = rest.find("/")
    hostport, path = (rest, "/") if i < 0 else (rest[:i], rest[i:])
    if hostport.startswith("["):             # IPv6 literal
        j = hostport.find("]")
        host, tail = hostport[1:j], hostport[j + 1:]
    else:
        j = hostport.rfind(":")
        host, tail = (hostport, "") if j < 0 else (hostport[:j], hostport[j:])
    if tail:
        if not tail.startswith(":") or not tail[1:].isdigit():
            raise ValueError("url: bad port")
        port = int(tail[1:])
    if not host or not 0 < port < 65536:
        raise ValueError("url: bad host or port")
    return secure, host, port, path


def _head(op, n):
    """(a frame's header with its mask key, the key) for `n` bytes of payload."""
    mask = os.urandom(4)
    if n < 126:
        head = bytes((0x80 | op, 0x80 | n))
    elif n < 65536:
        head = struct.pack(">BBH", 0x80 | op, 0x80 | 126, n)
    else:
        head = struct.pack(">BBII", 0x80 | op, 0x80 | 127, 0, n)
    return head + mask, mask


def _xor(buf, start, mask, k):
    # RFC 6455 5.3: every client frame is masked, so intermediaries cannot be poisoned;
    # `k`: the payload's offset of buf[start], where the key's cycle stands.
    for i in range(start, len(buf)):
        buf[i] ^= mask[k & 3]
        k += 1


def _b64(data):
    return b2a_base64(data).rstrip(b"\n")


def _expected_accept(key):
    try:
        from hashlib import sha1
    except ImportError:
        return None
    if not callable(sha1):
        return None
    return _b64(sha1(key + _GUID).digest())


# Every attribute of WsClient, given first (compat.presize): open() adds a connection's own,
# which would otherwise grow the table at the first connection, on a heap fragmented by then.
# tests/unit/test_presize.py checks the list is complete.
WS_ATTRS = ("max_message", "ping_s", "pong_timeout_ms", "connect_timeout_ms", "_sm", "_small",
            "_rx", "_rn", "_msg", "_q", "_qn", "_sock", "_stream", "_poll", "_addr",
            "_addr_for", "state", "error", "close_code", "inbox", "url", "tls_context",
            "rx_bytes", "tx_bytes", "pings", "pongs", "_host", "_secure", "_key", "_protocol",
            "_deadline", "_heard", "_pinged")


class WsClient:
    """One WebSocket connection at a time. `max_message`: the largest text message taken;
    `rx_size`: the receive buffer kept (a larger frame borrows one of its size)."""

    def __init__(self, max_message=4096, ping_s=0, pong_timeout_ms=10000,
                 connect_timeout_ms=10000, socket_module=None, rx_size=_RX_SIZE):
        presize(self, WS_ATTRS)
        self.max_message = max_message
        self.ping_s = ping_s
        self.pong_timeout_ms = pong_timeout_ms
        self.connect_timeout_ms = connect_timeout_ms
        self._sm = socket_module or socket
        self._small = bytearray(rx_size)
        self._rx = self._small        # _small, or a frame's own while a large one is read
        self._rn = 0
        self._msg = None          # a fragmented text message being put together
        self._q = []              # what is to be sent: frames (or a frame's pieces), in order
        self._qn = 0              # ... and their bytes
        self._sock = None
        self._stream = None
        self._poll = None
        self._addr = None
        self._addr_for = None
        self.state = CLOSED
        self.error = None         # why the last connection ended (text)
        self.close_code = None
        self.inbox = []           # complete text messages (bytes), oldest first
        self.url = None
        self.tls_context = None   # set by the caller for wss:// (an ssl.SSLContext)
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.pings = 0
        self.pongs = 0

    # -- connection -----------------------------------------------------------------------
    def resolve(self, url):
        """The one blocking call: getaddrinfo for the URL's host (cached)."""
        _secure, host, port, _path = parse_url(url)
        if self._addr_for != (host, port):
            ai = self._sm.getaddrinfo(host, port, 0, self._sm.SOCK_STREAM)
            self._addr = ai[0][-1]
            self._addr_for = (host, port)
        return self._addr

    def open(self, url, now, protocol="ocpp1.6", user=None, password=None):
        """Start connecting (returns at once; step() carries on). Raises WsError (or
        ValueError for a bad URL) when the attempt cannot even start."""
        self.close_now(None)
        secure, host, port, path = parse_url(url)
        self.url = url
        self.error = None
        self.close_code = None
        addr = self.resolve(url)
        s = self._sm.socket(self._sm.AF_INET, self._sm.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(addr)
        except OSError as e:
            if not _would_block(e):
                s.close()
                raise WsError("connect: %s" % (e,))
        self._sock = s
        self._stream = s
        self._poll = select.poll()
        self._poll.register(s, select.POLLOUT | select.POLLIN)
        self._host = host
        self._secure = secure
        key = _b64(os.urandom(16))
        self._key = key
        hp = host if port == (443 if secure else 80) else "%s:%d" % (host, port)
        head = ("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Protocol: %s\r\n") % (path, hp, key.decode(), protocol)
        if password is not None:
            cred = _b64(("%s:%s" % (user or "", password)).encode()).decode()
            head += "Authorization: Basic %s\r\n" % cred
        self._q = []
        self._qn = 0
        self._push(head.encode() + b"\r\n")
        self._protocol = protocol.encode()
        self._rx = self._small
        self._rn = 0
        self._msg = None
        self.state = CONNECTING
        self._deadline = ticks_add(now, self.connect_timeout_ms)
        self._heard = now
        self._pinged = now

    def close(self, now, code=CLOSE_NORMAL, reason="closing"):
        """Send a close frame and wait (in later steps, at most a second) for the peer's."""
        if self.state == OPEN:
            self._frame(_OP_CLOSE, struct.pack(">H", code))
            self.state = CLOSING
            self.error = reason
            self._deadline = ticks_add(now, _CLOSE_WAIT_MS)
            self._flush()
        elif self.state != CLOSING:
            self.close_now(reason)

    def close_now(self, reason):
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None
        self._stream = None
        self._poll = None
        self._q = []
        self._qn = 0
        self._rx = self._small        # a large frame's buffer goes with the connection
        self._rn = 0
        self._msg = None
        if self.state != CLOSED and reason is not None:
            self.error = reason
        self.state = CLOSED

    @property
    def is_open(self):
        return self.state == OPEN

    # -- sending --------------------------------------------------------------------------
    def send_text(self, data):
        """Queue one text message (bytes or str). False when not open or the queue is full
        (the caller keeps it and tries again)."""
        if self.state != OPEN:
            return False
        if isinstance(data, str):
            data = data.encode()
        if self._qn + len(data) + 14 > _MAX_OUT:
            return False
        self._frame(_OP_TEXT, data)
        return True

    def send_pieces(self, make):
        """Queue one text message given in pieces: `make()` returns an iterable of str (or
        bytes) pieces, the same each time; it is called twice, for the length the frame's
        header needs and then for the bytes. The pieces are copied and masked into blocks
        of CHUNK bytes (the last one shorter), each made once at its final size (a block
        grown piece by piece left the garbage of its regrowths on a tight heap), so the
        message is never one string nor one block: on a fragmented heap a 2 KB answer needs
        no 2 KB run of free memory. When nothing is queued before it, each block is written
        to the socket as soon as it is made (what the socket does not take is queued), so
        the heap holds one block of the message at a time, not all of them.

        False as send_text. An exception (MemoryError) before any of the message's bytes
        reached the socket leaves the queue as it was; after, the frame is cut short on the
        wire and the connection is closed (a half frame would lose the stream)."""
        if self.state != OPEN:
            return False
        n = 0
        for piece in make():
            n += len(piece.encode() if isinstance(piece, str) else piece)
        if self._qn + n + 14 > _MAX_OUT:
            return False
        direct = not self._q
        sent = self.tx_bytes
        q0 = len(self._q)
        qn0 = self._qn
        try:
            self._pieces(make, n, direct)
        except OSError as e:
            # The socket failed while a block was written: as ws.step() does.
            self.close_now("socket: %s" % (e,))
        except Exception:
            if self.tx_bytes == sent:
                del self._q[q0:]
                self._qn = qn0
                raise
            self.close_now("a message cut short (out of memory)")
            raise
        return True

    def _pieces(self, make, n, direct):
        head, mask = _head(_OP_TEXT, n)
        chunks = None if direct else [head]
        if direct:
            self._out(head)
        k = 0                 # payload bytes in finished blocks
        cur = None            # the block being filled, `at` bytes of it so far
        at = 0
        for piece in make():
            b = piece.encode() if isinstance(piece, str) else piece
            m = len(b)
            i = 0
            while i < m:
                if cur is None:
                    if k >= n:
                        raise ValueError("pieces changed between the two calls")
                    cur = bytearray(min(CHUNK, n - k))
                    at = 0
                take = min(m - i, len(cur) - at)
                cur[at:at + take] = b if take == m else memoryview(b)[i:i + take]
                at += take
                i += take
                if at == len(cur):
                    _xor(cur, 0, mask, k)
                    k += at
                    if direct:
                        self._out(cur)
                    else:
                        chunks.append(cur)
                    cur = None
        if cur is not None or k != n:
            raise ValueError("pieces changed between the two calls")
        if not direct:
            # Queued only now, whole: a half frame would lose the stream from there on.
            for b in chunks:
                self._push(b)

    def _out(self, chunk):
        # A block of a message sent as it is made: to the socket when it takes it.
        self._push(chunk)
        self._flush()

    def _frame(self, op, payload):
        head, mask = _head(op, len(payload))
        h = len(head)
        buf = bytearray(h + len(payload))
        buf[:h] = head
        buf[h:] = payload
        _xor(buf, h, mask, 0)
        self._push(buf)

    def _push(self, chunk):
        self._q.append(chunk)
        self._qn += len(chunk)

    # -- the step ---------------------------------------------------------------------------
    def step(self, now):
        """Advance the connection; complete text messages land in `inbox`. Never waits."""
        st = self.state
        if st == CLOSED:
            return
        try:
            if st in (CONNECTING, TLS, HANDSHAKE) and ticks_diff(now, self._deadline) >= 0:
                raise WsError("%s timed out" % STATE_NAMES[st])
            if st == CLOSING and ticks_diff(now, self._deadline) >= 0:
                self.close_now(None)
                return
            ev = 0
            for _obj, flags in self._poll.poll(0):
                ev |= flags
            if ev & (select.POLLERR | select.POLLHUP) and st == CONNECTING:
                raise WsError("connect refused")
            if st == CONNECTING:
                if not ev & select.POLLOUT:
                    return
                self._connected()
                st = self.state
            if st == TLS:
                self._tls_step()
                return
            self._flush()
            if ev & (select.POLLIN | select.POLLHUP | select.POLLERR) or self._rn:
                self._read(now)
            if self.state == OPEN:
                self._keepalive(now)
        except WsError as e:
            self.close_now(e.args[0])
        except OSError as e:
            self.close_now("socket: %s" % (e,))

    def _connected(self):
        if self._secure:
            if self.tls_context is None:
                raise WsError("wss:// needs a TLS context")
            self._stream = self.tls_context.wrap_socket(
                self._sock, server_hostname=self._host, do_handshake_on_connect=False)
            self.state = TLS
        else:
            self.state = HANDSHAKE

    def _tls_step(self):
        s = self._stream
        try:
            shake = getattr(s, "do_handshake", None)    # CPython; MicroPython has none
            if shake is not None:
                shake()
            else:
                # MicroPython drives the handshake from the first write.
                if self._flush() is False:
                    return
        except OSError as e:
            if _would_block(e):
                return
            raise WsError("tls: %s" % (e,))
        self.state = HANDSHAKE

    def _flush(self):
        q = self._q
        write = self._stream.write if hasattr(self._stream, "write") else self._stream.send
        while q:
            chunk = q[0]
            try:
                n = write(chunk)
            except OSError as e:
                if _would_block(e):
                    return False
                raise
            if n is None:
                return False
            self.tx_bytes += n
            self._qn -= n
            if n < len(chunk):
                q[0] = chunk[n:]
                return False
            q.pop(0)
        return True

    def _recv_into(self, mv):
        s = self._stream
        try:
            # MicroPython's sockets (the ESP32's too) read with readinto; CPython's with recv_into.
            fn = getattr(s, "recv_into", None)
            return fn(mv) if fn is not None else s.readinto(mv)
        except OSError as e:
            if _would_block(e):
                return None
            raise

    def _read(self, now):
        while True:
            buf = self._rx            # a large frame may have swapped it
            if self._rn < len(buf):
                got = self._recv_into(memoryview(buf)[self._rn:])
                if got is None:
                    got = -1
                elif got == 0:
                    raise WsError("closed by peer" if self.state != CLOSING else "closed")
                else:
                    self._rn += got
                    self.rx_bytes += got
                    self._heard = now
            else:
                got = -1
            progressed = self._handshake_in() if self.state == HANDSHAKE else self._frames(now)
            if self.state == CLOSED:
                return
            if got < 0 and not progressed and self._rx is buf:
                return                # (a new buffer: read on into it)

    def _consume(self, n):
        buf = self._rx
        rest = self._rn - n
        small = self._small
        if buf is not small and rest <= len(small):
            # The large frame is read: back to the small buffer, the large one let go.
            if rest:
                small[:rest] = buf[n:self._rn]
            self._rx = small
        elif rest:
            buf[:rest] = buf[n:self._rn]
        self._rn = rest

    def _grow(self, size):
        """A receive buffer of `size` bytes holding what has been read so far; False when
        the heap has no such block (the caller fails the connection)."""
        try:
            buf = bytearray(size)
        except MemoryError:
            return False
        buf[:self._rn] = memoryview(self._rx)[:self._rn]
        self._rx = buf
        return True

    def _handshake_in(self):
        head = bytes(memoryview(self._rx)[:self._rn])
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if self._rn >= _MAX_HEADER:
                raise WsError("handshake: response head too long")
            if self._rn >= len(self._rx) and not self._grow(min(2 * self._rn, _MAX_HEADER)):
                raise WsError("handshake: no memory for the response head")
            return False
        lines = head[:end].split(b"\r\n")
        status = lines[0].split(b" ")
        if len(status) < 2 or not status[0].startswith(b"HTTP/1."):
            raise WsError("handshake: not HTTP")
        if status[1] != b"101":
            raise WsError("handshake: HTTP %s" % status[1].decode())
        fields = {}
        for line in lines[1:]:
            i = line.find(b":")
            if i > 0:
                fields[line[:i].strip().lower()] = line[i + 1:].strip()
        if fields.get(b"upgrade", b"").lower() != b"websocket":
            raise WsError("handshake: no websocket upgrade")
        want = _expected_accept(self._key)
        if want is not None and fields.get(b"sec-websocket-accept") != want:
            raise WsError("handshake: wrong Sec-WebSocket-Accept")
        if fields.get(b"sec-websocket-protocol") != self._protocol:
            # OCPP-J 3.1: without the agreed subprotocol there is no OCPP connection.
            raise WsError("handshake: subprotocol %s not agreed" % self._protocol.decode())
        self._consume(end + 4)
        self.state = OPEN
        return True

    def _frames(self, now):
        """Take every complete frame from the buffer. True when one was taken."""
        took = False
        while self.state in (OPEN, CLOSING):
            buf = self._rx
            n = self._rn
            if n < 2:
                return took
            b0 = buf[0]
            b1 = buf[1]
            if b1 & 0x80:
                self._fail(CLOSE_PROTOCOL, "masked server frame")
                return took
            if b0 & 0x70:
                self._fail(CLOSE_PROTOCOL, "reserved bits set")
                return took
            length = b1 & 0x7F
            hl = 2
            if length == 126:
                if n < 4:
                    return took
                length = (buf[2] << 8) | buf[3]
                hl = 4
            elif length == 127:
                if n < 10:
                    return took
                if buf[2] | buf[3] | buf[4] | buf[5] or buf[6] & 0x80:
                    length = self.max_message + 1
                else:
                    length = (buf[6] << 24) | (buf[7] << 16) | (buf[8] << 8) | buf[9]
                hl = 10
            if length > self.max_message:
                # Refused before the payload is read: a peer cannot make us buffer it.
                self._fail(CLOSE_TOO_BIG, "frame of %d bytes over %d" % (length, self.max_message))
                return took
            if n < hl + length:
                if hl + length > len(buf) and not self._grow(hl + length):
                    self._fail(CLOSE_TOO_BIG, "no memory for a frame of %d bytes" % length)
                return took
            payload = bytes(memoryview(buf)[hl:hl + length])
            self._consume(hl + length)
            took = True
            self._on_frame(b0 & 0x80, b0 & 0x0F, payload, now)
        return took

    def _on_frame(self, fin, op, payload, now):
        if op == _OP_PING:
            self._frame(_OP_PONG, payload)
            self._flush()
        elif op == _OP_PONG:
            self.pongs += 1
        elif op == _OP_CLOSE:
            code = (payload[0] << 8 | payload[1]) if len(payload) >= 2 else CLOSE_NORMAL
            self.close_code = code
            if self.state == OPEN:
                self._frame(_OP_CLOSE, struct.pack(">H", code))
                self._flush()
            self.close_now("closed by peer (%d)" % code)
        elif op == _OP_TEXT or op == _OP_CONT:
            if op == _OP_TEXT:
                if self._msg is not None:
                    self._fail(CLOSE_PROTOCOL, "text frame inside a fragmented message")
                    return
                if fin:
                    self.inbox.append(payload)
                    return
                self._msg = bytearray(payload)
                return
            if self._msg is None:
                self._fail(CLOSE_PROTOCOL, "continuation without a message")
                return
            if len(self._msg) + len(payload) > self.max_message:
                self._fail(CLOSE_TOO_BIG, "message over %d bytes" % self.max_message)
                return
            self._msg.extend(payload)
            if fin:
                self.inbox.append(bytes(self._msg))
                self._msg = None
        elif op == _OP_BINARY:
            self._fail(CLOSE_UNSUPPORTED, "binary message")
        else:
            self._fail(CLOSE_PROTOCOL, "unknown opcode %d" % op)

    def _fail(self, code, why):
        # RFC 6455 7.1.7: fail the connection, telling the peer why where it can still hear.
        self.close_code = code
        self._frame(_OP_CLOSE, struct.pack(">H", code))
        try:
            self._flush()
        except OSError:
            pass
        self.close_now(why)

    def _keepalive(self, now):
        if not self.ping_s:
            return
        silent = ticks_diff(now, self._heard)
        if silent >= self.ping_s * 1000 + self.pong_timeout_ms:
            raise WsError("no answer to ping")
        if silent >= self.ping_s * 1000 and ticks_diff(now, self._pinged) >= self.ping_s * 1000:
            self._pinged = now
            self.pings += 1
            self._frame(_OP_PING, b"")
            self._flush()

    def stats(self):
        return {"state": STATE_NAMES[self.state], "error": self.error, "rx": self.rx_bytes,
                "tx": self.tx_bytes, "pings": self.pings, "pongs": self.pongs}

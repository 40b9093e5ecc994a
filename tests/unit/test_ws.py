# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
# The WebSocket client (firmware/ws.py) against a raw TCP server played byte by byte by the
# test: the handshake it sends, masking, incremental parsing, ping, close, the size limit.
import os
import socket
import struct
import unittest
from binascii import a2b_base64, b2a_base64

from firmware.ws import CLOSED, HANDSHAKE, OPEN, WsClient, parse_url

try:
    from hashlib import sha1
except ImportError:
    sha1 = None


def _listen():
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    seed = os.urandom(2)
    for i in range(50):
        port = 20000 + ((seed[0] << 8 | seed[1]) + i * 977) % 30000
        try:
            ls.bind(socket.getaddrinfo("127.0.0.1", port)[0][-1])
            ls.listen(1)
            return ls, port
        except OSError:
            continue
    raise OSError("no free port")


class Peer:
    """The server end: accepts the client's connection and reads and writes raw bytes."""

    def __init__(self, client, protocol=b"ocpp1.6", status=b"101 Switching Protocols",
                 password="pw"):
        self.ls, port = _listen()
        self.client = client
        self.now = 0
        client.open("ws://127.0.0.1:%d/ocpp/CP-1" % port, 0, "ocpp1.6", "CP-1", password)
        self.conn, _addr = self.ls.accept()
        self.conn.settimeout(2)
        self.request = self.read_until(b"\r\n\r\n")
        if status is None:
            return
        key = b""
        for line in self.request.split(b"\r\n"):
            if line.lower().startswith(b"sec-websocket-key:"):
                key = line.split(b":", 1)[1].strip()
        accept = b"x"
        if sha1 is not None:
            accept = b2a_base64(sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()).strip()
        head = b"HTTP/1.1 " + status + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" \
            + b"Sec-WebSocket-Accept: " + accept + b"\r\n"
        if protocol:
            head += b"Sec-WebSocket-Protocol: " + protocol + b"\r\n"
        self.conn.send(head + b"\r\n")

    def step(self, n=3):
        for _ in range(n):
            self.now += 10
            self.client.step(self.now)

    def read_until(self, end):
        data = b""
        while not data.endswith(end):
            self.step(1)
            data += self.conn.recv(1)
        return data

    def read_exact(self, n):
        data = b""
        while len(data) < n:
            self.step(1)
            data += self.conn.recv(n - len(data))
        return data

    def read_frame(self):
        """(opcode, payload) of one client frame; checks that it is masked."""
        b0, b1 = self.read_exact(2)
        assert b1 & 0x80, "client frames must be masked"
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", self.read_exact(2))[0]
        mask = self.read_exact(4)
        data = bytearray(self.read_exact(n))
        for i in range(n):
            data[i] ^= mask[i & 3]
        return b0 & 0x0F, bytes(data)

    def close(self):
        self.conn.close()
        self.ls.close()


def frame(op, payload, fin=True, masked=False):
    head = bytearray([(0x80 if fin else 0) | op])
    n = len(payload)
    if n < 126:
        head.append((0x80 if masked else 0) | n)
    else:
        head.append((0x80 if masked else 0) | 126)
        head += struct.pack(">H", n)
    if masked:
        head += b"\x00\x00\x00\x00"
    return bytes(head) + payload


class Handshake(unittest.TestCase):
    def test_request_names_the_subprotocol_and_basic_auth(self):
        c = WsClient()
        p = Peer(c)
        try:
            req = p.request
            self.assertTrue(req.startswith(b"GET /ocpp/CP-1 HTTP/1.1\r\n"))
            self.assertIn(b"\r\nSec-WebSocket-Protocol: ocpp1.6\r\n", req)
            self.assertIn(b"\r\nSec-WebSocket-Version: 13\r\n", req)
            auth = [l for l in req.split(b"\r\n") if l.startswith(b"Authorization: Basic ")]
            self.assertEqual(a2b_base64(auth[0][21:]), b"CP-1:pw")
            p.step()
            self.assertEqual(c.state, OPEN)
        finally:
            p.close()

    def test_without_a_password_no_authorization_header(self):
        c = WsClient()
        p = Peer(c, password=None)
        try:
            self.assertFalse(b"Authorization" in p.request)
        finally:
            p.close()

    def test_refused_upgrade_closes_with_the_status(self):
        c = WsClient()
        p = Peer(c, status=b"401 Unauthorized")
        try:
            p.step()
            self.assertEqual(c.state, CLOSED)
            self.assertEqual(c.error, "handshake: HTTP 401")
        finally:
            p.close()

    def test_subprotocol_not_agreed_closes(self):
        c = WsClient()
        p = Peer(c, protocol=None)
        try:
            p.step()
            self.assertEqual(c.state, CLOSED)
            self.assertIn("subprotocol", c.error)
        finally:
            p.close()

    def test_response_in_pieces_waits_for_the_whole_head(self):
        c = WsClient()
        p = Peer(c, status=None)
        try:
            for ch in b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\n":
                p.conn.send(bytes([ch]))
                p.step(1)
            self.assertEqual(c.state, HANDSHAKE)
        finally:
            p.close()


class Frames(unittest.TestCase):
    def setUp(self):
        self.c = WsClient(max_message=200)
        self.p = Peer(self.c)
        self.p.step()
        self.assertEqual(self.c.state, OPEN)

    def tearDown(self):
        self.p.close()

    def test_a_message_sent_byte_by_byte_arrives_once_whole(self):
        data = frame(1, b'[2,"1","Heartbeat",{}]')
        for i, ch in enumerate(data):
            self.p.conn.send(bytes([ch]))
            self.p.step(1)
            if i < len(data) - 1:
                self.assertEqual(self.c.inbox, [])
        self.assertEqual(self.c.inbox, [b'[2,"1","Heartbeat",{}]'])

    def test_two_frames_in_one_read_are_two_messages(self):
        self.p.conn.send(frame(1, b"a") + frame(1, b"b" * 130))
        self.p.step()
        self.assertEqual(self.c.inbox, [b"a", b"b" * 130])

    def test_fragments_make_one_message(self):
        self.p.conn.send(frame(1, b"one ", fin=False) + frame(9, b"p") + frame(0, b"two ", fin=False)
                         + frame(0, b"three"))
        self.p.step()
        self.assertEqual(self.c.inbox, [b"one two three"])
        self.assertEqual(self.p.read_frame(), (10, b"p"))     # the ping in between answered

    def test_sent_text_is_masked_and_unmasks_to_the_message(self):
        self.assertTrue(self.c.send_text('[3,"7",{}]'))
        self.assertTrue(self.c.send_text(b"x" * 150))
        self.assertEqual(self.p.read_frame(), (1, b'[3,"7",{}]'))
        self.assertEqual(self.p.read_frame(), (1, b"x" * 150))

    def test_ping_answered_with_its_payload(self):
        self.p.conn.send(frame(9, b"are you there"))
        self.p.step()
        self.assertEqual(self.p.read_frame(), (10, b"are you there"))
        self.assertEqual(self.c.state, OPEN)

    def test_frame_over_the_limit_closes_1009_before_its_payload(self):
        self.p.conn.send(frame(1, b"y" * 201)[:4])      # the header alone says too big
        self.p.step()
        self.assertEqual(self.c.state, CLOSED)
        self.assertEqual(self.c.close_code, 1009)
        self.assertEqual(self.p.read_frame(), (8, b"\x03\xf1"))

    def test_fragmented_message_over_the_limit_closes_1009(self):
        self.p.conn.send(frame(1, b"z" * 150, fin=False) + frame(0, b"z" * 60))
        self.p.step()
        self.assertEqual((self.c.state, self.c.close_code), (CLOSED, 1009))
        self.assertEqual(self.c.inbox, [])

    def test_masked_server_frame_is_a_protocol_error(self):
        self.p.conn.send(frame(1, b"m", masked=True))
        self.p.step()
        self.assertEqual((self.c.state, self.c.close_code), (CLOSED, 1002))

    def test_binary_message_is_refused_1003(self):
        self.p.conn.send(frame(2, b"\x00\x01"))
        self.p.step()
        self.assertEqual((self.c.state, self.c.close_code), (CLOSED, 1003))

    def test_peer_close_is_answered_and_ends_the_connection(self):
        self.p.conn.send(frame(8, b"\x03\xe9"))
        self.p.step()
        self.assertEqual(self.c.state, CLOSED)
        self.assertEqual(self.p.read_frame(), (8, b"\x03\xe9"))

    def test_peer_gone_ends_the_connection(self):
        self.p.conn.close()
        self.p.step()
        self.assertEqual(self.c.state, CLOSED)
        self.assertFalse(self.c.send_text("late"))

    def test_silence_past_the_ping_interval_pings_then_gives_up(self):
        c = self.c
        c.ping_s = 1
        c.pong_timeout_ms = 500
        self.p.step(110)
        self.assertEqual(self.p.read_frame(), (9, b""))
        self.assertEqual(c.state, OPEN)
        self.p.step(60)
        self.assertEqual(c.state, CLOSED)
        self.assertEqual(c.error, "no answer to ping")


class Buffers(unittest.TestCase):
    """The small receive buffer: a larger frame borrows one of its size while it is read,
    and the small one is back once it is taken; pieces make the same frame as one text."""

    def setUp(self):
        self.c = WsClient(max_message=1000, rx_size=64)
        self.p = Peer(self.c)        # the server's response head (~130 B) is over 64 B
        self.p.step()
        self.assertEqual(self.c.state, OPEN)
        self.assertTrue(self.c._rx is self.c._small)

    def tearDown(self):
        self.p.close()

    def test_a_frame_larger_than_the_buffer_borrows_one_and_gives_it_back(self):
        c = self.c
        big = b"[" + b"7" * 700 + b"]"
        data = frame(1, big) + frame(1, b"after")
        self.p.conn.send(data[:100])
        self.p.step()
        self.assertEqual(len(c._rx), 4 + len(big))        # header + payload, no more
        self.p.conn.send(data[100:])
        self.p.step()
        self.assertEqual(c.inbox, [big, b"after"])
        self.assertTrue(c._rx is c._small)
        self.assertEqual(c._rn, 0)
        self.p.conn.send(frame(1, b"small"))
        self.p.step()
        self.assertEqual(c.inbox[-1], b"small")
        self.assertTrue(c._rx is c._small)

    def test_two_large_frames_in_one_read(self):
        a = b"a" * 300
        b = b"b" * 500
        self.p.conn.send(frame(1, a) + frame(1, b))
        self.p.step()
        self.assertEqual(self.c.inbox, [a, b])
        self.assertTrue(self.c._rx is self.c._small)

    def test_a_closed_connection_gives_back_the_large_buffer(self):
        self.p.conn.send(frame(1, b"c" * 500)[:200])
        self.p.step()
        self.assertFalse(self.c._rx is self.c._small)
        self.c.close_now("test")
        self.assertTrue(self.c._rx is self.c._small)
        self.assertEqual(self.c._rn, 0)

    def test_pieces_make_the_frame_one_text_makes(self):
        parts = ['[3,"9",{"k":[', '"\u00e9", "é"', "," * 200, "]}]"]
        self.assertTrue(self.c.send_pieces(lambda: iter(parts)))
        self.assertTrue(self.c.send_text("".join(parts)))
        one = self.p.read_frame()
        self.assertEqual(one, (1, "".join(parts).encode()))
        self.assertEqual(self.p.read_frame(), one)

    def test_pieces_are_gathered_into_blocks_of_bounded_size(self):
        # Behind a frame still queued, the message's blocks are queued whole.
        from firmware.ws import CHUNK
        c = self.c
        c.send_text("first")
        parts = ["p%03d," % i for i in range(300)] + ["L" * (CHUNK + 40), "end"]
        self.assertTrue(c.send_pieces(lambda: iter(parts)))
        sizes = [len(b) for b in c._q[1:]]
        self.assertTrue(max(sizes) <= CHUNK + 40, sizes)
        self.assertTrue(len(sizes) <= 2 + len("".join(parts)) // (CHUNK - 8), sizes)
        self.assertEqual(self.p.read_frame(), (1, b"first"))
        self.assertEqual(self.p.read_frame(), (1, "".join(parts).encode()))

    def test_pieces_go_to_the_socket_block_by_block_when_nothing_is_queued(self):
        # Each block is written as it is made: the heap holds one block of the message,
        # not all of them.
        from firmware.ws import CHUNK
        c = self.c
        held = []
        push = c._push

        def watched(chunk):
            push(chunk)
            held.append((len(chunk), len(c._q)))
        c._push = watched
        parts = ["p%03d," % i for i in range(300)] + ["L" * (CHUNK + 40), "end"]
        self.assertTrue(c.send_pieces(lambda: iter(parts)))
        sizes = [n for n, _q in held]
        self.assertTrue(max(sizes) <= CHUNK + 40, sizes)
        self.assertTrue(len(sizes) <= 2 + len("".join(parts)) // (CHUNK - 8), sizes)
        self.assertEqual(max(q for _n, q in held), 1, held)     # one block at a time
        self.assertEqual(c._q, [])
        self.assertEqual(self.p.read_frame(), (1, "".join(parts).encode()))

    def test_pieces_that_fail_after_some_were_sent_close_the_connection(self):
        c = self.c
        calls = []

        def make():
            calls.append(1)
            yield "x" * 600
            if len(calls) > 1:
                raise MemoryError("out of heap")
            yield "y" * 600
        with self.assertRaises(MemoryError):
            c.send_pieces(make)
        # Part of the frame is on the wire: nothing may follow it on this connection.
        self.assertEqual(c.state, CLOSED)
        self.assertEqual(c._q, [])
        self.assertFalse(c.send_text("after"))

    def test_pieces_that_fail_leave_the_queue_as_it_was(self):
        c = self.c
        c.send_text("queued")
        before = list(c._q)
        calls = []

        def make():
            calls.append(1)
            yield "abc"
            if len(calls) > 1:
                raise MemoryError("out of heap")
            yield "def"
        with self.assertRaises(MemoryError):
            c.send_pieces(make)
        self.assertEqual(c._q, before)
        self.assertEqual(self.p.read_frame(), (1, b"queued"))


class Urls(unittest.TestCase):
    def test_parse(self):
        self.assertEqual(parse_url("ws://10.0.0.2:8180/steve/websocket/CentralSystemService/CP1"),
                         (False, "10.0.0.2", 8180, "/steve/websocket/CentralSystemService/CP1"))
        self.assertEqual(parse_url("wss://cs.example.com/ocpp"),
                         (True, "cs.example.com", 443, "/ocpp"))
        self.assertEqual(parse_url("ws://h"), (False, "h", 80, "/"))
        for bad in ("http://h/", "ws://:80/", "ws://h:x/", "ws://h:70000/"):
            with self.assertRaises(ValueError):
                parse_url(bad)


if __name__ == "__main__":
    unittest.main()

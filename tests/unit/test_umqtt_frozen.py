# The umqtt.simple behaviour firmware/mqtt_link.py depends on, checked on the copy the ESP32
# image freezes (micropython-lib at MicroPython v1.28.0: umqtt.simple 1.7.0; frozen in the
# stand-in, from build/standin/lib on CPython). If a new MicroPython pins a umqtt.simple that
# behaves otherwise, these fail and name the quirk.
import unittest

from umqtt.simple import MQTTClient


class FakeSock:
    """Non-blocking socket: read() returns None when nothing is buffered, as umqtt expects."""

    def __init__(self, data=b""):
        self.rx = bytearray(data)
        self.tx = bytearray()
        self.blocking = []

    def read(self, n):
        if not self.rx:
            return None
        out = bytes(self.rx[:n])
        self.rx = self.rx[n:]
        return out

    def write(self, b, n=None):
        self.tx += bytes(b if n is None else b[:n])
        return len(b) if n is None else n

    def setblocking(self, flag):
        self.blocking.append(flag)


def publish(topic, payload, qos=0, pid=1):
    body = bytes((len(topic) >> 8, len(topic) & 0xFF)) + topic
    if qos:
        body += bytes((pid >> 8, pid & 0xFF))
    body += payload
    return bytes((0x30 | qos << 1, len(body))) + body


class FrozenUmqtt(unittest.TestCase):
    def client(self, data):
        c = MQTTClient(b"cp-test", "127.0.0.1")
        c.sock = FakeSock(data)
        self.got = []
        c.set_callback(lambda t, m: self.got.append((bytes(t), bytes(m))))
        return c

    def test_check_msg_returns_the_publish_op_after_the_callback(self):
        # 1.3.4 returned None here; 1.4 and later return the op (0x30 | flags).
        c = self.client(publish(b"cp/cp-test/cmd", b'{"cmd":"stop"}'))
        self.assertEqual(c.check_msg(), 0x30)
        self.assertEqual(self.got, [(b"cp/cp-test/cmd", b'{"cmd":"stop"}')])

    def test_a_qos1_publish_is_acked_and_its_op_returned(self):
        c = self.client(publish(b"t", b"x", qos=1, pid=0x1234))
        self.assertEqual(c.check_msg(), 0x32)
        self.assertEqual(bytes(c.sock.tx), b"\x40\x02\x12\x34")

    def test_nothing_and_pingresp_return_none(self):
        c = self.client(b"")
        self.assertIsNone(c.check_msg())
        c = self.client(b"\xd0\x00")
        self.assertIsNone(c.check_msg())
        self.assertEqual(len(c.sock.rx), 0)

    def test_other_packets_return_their_op_with_the_body_unread(self):
        # mqtt_link reads SUBACK/PUBACK bodies itself (_control_packet).
        c = self.client(b"\x90\x03\x00\x01\x00")
        self.assertEqual(c.check_msg(), 0x90)
        self.assertEqual(bytes(c.sock.rx), b"\x03\x00\x01\x00")

    def test_check_msg_leaves_the_socket_blocking(self):
        # ... which on the ESP32 means no timeout at all: the link sets its own again.
        c = self.client(b"")
        c.check_msg()
        self.assertEqual(c.sock.blocking, [False, True])


if __name__ == "__main__":
    unittest.main()

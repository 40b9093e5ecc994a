# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py), with the fake
# ESP32 `machine`/`network` and a real UDP socket on loopback as the time server.
import socket
import struct
import time
import unittest

import machine
import network

from drivers.wifi import NTP_TO_1970, NTP_TO_2000, Sntp, Wifi


_ports = {}


def _server():
    # The unix port's sockets have no getsockname(): bind a free port found by trying.
    import os
    base = 20000 + (os.urandom(2)[0] << 7)
    for port in range(base, base + 200):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind(socket.getaddrinfo("127.0.0.1", port)[0][-1])
        except OSError:
            s.close()
            continue
        s.setblocking(False)
        _ports[id(s)] = port
        return s
    raise AssertionError("no free UDP port")


def _port(s):
    return _ports[id(s)]


def _answer(server, ntp_seconds):
    for _ in range(200):
        try:
            req, peer = server.recvfrom(48)
            break
        except OSError:
            time.sleep(0.005)
    else:
        raise AssertionError("no SNTP request arrived")
    assert req[0] & 0x07 == 3                   # mode 3: client
    reply = bytearray(48)
    reply[0] = 0x1C                             # version 3, mode 4: server
    reply[40:44] = struct.pack(">I", ntp_seconds)
    server.sendto(reply, peer)


def _epoch():
    return NTP_TO_2000 if time.gmtime(0)[0] == 2000 else NTP_TO_1970


class SntpExchange(unittest.TestCase):
    def test_request_then_reply_in_a_later_poll(self):
        srv = _server()
        try:
            n = Sntp("127.0.0.1", _port(srv))
            self.assertTrue(n.start(0))
            self.assertIsNone(n.poll(10))               # nothing yet: no waiting
            t = _epoch() + 1000000000
            _answer(srv, t)
            got = None
            for i in range(200):
                got = n.poll(20 + i)
                if got is not None:
                    break
                time.sleep(0.005)
            self.assertEqual(got, 1000000000)
            self.assertFalse(n.busy)
        finally:
            srv.close()

    def test_silent_server_times_out_and_counts(self):
        srv = _server()
        try:
            n = Sntp("127.0.0.1", _port(srv), timeout_ms=2000)
            n.start(0)
            self.assertIsNone(n.poll(1999))
            self.assertTrue(n.busy)
            self.assertIsNone(n.poll(2000))
            self.assertFalse(n.busy)
            self.assertEqual(n.failures, 1)
        finally:
            srv.close()


class WifiLink(unittest.TestCase):
    def setUp(self):
        machine.sim.reset()

    def test_connect_is_started_and_retried_while_down(self):
        w = Wifi("site", "secret", ntp_server="", retry_ms=15000)
        self.assertFalse(w.step(0))
        self.assertEqual(w.attempts, 1)
        self.assertFalse(w.step(14999))
        self.assertEqual(w.attempts, 1)
        # ports/esp32/network_wlan.c: while a requested connect has no failure, status() is
        # STAT_CONNECTING and the port itself reconnects: the driver leaves it alone.
        self.assertFalse(w.step(15000))
        self.assertEqual(w.attempts, 1)
        machine.sim.wifi_disconn_reason = network.STAT_NO_AP_FOUND
        w.step(30000)
        self.assertEqual(w.attempts, 2)
        machine.sim.wifi_connected = True
        self.assertTrue(w.step(31000))
        self.assertEqual(w.attempts, 2)

    def test_clock_is_set_once_connected(self):
        srv = _server()
        try:
            w = Wifi("site", "secret", ntp_server="127.0.0.1")
            w.sntp.port = w.sntp.resolver.port = _port(srv)
            machine.sim.wifi_connected = True
            w.step(0)                                   # request sent
            self.assertTrue(w.sntp.busy)
            secs_2026 = 1798761600 - 946684800 if time.gmtime(0)[0] == 2000 else 1798761600
            _answer(srv, _epoch() + secs_2026)          # 2027-01-01 00:00 UTC
            for i in range(200):
                w.step(10 + i)
                if w.time_set:
                    break
                time.sleep(0.005)
            self.assertTrue(w.time_set)
            self.assertEqual(machine.RTC().datetime()[:3], (2027, 1, 1))
        finally:
            srv.close()

    def test_empty_ssid_is_refused(self):
        with self.assertRaises(ValueError):
            Wifi("", "x")

"""Wi-Fi station link and network time, kept up from the control loop without blocking.

`step(now_ms)` is called every loop iteration (Board.network_step). The ESP32's
WLAN.connect() only starts the association and returns; the link is watched with
isconnected()/status() and a new attempt is started every `retry_ms` while it is down
(never while one is in progress). Once connected, the clock is set by SNTP over a
non-blocking UDP socket: the request goes out in one step, the reply is read in a later
one, so no step waits on the network (ntptime.settime() would block up to its timeout).
The server may be a name: it is looked up in a thread by firmware.resolver (getaddrinfo
blocks for seconds when DNS is down) and the address cached; a request goes out once it is
known. The clock is set again every `resync_ms`.
"""
import struct
import time

import machine
import network
import socket

from firmware.compat import const, ticks_add, ticks_diff
from firmware.resolver import Resolver

_NTP_PORT = const(123)
_NTP_TIMEOUT_MS = const(2000)
_LOOKUP_POLL_MS = const(500)
# Seconds from 1900-01-01 (NTP) to 2000-01-01 (the ESP32 epoch) and to 1970-01-01.
NTP_TO_2000 = 3155673600
NTP_TO_1970 = 2208988800


def _epoch_offset():
    return NTP_TO_2000 if time.gmtime(0)[0] == 2000 else NTP_TO_1970


class Sntp:
    """One SNTP exchange at a time; `poll()` returns the server's seconds since the port's
    epoch once the reply is in, else None."""

    def __init__(self, server, port=_NTP_PORT, timeout_ms=_NTP_TIMEOUT_MS, spawn=-1, sf=None):
        self.server = server
        self.port = port
        self.timeout_ms = timeout_ms
        self._sf = sf = sf or socket      # the socket module, or a test's stand-in
        self._sock = None
        self.resolver = Resolver(server, port, sf.SOCK_DGRAM, getaddrinfo=sf.getaddrinfo,
                                 spawn=spawn)
        self._sent = 0
        self._req = bytearray(48)
        self._req[0] = 0x1B             # LI 0, version 3, mode 3 (client)
        self.failures = 0

    def start(self, now_ms):
        """Send a request; False when none went out (the address is not known yet, or the
        send failed)."""
        self.close()
        ai = self.resolver.get(now_ms)
        if ai is None:
            return False                # not known yet (resolver.failures counts DNS errors)
        try:
            s = self._sf.socket(ai[0], self._sf.SOCK_DGRAM)
            s.setblocking(False)
            s.sendto(self._req, ai[-1])
        except OSError:
            self.failures += 1
            return False
        self._sock = s
        self._sent = now_ms
        return True

    def poll(self, now_ms):
        s = self._sock
        if s is None:
            return None
        try:
            data = s.recv(48)
        except OSError:
            data = None                 # EAGAIN: nothing yet
        if data is not None and len(data) >= 48 and data[0] & 0x07 == 4:
            self.close()
            return struct.unpack(">I", data[40:44])[0] - _epoch_offset()
        if data is not None or ticks_diff(now_ms, self._sent) >= self.timeout_ms:
            self.failures += 1
            self.close()
            self.resolver.refresh()     # a pool name may give a server that answers
        return None

    @property
    def busy(self):
        return self._sock is not None

    def close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None


class Wifi:
    def __init__(self, ssid, password, ntp_server="pool.ntp.org", retry_ms=15000,
                 resync_ms=86400000, wlan=None, spawn=-1, sf=None):
        if not ssid:
            raise ValueError("wifi: ssid must not be empty")
        self.wlan = wlan if wlan is not None else network.WLAN(network.STA_IF)
        self.wlan.active(True)
        self.ssid = ssid
        self.password = password
        self.retry_ms = retry_ms
        self.resync_ms = resync_ms
        self.sntp = Sntp(ntp_server, spawn=spawn, sf=sf) if ntp_server else None
        self.attempts = 0
        self.time_set = False
        self._next_attempt = None
        self._next_sync = None

    def step(self, now_ms):
        """Bounded, non-blocking. Returns True while the link is up."""
        w = self.wlan
        if not w.isconnected():
            if self.sntp is not None:
                self.sntp.close()
            due = self._next_attempt is None or ticks_diff(now_ms, self._next_attempt) >= 0
            if due and w.status() != network.STAT_CONNECTING:
                self.attempts += 1
                try:
                    w.connect(self.ssid, self.password)
                except OSError:
                    pass                # retried after retry_ms
                self._next_attempt = ticks_add(now_ms, self.retry_ms)
            return False
        self._time(now_ms)
        return True

    def _time(self, now_ms):
        n = self.sntp
        if n is None:
            return
        if n.busy:
            secs = n.poll(now_ms)
            if secs is not None:
                _set_rtc(secs)
                self.time_set = True
                self._next_sync = ticks_add(now_ms, self.resync_ms)
            elif not n.busy:
                self._next_sync = ticks_add(now_ms, self.retry_ms)   # failed: try again soon
        elif self._next_sync is None or ticks_diff(now_ms, self._next_sync) >= 0:
            started = n.start(now_ms)
            # While the name is being looked up, ask again soon rather than in retry_ms.
            soon = not started and n.resolver.busy
            self._next_sync = ticks_add(now_ms, _LOOKUP_POLL_MS if soon else self.retry_ms)


def _set_rtc(secs):
    t = time.gmtime(secs)
    # RTC.datetime: (year, month, day, weekday, hours, minutes, seconds, subseconds)
    machine.RTC().datetime((t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0))

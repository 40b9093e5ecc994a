"""UTC timestamps for OCPP: seconds since 1970 <-> ISO 8601 ("2026-01-05T08:00:00Z").

Plain integer arithmetic (H. Hinnant's civil-date algorithms), so it runs alike on every
port whatever its `time` epoch; the values above 2**30 are long ints on the ESP32, which
is why nothing here runs in the safety tick.
"""
from firmware.civil import civil
from firmware.compat import const, ticks_add, ticks_diff

_WATCH_MS = const(1000)           # how often Watch looks at the clock
_WATCH_SPAN_MS = const(3600000)   # its reference is taken afresh this often (ticks wrap, drift)


def iso(secs):
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % civil(secs)


def parse(text):
    """Seconds since 1970 of an ISO 8601 date-time with a zone (Z or +hh:mm); fractions of a
    second are dropped. ValueError when it is not one."""
    if not isinstance(text, str) or len(text) < 20 or text[4] != "-" or text[10] != "T":
        raise ValueError("not an ISO 8601 date-time")
    y = int(text[0:4])
    m = int(text[5:7])
    d = int(text[8:10])
    secs = int(text[11:13]) * 3600 + int(text[14:16]) * 60 + int(text[17:19])
    rest = text[19:]
    if rest.startswith("."):
        i = 1
        while i < len(rest) and rest[i].isdigit():
            i += 1
        rest = rest[i:]
    if rest in ("Z", "z"):
        off = 0
    elif len(rest) == 6 and rest[0] in "+-" and rest[3] == ":":
        off = int(rest[1:3]) * 3600 + int(rest[4:6]) * 60
        if rest[0] == "-":
            off = -off
    else:
        raise ValueError("no time zone")
    if not (1 <= m <= 12 and 1 <= d <= 31):
        raise ValueError("bad date")
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    mp = m + 9 if m <= 2 else m - 3
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    return days * 86400 + secs - off


class Watch:
    """Notices that the clock was set (NTP, or the central system's time taking over):
    once a second it compares the clock with what the ticks say it should show by now. A
    second either way is the clock's own rounding; more is a jump. Smart Charging and the
    clock-aligned meter values plan in ticks from a clock reading, so a jump tells them to
    look again (one clock read a second, and only while one of them needs the time)."""

    def __init__(self):
        self._t = None            # the clock (seconds) at ticks self._at
        self._at = 0
        self._next = 0

    def due(self, now):
        return ticks_diff(now, self._next) >= 0

    def jumped(self, t, now):
        """Called when due() with the clock's reading `t`: True when it was set since."""
        self._next = ticks_add(now, _WATCH_MS)
        ref = self._t
        jump = False
        if ref is not None:
            age = ticks_diff(now, self._at)
            d = t - ref - age // 1000
            jump = age < 0 or d < 0 or d > 1
            if not jump and age < _WATCH_SPAN_MS:
                return False
        self._t = t
        self._at = now
        return jump

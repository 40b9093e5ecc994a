"""Helpers of diag's commands that `import diag` does not need: the status lines' texts
and what the commands of diag_check.py and diag_records.py share. Imported on first use, so
that diag's own module table stays small (a block a fragmented heap still has;
docs/performance.md, Heap); the settings (echo, ask, ...) are diag's."""
import diag as _d
from firmware import diagfmt as _fmt
from firmware.compat import ticks_diff


def _error(text):
    for line in _fmt.wrap(text, "  "):
        _d.echo(line)


def _confirm(question):
    """True when the technician answers yes."""
    q = question + " [y/N] "
    try:
        answer = _d.ask(q) if _d.ask is not None else input(q)
    except (EOFError, KeyboardInterrupt):
        answer = ""
    return str(answer).strip().lower() in ("y", "yes")


def _is_bool(v):
    return v is True or v is False


def _is_int(v):
    return isinstance(v, int) and not _is_bool(v)


def _store():
    st = _d._station()
    return st.store if st is not None else _d._service().store


def _stopped_text():
    bi = _d._bootinfo()
    if bi is not None and getattr(bi, "interrupted_stop", False):
        return "STOPPED (Ctrl-C), contactor open; machine.reset() resumes"
    return None


def _blocking_names(st):
    from firmware import faults as _faults
    return _faults.names(st.faults.blocking())


def _link_text(link):
    if link is None:
        return None
    # The link's state and last error, not its stats(): a dict of 32 counters to read two.
    from firmware.mqtt_link import STATE_NAMES
    text = STATE_NAMES[link.state]
    why = getattr(link, "disabled_reason", None)
    if why:
        text += " (will not connect: %s)" % why
    elif link.last_error:
        text += " (last error: %s)" % link.last_error
    return text


def _wifi_text(board, cfg):
    if not cfg["wifi_ssid"]:
        return "not configured (wifi_ssid empty)"
    w = getattr(board, "wifi", None)
    if w is None:
        return "%s: no Wi-Fi on this board" % cfg["wifi_ssid"]
    try:
        wlan = w.wlan
        if not wlan.isconnected():
            return "%s: not connected (%d attempts)" % (w.ssid, w.attempts)
        ip = wlan.ifconfig()[0]
        try:
            rssi = "%d dBm" % wlan.status("rssi")
        except Exception:
            rssi = "RSSI unknown"
        return "%s: %s, %s" % (w.ssid, ip, rssi)
    except Exception as e:      # a driver without these calls: say so, do not fail
        return "%s: %s" % (cfg["wifi_ssid"], e)


def _clock_text(board):
    t = board.wall_time()
    if t is None:
        return "not set (times are boot number + uptime)"
    return _fmt.utc_text(t) + " UTC"


def _crash_line(board):
    # The ESP32 board reads drivers.bootinfo's crash file; the simulator's its own record.
    crash = board.last_crash()
    if crash:
        return crash.strip().split("\n")[-1]
    return None


def _uptime_ms(st, now):
    # The station counts its uptime (ticks_diff alone wraps after 6 days); the service-mode
    # stand-in has only its start time.
    up = getattr(st, "uptime_s", None)
    return up * 1000 if up is not None else ticks_diff(now, st.started_ms)


class Both:
    """Two dicts read as one, `first` before `second` (diag.status: its lines over the
    station's status report), without a table of both."""

    def __init__(self, first, second):
        self.first = first
        self.second = second

    def __contains__(self, key):
        return key in self.first or key in self.second

    def __getitem__(self, key):
        return self.first[key] if key in self.first else self.second[key]

    def get(self, key, default=None):
        if key in self.first:
            return self.first[key]
        return self.second.get(key, default)

"""Text for the technician's REPL diagnostics (diag.py): plain data in, lines out.

Hardware-free and side-effect free: every function takes numbers, dicts and tuples (what the
station, the fault table and the meter service already report) and returns a list of str
lines, each at most WIDTH columns, because a serial terminal is usually 80 wide and wraps
(or cuts) anything longer. Integer arithmetic only: the values are mA, mV, Wh, ms.
"""
from firmware import civil as _civil
from firmware import faults as _faults

WIDTH = 80
_ELLIPSIS = "..."

# What each pilot level means, for pilot() (IEC 61851-1 Table A.3).
LEVEL_TEXT = (
    "A: no EV connected",
    "B: EV connected, not requesting",
    "C: EV requests charging",
    "D: EV requests charging with ventilation",
    "E: CP shorted to PE (or EVSE unpowered)",
    "F: -12 V (EVSE not available)",
    "fault: a level no EV circuit can produce",
    "diode fault: EV diode missing or shorted",
    "between bands (no level)",
)


# -- basics -----------------------------------------------------------------------------------
def fit(line, width=WIDTH):
    """`line` cut to `width` columns (ending in ... when cut)."""
    if len(line) <= width:
        return line
    return line[:width - len(_ELLIPSIS)] + _ELLIPSIS


def wrap(text, indent="", width=WIDTH):
    """Word-wrap `text` into lines of at most `width` columns, each starting with `indent`."""
    lines = []
    room = width - len(indent)
    line = ""
    for word in text.split():
        while len(word) > room:               # a word longer than a line: hard split
            if line:
                lines.append(indent + line)
                line = ""
            lines.append(indent + word[:room])
            word = word[room:]
        if not line:
            line = word
        elif len(line) + 1 + len(word) <= room:
            line = line + " " + word
        else:
            lines.append(indent + line)
            line = word
    if line:
        lines.append(indent + line)
    return lines


def pairs(items, indent="  ", width=WIDTH):
    """("label", value) pairs as aligned "label  value" lines."""
    if not items:
        return []
    w = 0
    for label, _ in items:
        if len(label) > w:
            w = len(label)
    out = []
    for label, value in items:
        out.append(fit(indent + label + " " * (w - len(label)) + "  " + str(value), width))
    return out


def _div(n, d, decimals):
    # n / d with `decimals` digits, in integers (rounded half away from zero).
    scale = 10 ** decimals
    neg = (n < 0) != (d < 0)
    n = abs(n)
    d = abs(d)
    q = (n * scale * 2 + d) // (2 * d)
    whole = q // scale
    s = str(whole)
    if decimals:
        frac = str(q % scale)
        s = s + "." + "0" * (decimals - len(frac)) + frac
    if neg and q:
        s = "-" + s
    return s


def volts(mv):
    """Millivolts as "+8.95 V"."""
    if mv is None:
        return "-"
    s = _div(mv, 1000, 2)
    return ("+" + s if mv > 0 else s) + " V"


def amps(ma):
    if ma is None:
        return "-"
    return _div(ma, 1000, 1) + " A"


def kwh(wh):
    if wh is None:
        return "-"
    return _div(wh, 1000, 3) + " kWh"


def seconds(ms):
    """A duration in ms as "12.3 s" (or "2h03m" / "5d02h" when long)."""
    if ms is None:
        return "-"
    if ms < 0:
        return "-" + seconds(-ms)
    s = ms // 1000
    if s < 600:
        return _div(ms, 1000, 1) + " s"
    if s < 86400:
        return "%dh%02dm" % (s // 3600, s % 3600 // 60)
    return "%dd%02dh" % (s // 86400, s % 86400 // 3600)


def age(now_ms, t_ms, diff):
    """How long before `now_ms` the tick time `t_ms` was, as "-12.3 s" (`diff` is
    ticks_diff, passed in so this module stays free of the clock)."""
    if t_ms is None:
        return "-"
    return "-" + seconds(diff(now_ms, t_ms)) if diff(now_ms, t_ms) > 0 else "now"


def header(title):
    return "-- " + title + " " + "-" * (WIDTH - 4 - len(title)) if len(title) < WIDTH - 5 \
        else fit("-- " + title)


def utc_text(t):
    """Seconds since 1970 (UTC) as "2026-12-03 14:40:01"."""
    return "%04d-%02d-%02d %02d:%02d:%02d" % _civil.civil(t)


# -- status, meter, counters ----------------------------------------------------------------------
def status_lines(st):
    """`st`: a dict with any of the keys below (absent parts are left out)."""
    out = [header("station %s" % st.get("station_id", "?"))]
    items = []
    if st.get("service_mode"):
        items.append(("mode", "SERVICE MODE (%s)" % (st.get("service_reason") or "?")))
    if st.get("stopped"):
        items.append(("mode", st["stopped"]))
    if "state" in st:
        flags = []
        if st.get("blocked"):
            flags.append("BLOCKED by a fault")
        elif "available" in st:
            flags.append("available" if st["available"] else "INOPERATIVE")
        if "authorized" in st:
            flags.append("authorized" if st["authorized"] else "not authorized")
        if st.get("paused"):
            flags.append("paused")
        items.append(("state", st["state"] + ("  (%s)" % ", ".join(flags) if flags else "")))
    if "pilot" in st:
        items.append(("pilot", st["pilot"]))
    if "offered_ma" in st:
        items.append(("offered", "%s  (limit: %s)" % (amps(st["offered_ma"]) if st["offered_ma"]
                                                      else "none", st.get("limit", "?"))))
    if "rating_ma" in st:
        items.append(("hardware", "rated %s (board file), max_current_ma %s"
                      % (amps(st["rating_ma"]), amps(st.get("max_current_ma")))))
    if "contactor" in st:
        c = "closed" if st["contactor"] else "open"
        if "mirror_closed" in st and st["mirror_closed"] is not None:
            c += ", mirror says %s" % ("closed" if st["mirror_closed"] else "open")
        items.append(("contactor", c))
    if "faults" in st:
        items.append(("faults", ", ".join(st["faults"]) if st["faults"] else "none"))
    if "session" in st:
        items.append(("session", st["session"] if st["session"] else "none"))
    if st.get("meter") is not None:
        m = st["meter"]
        items.append(("meter", "%d W, %s%s" % (m.get("power_w") or 0, kwh(m.get("import_wh")),
                                                 ", STALE" if m.get("stale") else "")))
    elif "meter" in st:
        items.append(("meter", "none"))
    if st.get("unbilled_wh") is not None:
        items.append(("unbilled", "%s (metered, in no session)" % kwh(st["unbilled_wh"])))
    if "link" in st:
        items.append(("backend", st["link"] if st["link"] else "not configured"))
    for key in ("wifi", "clock"):
        if key in st:
            items.append((key if key != "wifi" else "Wi-Fi", st[key]))
    if "temp_dc" in st:
        t = st["temp_dc"]
        items.append(("temperature", "no sensor" if t is None else _div(t, 10, 1) + " C"))
    for key in ("version", "board", "boot", "reset_cause", "uptime", "iterations"):
        if key in st:
            items.append((key.replace("_", " "), st[key]))
    if st.get("pending_reboot"):
        items.append(("pending", "%s (stored, applies after a reboot)"
                      % ", ".join(st["pending_reboot"])))
    if st.get("note"):
        items.append(("note", st["note"]))
    if st.get("config_error"):
        items.append(("config error", st["config_error"]))
    if st.get("last_crash"):
        items.append(("last crash", st["last_crash"]))
    out += pairs(items)
    for w in st.get("warnings") or ():
        out += wrap("warning: " + w, "  ")
    return out


# -- why not charging -------------------------------------------------------------------------
def _fault_remedy(f):
    if f.clearing == _faults.AUTO:
        return "it clears by itself once its cause is gone"
    if f.clearing == _faults.UNPLUG:
        return "unplug the EV once the cause is gone (or diag.clear(\"%s\"))" % f.name
    return "remove the cause, then diag.clear(\"%s\")%s" % (
        f.name, "" if f.remote_clear else " on site")


def why_text(w):
    """One sentence: what stops charging now, and what to do. `w`: facts from diag.why()
    (state, faults, available, connected, authorized, auth_mode, paused, limit, limit_ma,
    offered_ma, contactor, requesting, backend, comms_ma, mode)."""
    if w.get("mode"):
        return w["mode"]
    blocking = w.get("faults") or ()
    if blocking:
        f = _faults.by_name(blocking[0])
        more = " (also %s)" % ", ".join(blocking[1:]) if len(blocking) > 1 else ""
        return "Not charging: fault %s%s blocks it (%s): %s." % (
            f.name, more, f.text.split(". ")[0].rstrip("."), _fault_remedy(f))
    if not w.get("available", True):
        return ("Not charging: the station is set inoperative (by the backend's"
                " set_availability); the backend makes it operative again.")
    if not w.get("connected"):
        return "Not charging: no EV connected (pilot state A). Plug an EV in."
    if not w.get("authorized"):
        return ("Not charging: the EV waits for authorization (auth_mode %s): present a"
                " card or start it from the backend." % w.get("auth_mode", "?"))
    if w.get("paused"):
        return ("Not charging: the backend stopped or paused this charge; a start from the"
                " backend resumes it.")
    limit = w.get("limit")
    if w.get("limit_ma", 0) < 6000:
        if limit == "comms":
            return ("Not charging: the backend is unreachable (%s) and comms_fallback_ma is"
                    " %s, so the station pauses at %s until it is back; set"
                    " comms_fallback_ma to charge meanwhile." % (
                        w.get("backend") or "offline", w.get("comms_ma", 0),
                        amps(w.get("comms_ma", 0))))
        if limit == "backend":
            return ("Not charging: the backend limits the current to %s, below the 6 A"
                    " minimum; the backend lifts it (or it expires)."
                    % amps(w.get("backend_ma")))
        if limit == "thermal":
            return ("Not charging: too hot (over-temperature stop); it resumes once cooled"
                    " down. Check terminals and ventilation.")
        return "Not charging: the current limit is %s, below 6 A." % amps(w.get("limit_ma"))
    if not w.get("offered_ma"):
        return ("Not charging yet: the offer waits (self-test, rate limit or wake-up); try"
                " again in a few seconds.")
    if not w.get("requesting"):
        return ("Not charging: %s is offered, but the EV does not ask for it (state %s):"
                " it is full, on a timer, or waiting; check the EV's charging settings."
                % (amps(w.get("offered_ma")), w.get("state", "?")))
    if not w.get("contactor"):
        return ("Not charging yet: the EV asks and %s is offered; the contactor closes"
                " after the checks (debounce, self-test, lock)." % amps(w.get("offered_ma")))
    return "Charging: %s offered (limit: %s); nothing blocks it." % (
        amps(w.get("offered_ma")), limit)


# The text of the commands in diag_check.py and diag_records.py lives in diagfmt_check.py
# and diagfmt_records.py, imported on their first use: `import diag` on a running station
# then builds only this module's table (a block of about 200 B, where the station's
# fragmented heap has holes of a few hundred bytes at most; docs/performance.md, Heap).
# `diagfmt.<name>` reaches them all.
_CHECK = ("output_text", "pilot_lines", "pp_text", "pp_lines", "meter_lines", "stale_cause",
          "check_line")
_RECORDS = ("fault_name", "event_text", "event_lines", "history_time", "history_text",
            "history_lines", "active_fault_lines", "fault_count_lines", "fault_lines",
            "config_lines", "_value_text", "session_lines", "counter_lines")


def __getattr__(name):
    if name in _CHECK:
        from firmware import diagfmt_check as part
    elif name in _RECORDS:
        from firmware import diagfmt_records as part
    else:
        raise AttributeError(name)
    return getattr(part, name)

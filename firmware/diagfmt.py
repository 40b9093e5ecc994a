"""Text for the technician's REPL diagnostics (diag.py): plain data in, lines out.

Hardware-free and side-effect free: every function takes numbers, dicts and tuples (what the
station, the fault table and the meter service already report) and returns a list of str
lines, each at most WIDTH columns, because a serial terminal is usually 80 wide and wraps
(or cuts) anything longer. Integer arithmetic only: the values are mA, mV, Wh, ms.
"""
from firmware import faults as _faults
from firmware import states as _states
from firmware.civil import civil
from firmware.charger import CONTACTOR_REASON_NAMES, LIMIT_NAMES
from firmware.events import (
    EV_CONTACTOR, EV_FAULT_CLEARED, EV_FAULT_RAISED, EV_LOCK, EV_OFFER, EV_SELFTEST, EV_STATE,
    EV_WAKEUP, KIND_NAMES)
from firmware.history import HK_BOOT, HK_LOST, HK_STOP, RESET_CAUSES, STOP_REASONS
from firmware.pilot import LEVEL_NAMES, PP_ERROR, PP_NO_CABLE

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


# -- pilot and proximity --------------------------------------------------------------------
def output_text(duty_pm):
    """What the EVSE drives on the CP, from the duty in permille."""
    if duty_pm is None:
        return "unknown"
    if duty_pm >= 1000:
        return "steady +12 V (x1: no current offered)"
    if duty_pm <= 0:
        return "steady -12 V (state F: not available)"
    return "PWM %s %% (%s offered)" % (_div(duty_pm, 10, 1), amps(_offered_ma(duty_pm)))


def _offered_ma(duty_pm):
    # IEC 61851-1 Table A.8, the EV's reading of the duty.
    if duty_pm < 80:
        return 0
    if duty_pm <= 100:
        return 6000
    if duty_pm <= 850:
        return duty_pm * 60
    if duty_pm <= 960:
        return (duty_pm - 640) * 250
    return 0


def pilot_lines(samples, level, duty_pm, state_name=None):
    """`samples`: [(high_mv, low_mv), ...] taken just now; `level`: firmware.pilot level of
    the last one; `duty_pm`: what the EVSE drives; `state_name`: the charger's state."""
    out = [header("control pilot (live)")]
    items = [("output", output_text(duty_pm))]
    if samples:
        his = [s[0] for s in samples]
        los = [s[1] for s in samples]
        items.append(("CP high", "%s  (%d samples, %s .. %s)"
                      % (volts(samples[-1][0]), len(samples), volts(min(his)), volts(max(his)))))
        items.append(("CP low", "%s  (%s .. %s)"
                      % (volts(samples[-1][1]), volts(min(los)), volts(max(los)))))
    items.append(("level", LEVEL_TEXT[level] if 0 <= level < len(LEVEL_TEXT) else str(level)))
    if state_name is not None:
        items.append(("state", state_name + " (charge controller)"))
    out += pairs(items)
    if duty_pm is not None and duty_pm <= 0:
        out += wrap("While the EVSE drives -12 V the EV cannot be seen; the level shows "
                    "the EVSE's own output.", "  ")
    return out


def pp_text(rating_ma):
    if rating_ma == PP_NO_CABLE:
        return "no cable (open circuit)"
    if rating_ma == PP_ERROR:
        return "invalid (under 75 ohm: short or no valid coding)"
    return "cable rated %s" % amps(rating_ma)


def pp_lines(ohms, rating_ma, socket_outlet=True):
    out = [header("proximity pilot (live)")]
    shown = "open" if ohms >= 100000 else "%d ohm" % ohms
    items = [("PP-PE", shown), ("cable", pp_text(rating_ma))]
    if not socket_outlet:
        items.append(("note", "tethered cable (socket_outlet false): PP not used"))
    out += pairs(items)
    return out


# -- events and faults -------------------------------------------------------------------------
def fault_name(code):
    try:
        return _faults.by_code(code).name
    except ValueError:
        return "fault %d" % code


def event_text(kind, a, b):
    """One event record (firmware.events) in words."""
    if kind == EV_STATE:
        return "state %s -> %s" % (_name(_states.NAMES, b), _name(_states.NAMES, a))
    if kind == EV_FAULT_RAISED:
        return "fault raised %s" % fault_name(a)
    if kind == EV_FAULT_CLEARED:
        return "fault cleared %s%s" % (fault_name(a), " (by request)" if b else "")
    if kind == EV_CONTACTOR:
        return "contactor %s (%s)" % ("closed" if a else "opened",
                                      _name(CONTACTOR_REASON_NAMES, b))
    if kind == EV_OFFER:
        return "offer %s (limit: %s)" % (amps(a) if a else "none", _name(LIMIT_NAMES, b))
    if kind == EV_SELFTEST:
        return "RCD self-test %s (%d ms)" % ("passed" if a else "FAILED", b)
    if kind == EV_WAKEUP:
        return "wake-up %s" % ("started" if a else "ended")
    if kind == EV_LOCK:
        return "lock %s" % ("commanded" if a else "released")
    return "%s a=%d b=%d" % (_name(KIND_NAMES, kind), a, b)


def _name(names, i):
    if 0 <= i < len(names):
        return names[i]
    return "?%d" % i


def event_lines(records, now_ms, diff, dropped=0):
    """`records`: [(t_ms, kind, a, b), ...] oldest first."""
    out = [header("events (newest last)")]
    if not records:
        out.append("  none recorded")
    for t, kind, a, b in records:
        out.append(fit("  %10s  %s" % (age(now_ms, t, diff), event_text(kind, a, b))))
    if dropped:
        out.append("  (%d older events were overwritten)" % dropped)
    return out


def utc_text(t):
    """Seconds since 1970 (UTC) as "2026-12-03 14:40:01"."""
    return "%04d-%02d-%02d %02d:%02d:%02d" % civil(t)


def history_time(rec):
    """When a history record (firmware.history.read) happened: its UTC time when the
    clock was set, else its boot and the uptime then."""
    if rec[1] is not None:
        return utc_text(rec[1])
    return "boot %d +%s" % (rec[3], seconds(rec[2] * 100))


def history_text(kind, a, b):
    if kind == HK_BOOT:
        return "BOOT, reset cause %s%s" % (_name(RESET_CAUSES, a),
                                            " (the previous run crashed)" if b else "")
    if kind == HK_STOP:
        return "stopped: %s" % _name(STOP_REASONS, a)
    if kind == HK_LOST:
        return "(%d records not logged: too many too fast, or flash failed)" % a
    return event_text(kind, a, b)


def history_lines(title, records, note=None):
    """`records`: firmware.history.read() tuples, oldest first."""
    out = [header(title)]
    if not records:
        out.append("  none recorded")
    for rec in records:
        out.append(fit("  %-19s  %s" % (history_time(rec), history_text(rec[4], rec[5],
                                                                          rec[6]))))
    if note:
        out += wrap(note, "  ")
    return out


def _fault_flags(f):
    how = ("by itself", "on unplug", "when cleared")[f.clearing]
    return "%s; clears %s%s" % ("Stops charging" if f.blocking else "Warning", how,
                                "" if f.remote_clear else " (on site only)")


def active_fault_lines(active_codes, title="active faults"):
    out = [header(title)]
    if not active_codes:
        out.append("  none")
    for code in active_codes:
        f = _faults.by_code(code)
        out.append(fit("  %s  (OCPP %s)" % (f.name, f.ocpp)))
        out += wrap(_fault_flags(f) + ". " + f.text, "      ")
    return out


def fault_count_lines(counts):
    out = [header("times raised since boot")]
    items = []
    for code in sorted(counts):
        if counts[code]:
            items.append((fault_name(code), counts[code]))
    out += pairs(items) if items else ["  none"]
    return out


def fault_lines(active_codes, history, now_ms, diff, counts=None):
    """`active_codes`: fault codes; `history`: [(t_ms, code, raised)] oldest first;
    `counts`: {code: times raised} (optional)."""
    out = active_fault_lines(active_codes)
    out.append(header("fault history (newest last)"))
    if not history:
        out.append("  none")
    for t, code, raised in history:
        out.append(fit("  %10s  %-8s %s" % (age(now_ms, t, diff),
                                            "raised" if raised else "cleared",
                                            fault_name(code))))
    if counts:
        out += fault_count_lines(counts)
    return out


# -- configuration ----------------------------------------------------------------------------
def config_lines(public, defaults, reboot_keys=(), match=None):
    """`public`: {key: value} with secrets already masked; `defaults`: {key: default}.
    A `*` marks a value changed from its default, `(r)` a key that applies after a reboot."""
    out = [header("configuration" + (" matching %r" % match if match else ""))]
    keys = sorted(k for k in public if match is None or match in k)
    if not keys:
        out.append("  no key matches")
    w = 0
    for k in keys:
        if len(k) > w:
            w = len(k)
    for k in keys:
        v = public[k]
        mark = "*" if v != defaults.get(k) and v != "***" else " "
        if v == "***":
            mark = "*"
        tail = "  (r)" if k in reboot_keys else ""
        text = _value_text(v)
        room = WIDTH - 2 - w - 3 - len(tail)
        out.append("%s %s = %s%s" % (mark, k + " " * (w - len(k)), fit(text, room), tail))
    out.append("  * changed from the default, (r) applies after a reboot")
    return out


def _value_text(v):
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, str):
        return '"%s"' % v
    return str(v)


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


def meter_lines(reading, stats, addr=None, map_name=None):
    """`reading`: MeterService.reading(); `stats`: MeterService.stats()."""
    title = "energy meter"
    if map_name:
        title += " %s" % map_name
    if addr is not None:
        title += " at address %d" % addr
    out = [header(title)]
    r = reading
    items = [
        ("voltage", "  ".join(_div(v, 10, 1) + " V" for v in r["voltage_dv"])),
        ("current", "  ".join(amps(i) for i in r["current_ma"])),
        ("power", "-" if r["power_w"] is None else "%d W" % r["power_w"]),
        ("import", kwh(r["import_wh"])),
    ]
    if r.get("export_wh") is not None:
        items.append(("export", kwh(r["export_wh"])))
    state = []
    if r.get("stale"):
        state.append("STALE (%s)" % stale_cause(stats))
    if r.get("implausible"):
        state.append("IMPLAUSIBLE (%s)" % r.get("implausible_reason", "?"))
    if r.get("last_ok_ms") is None and not state:
        state.append("none yet")
    items.append(("reading", ", ".join(state) if state else "ok"))
    if "last_ok_age" in r:
        items.append(("last good", r["last_ok_age"]))
    out += pairs(items)
    if stats:
        out.append(header("meter bus"))
        s = stats
        out += pairs([
            ("requests", "%d, replies %d, retries %d" % (s.get("requests", 0),
                                                        s.get("replies", 0),
                                                        s.get("retries", 0))),
            ("errors", "timeouts %d, crc %d, exceptions %d, bad frames %d"
             % (s.get("timeouts", 0), s.get("crc_errors", 0), s.get("exceptions", 0),
                s.get("bad_frames", 0))),
            ("cycles", "%d, failed %d, failing now %d" % (s.get("cycles", 0),
                                                          s.get("cycles_failed", 0),
                                                          s.get("consecutive_failures", 0))),
            ("implausible", s.get("implausible_count", 0)),
            ("last error", s.get("last_error") or "none"),
            ("per poll", "%d requests, %d bytes" % (s.get("requests_per_poll", 0),
                                                   s.get("bytes_per_poll", 0))),
        ])
    return out


def stale_cause(stats):
    """Why a stale meter is stale, from its bus statistics: a meter that answers with
    exceptions is there but refuses the registers of the configured map."""
    s = stats or {}
    if s.get("exceptions", 0):
        return "meter answers with exceptions: wrong meter_map?"
    if s.get("crc_errors", 0) or s.get("bad_frames", 0):
        return "garbled answers: baud, parity or wiring?"
    return "no answer"


def session_lines(records, live=None):
    """`records`: finished session records (firmware/session.py), oldest first; `live`:
    the running session's record so far."""
    out = [header("charging sessions (newest last)")]
    if not records and live is None:
        out.append("  none on flash")
    for rec in records:
        out += _session(rec)
    if live is not None:
        out += _session(live, "running")
    return out


def _session(rec, note=None):
    t = rec.get("start_time")
    if rec.get("time_source") == "wall" and isinstance(t, int):
        when = utc_text(t)
    else:
        when = "boot %s" % rec.get("boot", "?")
    head = "  %s  %s  %s, %s" % (rec.get("id", "?"), when, kwh(rec.get("energy_wh")),
                                 seconds((rec.get("duration_s") or 0) * 1000))
    lines = [fit(head)]
    reason = note or rec.get("stop_reason") or "?"
    tail = "      %s; idTag %s; cost %s %s" % (reason, rec.get("id_tag") or "-",
                                              rec.get("cost_minor", 0), rec.get("currency", ""))
    if rec.get("faults"):
        tail += "; faults " + ", ".join(rec["faults"])
    if rec.get("pending"):
        tail += "; not yet acknowledged by the backend"
    lines += wrap(tail.strip(), "      ")
    return lines


def counter_lines(values, extra=None):
    """`values`: Counters.values(); `extra`: more ("label", value) pairs (RAM counters)."""
    out = [header("lifetime counters")]
    v = values
    items = [("boots", v.get("boots", 0)), ("sessions", v.get("sessions", 0)),
             ("energy", kwh(v.get("energy_wh", 0))),
             ("contactor cycles", v.get("contactor_cycles", 0)),
             ("  under load", v.get("contactor_cycles_under_load", 0)),
             # Energy the meter counted that no session record bills (gaps, estimates):
             # records + this = the meter's register difference (docs/sessions.md).
             ("unbilled", kwh(v.get("unbilled_wh", 0)))]
    if v.get("ledger_wh") is not None:
        items.append(("ledger at", "meter register %s" % kwh(v["ledger_wh"])))
    if v.get("last_session"):
        items.append(("last session", v["last_session"]))
    out += pairs(items)
    f = v.get("faults") or {}
    out.append(header("faults counted"))
    if f:
        out += pairs([(k, f[k]) for k in sorted(f)])
    else:
        out.append("  none")
    if extra:
        out.append(header("since boot"))
        out += pairs(extra)
    return out


def check_line(name, verdict, detail=""):
    """One self-test line: "  name ........ PASS  detail"."""
    dots = "." * (22 - len(name)) if len(name) < 22 else ""
    return fit("  %s %s %-4s  %s" % (name, dots, verdict, detail))


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

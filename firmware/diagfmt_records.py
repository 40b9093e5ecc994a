"""Text for diag_records.py (events, faults, history, configuration, sessions, counters):
plain data in, lines of at most diagfmt.WIDTH columns out. Imported on first use
(firmware/diagfmt.py)."""
from firmware import charger as _charger
from firmware import events as _ev
from firmware import faults as _faults
from firmware import history as _hist
from firmware import states as _states
from firmware.diagfmt import WIDTH, age, amps, fit, header, kwh, pairs, seconds, utc_text, wrap


# -- events and faults -------------------------------------------------------------------------
def fault_name(code):
    try:
        return _faults.by_code(code).name
    except ValueError:
        return "fault %d" % code


def event_text(kind, a, b):
    """One event record (firmware.events) in words."""
    if kind == _ev.EV_STATE:
        return "state %s -> %s" % (_name(_states.NAMES, b), _name(_states.NAMES, a))
    if kind == _ev.EV_FAULT_RAISED:
        return "fault raised %s" % fault_name(a)
    if kind == _ev.EV_FAULT_CLEARED:
        return "fault cleared %s%s" % (fault_name(a), " (by request)" if b else "")
    if kind == _ev.EV_CONTACTOR:
        return "contactor %s (%s)" % ("closed" if a else "opened",
                                      _name(_charger.CONTACTOR_REASON_NAMES, b))
    if kind == _ev.EV_OFFER:
        return "offer %s (limit: %s)" % (amps(a) if a else "none", _name(_charger.LIMIT_NAMES, b))
    if kind == _ev.EV_SELFTEST:
        return "RCD self-test %s (%d ms)" % ("passed" if a else "FAILED", b)
    if kind == _ev.EV_WAKEUP:
        return "wake-up %s" % ("started" if a else "ended")
    if kind == _ev.EV_LOCK:
        return "lock %s" % ("commanded" if a else "released")
    return "%s a=%d b=%d" % (_name(_ev.KIND_NAMES, kind), a, b)


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


def history_time(rec):
    """When a history record (firmware.history.read) happened: its UTC time when the
    clock was set, else its boot and the uptime then."""
    if rec[1] is not None:
        return utc_text(rec[1])
    return "boot %d +%s" % (rec[3], seconds(rec[2] * 100))


def history_text(kind, a, b):
    if kind == _hist.HK_BOOT:
        return "BOOT, reset cause %s%s" % (_name(_hist.RESET_CAUSES, a),
                                            " (the previous run crashed)" if b else "")
    if kind == _hist.HK_STOP:
        return "stopped: %s" % _name(_hist.STOP_REASONS, a)
    if kind == _hist.HK_LOST:
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

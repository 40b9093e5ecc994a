"""Text for diag_check.py (the hardware checks: pilot, pp, meter, selftest): plain data in,
lines of at most diagfmt.WIDTH columns out. Imported on first use (firmware/diagfmt.py)."""
from firmware import pilot as _pilot
from firmware.diagfmt import LEVEL_TEXT, _div, amps, fit, header, kwh, pairs, volts, wrap


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
    if rating_ma == _pilot.PP_NO_CABLE:
        return "no cable (open circuit)"
    if rating_ma == _pilot.PP_ERROR:
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


def check_line(name, verdict, detail=""):
    """One self-test line: "  name ........ PASS  detail"."""
    dots = "." * (22 - len(name)) if len(name) < 22 else ""
    return fit("  %s %s %-4s  %s" % (name, dots, verdict, detail))

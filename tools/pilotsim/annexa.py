"""The IEC 61851-1 Annex A report: which sequences a trace shows, how long each took
(simulated ms), against which limit, pass or fail.

Input is the list of trace records a run produced (docs/scenarios.md, "Trace"). `tick`
records are written on every change of state, duty, contactor, mirror, faults, EV state or
EV current, so transition times are exact to one control-loop period. Scenario steps
(`ev`, `fault`, `backend` records) give the stimulus time each sequence is measured from.

Limits come from IEC 61851-1 Annex A as cited by EVerest, open_evse and SmartEVSE, and from
the station's configuration where the standard leaves the number to the product (they are
labelled "config" in the report). "At once" (E, F, diode fault, residual-current trip) is
checked against the tightest Annex A time, 100 ms.
"""

from tools.pilotsim.model import offered_ma

PWM_MIN = 1
PWM_MAX = 999

ANNEX_A_OPEN_MS = 100        # C->B, C->A: de-energise within 100 ms
ANNEX_A_CLOSE_MS = 3000      # EV in C with PWM on: close within 3 s
ANNEX_A_PWM_OFF_MS = 6000    # PWM off, EV stays in C: open after 6 s at the latest
ANNEX_A_F_HOLD_MS = 300      # after a fault while charging: F for at least 300 ms (A.5)
PLUG_DETECT_MS = 1000        # project limit: plug-in seen (A->B) within 1 s

# Faults the firmware should raise for each injected fault (firmware/faults.py names).
INJECTED_FAULT_CODES = {
    "diode_short": "DIODE_FAULT",
    "cp_short_pe": "CP_SHORT",
    "rcd_trip": "RCD_TRIPPED",
    "rcd_selftest_fail": "RCD_SELFTEST_FAILED",
    "contactor_welded": "CONTACTOR_WELDED",
    "contactor_stuck_open": "CONTACTOR_NOT_CLOSING",
    "ev_overdraw": "OVERCURRENT",
    "meter_silent": "METER_STALE",
    "meter_garbage": "METER_STALE",
    "temperature": "OVERTEMP",
    "network_stall": "BACKEND_OFFLINE",
}


class Check:
    def __init__(self, seq, title, at_ms, measured_ms, limit, ok, note=""):
        self.seq = seq              # stable id, e.g. "c_to_a_open"
        self.title = title
        self.at_ms = at_ms          # when the sequence started (simulated ms)
        self.measured_ms = measured_ms   # None when it never completed
        self.limit = limit          # text, e.g. "<= 100 ms"
        self.ok = ok
        self.note = note

    def as_dict(self):
        return {"seq": self.seq, "title": self.title, "at_ms": self.at_ms,
                "measured_ms": self.measured_ms, "limit": self.limit, "ok": self.ok,
                "note": self.note}


def _pwm(d):
    return PWM_MIN <= d <= PWM_MAX


class Timeline:
    def __init__(self, records):
        self.ticks = [r for r in records if r.get("k") == "tick"]
        self.steps = [r for r in records if r.get("k") in ("ev", "fault", "backend", "meter")]
        start = next((r for r in records if r.get("k") == "start"), {})
        self.config = start.get("config", {})
        self.cable_a = start.get("cable_a")
        end = next((r for r in records if r.get("k") == "end"), None)
        self.end_ms = end["t"] if end else (self.ticks[-1]["t"] if self.ticks else 0)
        self.cables = self._cables()
        self.changes = self._config_changes(records)

    def _cables(self):
        """[(t, cable A)]: the cable in the socket from t on (a plug step may bring
        another one; an unplug step may name the one the next plug brings)."""
        out = [(0, self.cable_a)]
        for s in self.steps:
            if s["k"] == "ev" and s["name"] in ("plug", "unplug") and s.get("cable_a"):
                out.append((s["t"], s["cable_a"]))
        return out

    def _config_changes(self, records):
        """[(sent t, replied t, changes)] of the set_config commands the station accepted
        (its reply says ok): from then on the report expects what they set."""
        replies = {}
        for m in records:
            if m.get("k") == "mqtt" and m.get("topic") == "reply" \
                    and isinstance(m.get("payload"), dict) and m["payload"].get("ok"):
                replies.setdefault(m["payload"].get("id"), m["t"])
        out = []
        for s in self.steps:
            if s["k"] == "backend" and s["name"] == "set_config" and not s.get("skipped"):
                changes = (s.get("args") or {}).get("changes")
                if isinstance(changes, dict) and s.get("id") in replies:
                    out.append((s["t"], replies[s["id"]], changes))
        return out

    def cable_at(self, t):
        cable = None
        for at, a in self.cables:
            if at <= t:
                cable = a
        return cable

    def current_limit_ma(self, t):
        """The most the PWM may offer at t: the installation's max_current_ma in force and
        the cable's rating. While a change of max_current_ma is on its way (command sent,
        reply not yet seen, plus 100 ms for the next duty update) either value holds."""
        limit = self._start_cfg("max_current_ma", 32000)
        for sent, replied, changes in self.changes:
            if "max_current_ma" not in changes or sent > t:
                continue
            new = changes["max_current_ma"]
            limit = new if t > replied + ANNEX_A_OPEN_MS else max(limit, new)
        cable = self.cable_at(t)
        if cable:
            limit = min(limit, cable * 1000)
        return limit

    def at(self, t):
        """The last tick record at or before t (the state in force at t)."""
        cur = None
        for r in self.ticks:
            if r["t"] > t:
                break
            cur = r
        return cur

    def before(self, t):
        """The last tick record strictly before t (the state a step at t acted on)."""
        cur = None
        for r in self.ticks:
            if r["t"] >= t:
                break
            cur = r
        return cur

    def first_from(self, t0, pred):
        """(t, record): the first time from t0 on at which pred holds, counting the record
        in force at t0 (records are written on change only); (None, None) if never."""
        cur = self.at(t0)
        if cur is not None and pred(cur):
            return t0, cur
        r = self.first(t0, pred)
        return (None, None) if r is None else (r["t"], r)

    def first(self, t0, pred, until=None):
        for r in self.ticks:
            if r["t"] < t0:
                continue
            if until is not None and r["t"] > until:
                return None
            if pred(r):
                return r
        return None

    def fault_on(self, name, t):
        """Whether the injected fault `name` is on at t (by the last step at or before t)."""
        on = False
        for s in self.steps:
            if s["t"] > t:
                break
            if s["k"] == "fault" and s["name"] == name:
                on = bool(s.get("on"))
        return on

    def pilot_hidden(self, t):
        """The EV's circuit cannot be seen at t: CP wire open or PE lost."""
        return self.fault_on("cp_open", t) or self.fault_on("pe_loss", t)

    def injected(self, name):
        """Times at which the fault `name` was switched on."""
        return [s["t"] for s in self.steps
                if s["k"] == "fault" and s["name"] == name and s.get("on")]

    def cfg(self, key, default, t=None):
        """The station's setting: the run's override, else the firmware's own default
        (firmware/config.py), so a limit never rests on a stale copy; `default` only for
        a key the schema does not have. With `t`: as set_config commands accepted by then
        left it."""
        if t is not None:
            for _sent, replied, changes in reversed(self.changes):
                if replied <= t and key in changes:
                    return changes[key]
        return self._start_cfg(key, default)

    def _start_cfg(self, key, default):
        if key in self.config:
            return self.config[key]
        from firmware import config
        return default if config.spec(key) is None else config.default(key)


def analyse(records):
    """All checks the trace allows, in time order."""
    tl = Timeline(records)
    checks = []
    checks += _plug_in(tl)
    checks += _close_in_c(tl)
    checks += _close_allowed(tl)
    checks += _closed_without_pwm(tl)
    checks += _blocking_fault_open(tl)
    checks += _open_on_ev_action(tl)
    checks += _pwm_off(tl)
    checks += _faults(tl)
    checks += _f_hold(tl)
    checks += _ventilation(tl)
    checks += _overcurrent(tl)
    checks += _overtemp(tl)
    checks += _limit_applied(tl, records)
    checks += _duty_within_limits(tl)
    checks += _wake_up(tl)
    checks.sort(key=lambda c: (c.at_ms, c.seq))
    return checks


def _closed_at(tl, t):
    """Was the contactor closed just before t (a step at t acts before the tick at t)?"""
    r = tl.before(t)
    return bool(r and r["contactor"])


def _plug_in(tl):
    out = []
    for s in tl.steps:
        if s["k"] == "ev" and s["name"] == "plug":
            prior = tl.before(s["t"])
            if (prior is not None and prior["ev"] != "A") or tl.pilot_hidden(s["t"]) \
                    or tl.fault_on("cp_short_pe", s["t"]):
                continue            # already plugged, or the EV cannot be seen
            r = tl.first(s["t"], lambda r: r["state"] != "A")
            if r is None:
                out.append(Check("plug_in", "A->B plug-in detected", s["t"], None,
                                 "<= %d ms (project)" % PLUG_DETECT_MS, False, "never left A"))
                continue
            dt = r["t"] - s["t"]
            early = _closes_in_b(tl, s["t"], r["t"] + 1000)
            ok = dt <= PLUG_DETECT_MS and early is None
            out.append(Check("plug_in", "A->B plug-in detected (contactor stays open)",
                             s["t"], dt, "<= %d ms (project)" % PLUG_DETECT_MS, ok,
                             "now %s" % r["state"]))
    return out


def _closes_in_b(tl, t0, t1):
    """The first tick in [t0, t1] at which the coil closes while the EV only signals B."""
    prev = tl.before(t0)
    for r in tl.ticks:
        if r["t"] < t0:
            continue
        if r["t"] > t1:
            break
        if r["contactor"] and r["ev"] == "B" and (prev is None or not prev["contactor"]):
            return r
        prev = r
    return None


def _close_in_c(tl):
    """EV requests (C, or D with ventilation) while the PWM runs: closed within 3 s."""
    out = []
    vent = tl.cfg("ventilation_supported", False)
    armed = None
    prev = None
    for r in tl.ticks:
        want = (r["ev"] == "C" or (r["ev"] == "D" and vent)) and _pwm(r["duty"]) \
            and not r["blocking"]
        if r["contactor"] and want and armed is None and prev is not None \
                and not prev["contactor"]:
            armed = r["t"]          # PWM switched on and closed in the same tick
        prev = r
        if r["contactor"]:
            if armed is not None:
                dt = r["t"] - armed
                out.append(Check("close_in_c", "%s with PWM on -> contactor closed"
                                 % ("C2" if r["ev"] == "C" else "D2"), armed, dt,
                                 "<= %d ms" % ANNEX_A_CLOSE_MS, dt <= ANNEX_A_CLOSE_MS))
                armed = None
            continue
        if want and armed is None:
            armed = r["t"]
        elif not want and armed is not None:
            if r["t"] - armed > ANNEX_A_CLOSE_MS:
                out.append(Check("close_in_c", "C2 -> contactor closed", armed, None,
                                 "<= %d ms" % ANNEX_A_CLOSE_MS, False, "never closed"))
            armed = None
    if armed is not None and tl.end_ms - armed > ANNEX_A_CLOSE_MS:
        out.append(Check("close_in_c", "C2 -> contactor closed", armed, None,
                         "<= %d ms" % ANNEX_A_CLOSE_MS, False, "never closed"))
    return out


def _close_allowed(tl):
    """Every time the coil goes on, the EV asks for charge (C, or D where ventilation is
    supported), the PWM offers current and no blocking fault is active (IEC 61851-1
    Annex A: only C2/D2 may be energised); an EV whose circuit is off the line (CP open,
    PE lost) reads as A."""
    vent = tl.cfg("ventilation_supported", False)
    out = []
    closings = 0
    prev = None
    for r in tl.ticks:
        if r["contactor"] and (prev is None or not prev["contactor"]):
            closings += 1
            why = []
            if not (r["ev"] == "C" or (r["ev"] == "D" and vent)) or tl.pilot_hidden(r["t"]):
                why.append("EV signals %s" % ("A" if tl.pilot_hidden(r["t"]) else r["ev"]))
            if not _pwm(r["duty"]):
                why.append("no PWM (duty %d)" % r["duty"])
            if r["blocking"]:
                why.append("blocking fault %s" % ", ".join(r["faults"]))
            if why:
                out.append(Check("close_allowed", "coil on only in C2/D2, no blocking fault",
                                 r["t"], None, "never otherwise", False, "; ".join(why)))
        prev = r
    if closings and not out:
        out.append(Check("close_allowed", "coil on only in C2/D2, no blocking fault",
                         tl.ticks[0]["t"], None, "never otherwise", True,
                         "%d closing%s" % (closings, "" if closings == 1 else "s")))
    return out


def _closed_without_pwm(tl):
    """Whatever the cause, the coil stays on without PWM no longer than Annex A allows:
    6 s with a steady +12 V (x1), at once (100 ms) in state F. The sequences above measure
    the known causes; this catches a station that stops the PWM for another reason and
    leaves the contactor closed. Only failures are listed."""
    out = []
    since = None        # first tick of the present stretch: coil on, no PWM
    f_since = None      # ... and of state F within it

    def judge(t_end, closed_at_end):
        note = "still closed at the end" if closed_at_end else ""
        if f_since is not None and t_end - f_since > ANNEX_A_OPEN_MS:
            out.append(Check("closed_without_pwm", "state F with the coil on -> open",
                             f_since, None if closed_at_end else t_end - f_since,
                             "<= %d ms" % ANNEX_A_OPEN_MS, False, note))
        elif t_end - since > ANNEX_A_PWM_OFF_MS:
            out.append(Check("closed_without_pwm", "coil on without PWM -> open", since,
                             None if closed_at_end else t_end - since,
                             "<= %d ms" % ANNEX_A_PWM_OFF_MS, False, note))

    for r in tl.ticks:
        if r["contactor"] and r["duty"] in (0, 1000):
            if since is None:
                since = r["t"]
            if r["duty"] == 0 and f_since is None:
                f_since = r["t"]
            continue
        if since is not None:
            judge(r["t"], False)
        since = f_since = None
    if since is not None:
        judge(tl.end_ms, True)
    return out


def _blocking_fault_open(tl):
    """A fault that stops charging (the station's own `blocking` flag) opens the contactor
    at once, whatever raised it. Only failures are listed; the injected faults have their
    own sequences."""
    out = []
    since = None
    for r in tl.ticks:
        if r["contactor"] and r["blocking"]:
            if since is None:
                since = r
            continue
        if since is not None and r["t"] - since["t"] > ANNEX_A_OPEN_MS:
            out.append(Check("blocking_fault_open", "blocking fault -> open at once",
                             since["t"], r["t"] - since["t"], "<= %d ms" % ANNEX_A_OPEN_MS,
                             False, ", ".join(since["faults"])))
        since = None
    if since is not None and tl.end_ms - since["t"] > ANNEX_A_OPEN_MS:
        out.append(Check("blocking_fault_open", "blocking fault -> open at once", since["t"],
                         None, "<= %d ms" % ANNEX_A_OPEN_MS, False,
                         "still closed at the end: %s" % ", ".join(since["faults"])))
    return out


def _open_within(tl, seq, title, t0, limit_ms, note=""):
    r = tl.first(t0, lambda r: not r["contactor"])
    if r is None:
        return Check(seq, title, t0, None, "<= %d ms" % limit_ms, False, "never opened")
    dt = r["t"] - t0
    return Check(seq, title, t0, dt, "<= %d ms" % limit_ms, dt <= limit_ms, note)


def _open_on_ev_action(tl):
    out = []
    for s in tl.steps:
        if not _closed_at(tl, s["t"]):
            continue
        if s["k"] == "ev" and s["name"] == "pause":
            out.append(_open_within(tl, "c_to_b_open", "C->B (EV opens S2) -> open", s["t"],
                                    ANNEX_A_OPEN_MS))
        elif s["k"] == "ev" and s["name"] == "unplug":
            out.append(_open_within(tl, "c_to_a_open", "C->A (unplug) -> open", s["t"],
                                    ANNEX_A_OPEN_MS))
        elif s["k"] == "fault" and s.get("on") and s["name"] == "cp_open":
            out.append(_open_within(tl, "cp_open_open", "CP wire open (reads A) -> open",
                                    s["t"], ANNEX_A_OPEN_MS))
        elif s["k"] == "fault" and s.get("on") and s["name"] == "power_cut":
            r = tl.first(s["t"], lambda x: not x["mirror"])
            dt = None if r is None else r["t"] - s["t"]
            out.append(Check("power_cut_open", "power cut while charging -> contacts open",
                             s["t"], dt, "<= %d ms" % ANNEX_A_OPEN_MS,
                             dt is not None and dt <= ANNEX_A_OPEN_MS))
        elif s["k"] == "fault" and s.get("on") and s["name"] == "pe_loss":
            out.append(_open_within(tl, "pe_loss_open", "PE lost (reads A) -> open", s["t"],
                                    ANNEX_A_OPEN_MS))
    return out


def _pwm_off(tl):
    out = []
    prev = None
    for r in tl.ticks:
        if (prev is not None and _pwm(prev["duty"]) and r["duty"] == 1000 and prev["contactor"]
                and r["ev"] in ("C", "D") and not r["blocking"]):
            t0 = r["t"]
            end = tl.first(t0, lambda x: not x["contactor"] or _pwm(x["duty"])
                           or x["ev"] not in ("C", "D"))
            if end is None:
                out.append(Check("pwm_off_open", "PWM off, EV stays in C -> open", t0, None,
                                 "<= %d ms" % ANNEX_A_PWM_OFF_MS,
                                 tl.end_ms - t0 <= ANNEX_A_PWM_OFF_MS, "still closed at end"))
            elif not end["contactor"]:
                dt = end["t"] - t0
                out.append(Check("pwm_off_open", "PWM off, EV stays in C -> open", t0, dt,
                                 "<= %d ms" % ANNEX_A_PWM_OFF_MS, dt <= ANNEX_A_PWM_OFF_MS))
            elif end["t"] - t0 > ANNEX_A_PWM_OFF_MS:
                # The PWM came back, or the EV left C, with the contactor still closed: it
                # was closed without PWM for longer than Annex A allows.
                out.append(Check("pwm_off_open", "PWM off, EV stays in C -> open", t0, None,
                                 "<= %d ms" % ANNEX_A_PWM_OFF_MS, False,
                                 "still closed %d ms later" % (end["t"] - t0)))
        prev = r
    return out


def _faults(tl):
    """Each injected fault: the firmware raises its fault, opens at once if it was charging,
    and the latching ones stay until their clearing condition."""
    out = []
    for s in tl.steps:
        if s["k"] != "fault" or s["name"] not in INJECTED_FAULT_CODES:
            continue
        if s["name"] != "temperature" and not s.get("on"):
            continue
        name = s["name"]
        code = INJECTED_FAULT_CODES[name]
        t0 = s["t"]
        if name == "temperature":
            continue                # _overtemp() measures from the threshold crossing
        if name in ("contactor_welded", "contactor_stuck_open", "ev_overdraw",
                    "meter_silent", "meter_garbage", "network_stall", "rcd_selftest_fail"):
            continue                # handled below / elsewhere with their own start time
        was_closed = _closed_at(tl, t0)
        t0 = _detectable_from(tl, name, t0)
        if t0 is None:
            continue                # never observable while injected (no PWM, EV hidden, ...)
        t_raised, r = tl.first_from(t0, lambda x: code in x["faults"])
        if r is None:
            out.append(Check("fault_raised", "%s -> %s raised" % (name, code), t0, None,
                             "<= %d ms" % ANNEX_A_OPEN_MS, False, "never raised"))
            continue
        if was_closed:
            out.append(_open_within(tl, "%s_open" % _SEQ[name],
                                    "%s while charging -> open at once" % code, t0,
                                    ANNEX_A_OPEN_MS))
            t_f, _r = tl.first_from(t0, lambda x: x["duty"] == 0)
            if t_f is None or t_f - t0 > ANNEX_A_OPEN_MS:
                # Table A.5: after a fault while charging the EVSE signals F (held >= 300 ms,
                # measured by _f_hold once F is there).
                out.append(Check("fault_f_hold", "%s while charging -> state F" % code, t0,
                                 None if t_f is None else t_f - t0,
                                 ">= %d ms" % ANNEX_A_F_HOLD_MS, False,
                                 "state F not entered within %d ms" % ANNEX_A_OPEN_MS))
        else:
            dt = t_raised - t0
            out.append(Check("fault_raised", "%s -> %s raised" % (name, code), t0, dt,
                             "<= %d ms" % ANNEX_A_OPEN_MS, dt <= ANNEX_A_OPEN_MS))
        if name in ("diode_short", "rcd_trip"):
            out.append(_latched_until_a(tl, t_raised, code))
    out += _welded(tl)
    out += _not_closing(tl)
    out += _selftest(tl)
    out += _meter(tl)
    out += _network(tl)
    return out


_SEQ = {"diode_short": "diode_fault", "cp_short_pe": "cp_short", "rcd_trip": "rcd_trip"}
_CONFIRM_MS = 30            # the station confirms a pilot level on two readings (+ a tick)


def _ev_at(tl, t, prev):
    """What the EV signals at t: the tick record at t if there is one (steps at t act
    before it), else the last one before."""
    r = tl.at(t)
    return (r or prev)["ev"]


def _detectable_from(tl, name, t0):
    """When an injected pilot fault first becomes observable to the station, or None.

    A diode can only be checked while the PWM runs and the EV's circuit is on the line; a
    CP short is seen once the station stops driving -12 V itself (it does not sample then);
    a residual-current trip is a board input, seen at once. A fault switched off again
    before the station could confirm it is not expected to be raised."""
    def observable(r, t):
        # r: the tick record whose outputs are on the line at t
        if not tl.fault_on(name, t):
            return False
        if name == "diode_short":
            return (_pwm(r["duty"]) and r["ev"] in ("B", "C", "D")
                    and not tl.pilot_hidden(t) and not tl.fault_on("cp_short_pe", t))
        if name == "cp_short_pe":
            return r["duty"] != 0
        return True
    # At t0 the line still carries what the previous iteration put on it.
    prev = tl.before(t0)
    if prev is not None and observable(dict(prev, ev=_ev_at(tl, t0, prev)), t0):
        start = t0
    else:
        r = tl.first(t0, lambda x: observable(x, x["t"]) or not tl.fault_on(name, x["t"]))
        if r is None or not observable(r, r["t"]):
            return None
        start = r["t"]
    off = next((s["t"] for s in tl.steps if s["t"] > start and s["k"] == "fault"
                and s["name"] == name and not s.get("on")), None)
    if off is not None and off - start < _CONFIRM_MS:
        return None
    return start


def _latched_until_a(tl, t0, code):
    """The fault stays and the contactor stays open until the EV is unplugged (state A)."""
    seq = "diode_latched" if code == "DIODE_FAULT" else "rcd_latched"
    for r in tl.ticks:
        if r["t"] < t0:
            continue
        # Unplugged - or the EV's circuit vanished from the line (CP open, PE lost), which
        # the station cannot tell from an unplug.
        if r["state"] == "A" and (r["ev"] == "A" or tl.pilot_hidden(r["t"])):
            held = r["t"] - t0
            return Check(seq, "%s latched until A" % code, t0, held, "until A", True,
                         "unplug at %d ms" % r["t"])
        if code not in r["faults"]:
            return Check(seq, "%s latched until A" % code, t0, r["t"] - t0, "until A", False,
                         "cleared while still plugged")
        if r["contactor"]:
            return Check(seq, "%s latched until A" % code, t0, r["t"] - t0, "until A", False,
                         "contactor closed again")
    return Check(seq, "%s latched until A" % code, t0, tl.end_ms - t0, "until A", True,
                 "held to the end (no unplug)")


def _welded(tl):
    out = []
    limit = tl.cfg("welded_check_ms", 1000) + 100
    injected = tl.injected("contactor_welded")
    if not injected:
        return out
    t_inj = injected[0]
    opened = tl.first(t_inj, lambda x: not x["contactor"] and x["mirror"])
    if opened is None:
        return out
    r = tl.first(opened["t"], lambda x: "CONTACTOR_WELDED" in x["faults"])
    dt = None if r is None else r["t"] - opened["t"]
    out.append(Check("welded_detected", "opened, mirror stays closed -> CONTACTOR_WELDED",
                     opened["t"], dt, "<= %d ms (config)" % limit,
                     dt is not None and dt <= limit))
    if r is not None:
        again = tl.first(r["t"], lambda x: x["contactor"] == 1)
        out.append(Check("welded_never_recloses", "after CONTACTOR_WELDED: never re-closes",
                         r["t"], None if again is None else again["t"] - r["t"], "never",
                         again is None))
    return out


def _not_closing(tl):
    """Coil on, mirror stays open: CONTACTOR_NOT_CLOSING within the close timeout, counted
    from the coil-on that timed out (an EV that pauses restarts the wait)."""
    out = []
    limit = tl.cfg("contactor_close_timeout_ms", 1000) + 100
    injected = tl.injected("contactor_stuck_open")
    if not injected:
        return out
    since = None            # start of the present coil-on period without the mirror
    for r in tl.ticks:
        if r["t"] < injected[0]:
            continue
        if "CONTACTOR_NOT_CLOSING" in r["faults"]:
            if since is not None:
                dt = r["t"] - since
                out.append(Check("not_closing_detected",
                                 "closed, mirror stays open -> CONTACTOR_NOT_CLOSING", since,
                                 dt, "<= %d ms (config)" % limit, dt <= limit))
                out.append(_open_within(tl, "not_closing_open",
                                        "CONTACTOR_NOT_CLOSING -> coil off", r["t"],
                                        ANNEX_A_OPEN_MS))
            return out
        if r["contactor"] and not r["mirror"]:
            if since is None:
                since = r["t"]
            elif r["t"] - since > limit:
                out.append(Check("not_closing_detected",
                                 "closed, mirror stays open -> CONTACTOR_NOT_CLOSING", since,
                                 None, "<= %d ms (config)" % limit, False, "never raised"))
                return out
        else:
            since = None
    return out


def _selftest(tl):
    out = []
    injected = tl.injected("rcd_selftest_fail")
    if not injected:
        return out
    limit = tl.cfg("rcd_selftest_timeout_ms", 500) + 100
    t0 = injected[0]
    plug = tl.first(t0, lambda x: x["state"] != "A")
    if plug is None:
        return out
    r = tl.first(t0, lambda x: "RCD_SELFTEST_FAILED" in x["faults"])
    dt = None if r is None else r["t"] - plug["t"]
    out.append(Check("rcd_selftest_failed", "residual-current self-test fails -> blocked",
                     plug["t"], dt, "<= %d ms (config)" % limit, dt is not None and dt <= limit))
    closed = tl.first(t0, lambda x: x["contactor"] == 1)
    out.append(Check("rcd_selftest_blocks", "failed self-test: contactor never closes",
                     plug["t"], None if closed is None else closed["t"] - plug["t"], "never",
                     closed is None))
    return out


def _meter(tl):
    out = []
    poll = tl.cfg("meter_poll_ms", 1000)
    limit = (tl.cfg("meter_stale_after", 3) + 1) * (poll + tl.cfg("meter_timeout_ms", 300)
                                                    * (tl.cfg("meter_retries", 1) + 1)) + poll
    for s in tl.steps:
        if s["k"] == "fault" and s["name"] in ("meter_silent", "meter_garbage") and s.get("on"):
            r = tl.first(s["t"], lambda x: "METER_STALE" in x["faults"])
            dt = None if r is None else r["t"] - s["t"]
            out.append(Check("meter_stale", "%s -> METER_STALE reported" % s["name"], s["t"],
                             dt, "<= %d ms (config)" % limit, dt is not None and dt <= limit))
    return out


def _network(tl):
    out = []
    for s in tl.steps:
        if s["k"] == "fault" and s["name"] == "network_stall" and s.get("on"):
            r = tl.first(s["t"], lambda x: "BACKEND_OFFLINE" in x["faults"])
            # The link pings after half the keepalive without traffic and gives up after
            # another half without PINGRESP; the station calls the backend lost once it
            # has been offline for comms_loss_timeout_s.
            ka = tl.cfg("mqtt_keepalive_s", 60) * 1000
            limit = ka + tl.cfg("comms_loss_timeout_s", 300) * 1000 + 2000
            dt = None if r is None else r["t"] - s["t"]
            out.append(Check("network_stall_detected", "broker black-holed -> BACKEND_OFFLINE",
                             s["t"], dt, "<= %d ms (config)" % limit,
                             dt is not None and dt <= limit))
    return out


def _f_hold(tl):
    """After a fault that stops charging while the contactor was closed: F >= 300 ms."""
    out = []
    prev = None
    for r in tl.ticks:
        if (prev is not None and r["duty"] == 0 and prev["duty"] != 0
                and (prev["contactor"] or r["blocking"])):
            if not (prev["contactor"] or _closed_at(tl, r["t"] - 200)):
                prev = r
                continue
            end = tl.first(r["t"] + 1, lambda x: x["duty"] != 0)
            held = (end["t"] if end else tl.end_ms) - r["t"]
            ok = held >= ANNEX_A_F_HOLD_MS or end is None
            out.append(Check("fault_f_hold", "fault while charging -> state F held", r["t"],
                             held, ">= %d ms" % ANNEX_A_F_HOLD_MS, ok,
                             ", ".join(r["faults"])))
        prev = r
    return out


def _ventilation(tl):
    out = []
    if tl.cfg("ventilation_supported", False):
        return out
    inside = None
    for r in tl.ticks:
        if r["ev"] == "D" and inside is None:
            inside = r["t"]
            closed_at_start = bool(r["contactor"])
            if closed_at_start:
                out.append(_open_within(tl, "d_no_ventilation_open",
                                        "D without ventilation -> open", r["t"],
                                        ANNEX_A_OPEN_MS))
        elif r["ev"] != "D" and inside is not None:
            inside = None
        if inside is not None and r["contactor"] and r["t"] - inside > ANNEX_A_OPEN_MS:
            out.append(Check("d_no_power", "D without ventilation: no power", inside,
                             r["t"] - inside, "never closed", False))
            inside = None
    ds = [s["t"] for s in tl.steps if s["k"] == "ev" and s["name"] == "request_ventilation"]
    for t in ds:
        if not any(c.seq == "d_no_power" and c.at_ms >= t for c in out):
            until = tl.first(t + 1, lambda x: x["ev"] != "D")
            span = (until["t"] if until else tl.end_ms) - t
            out.append(Check("d_no_power", "D without ventilation: no power", t, span,
                             "never closed", True, "held open %d ms" % span))
    return out


def _overcurrent(tl):
    out = []
    grace = tl.cfg("overcurrent_grace_ms", 5000)
    margin = tl.cfg("overcurrent_margin_ma", 5000)
    poll = tl.cfg("meter_poll_ms", 1000)
    limit = grace + 2 * poll + 500
    t_over = None
    for r in tl.ticks:
        offer = offered_ma(r["duty"])
        if r["contactor"] and offer and r["current_ma"] > offer + margin:
            t_over = r["t"]
            break
    if t_over is None:
        return out
    r = tl.first(t_over, lambda x: not x["contactor"])
    dt = None if r is None else r["t"] - t_over
    out.append(Check("overcurrent_stop", "EV draws > offered + %d mA -> open" % margin,
                     t_over, dt, "<= %d ms (config)" % limit, dt is not None and dt <= limit))
    return out


def _overtemp(tl):
    out = []
    derate = tl.cfg("temp_derate_dc", 650)
    stop = tl.cfg("temp_stop_dc", 710)
    hot = tl.first(0, lambda x: x.get("temp_dc") is not None and x["temp_dc"] >= derate
                   and x["contactor"])
    if hot is not None:
        prior = tl.before(hot["t"])
        before = offered_ma((prior or hot)["duty"])
        r = tl.first(hot["t"], lambda x: offered_ma(x["duty"]) < before or not x["contactor"])
        dt = None if r is None else r["t"] - hot["t"]
        out.append(Check("overtemp_derate", "temperature >= %d.%d C -> offer reduced"
                         % (derate // 10, derate % 10), hot["t"], dt, "<= 1000 ms (project)",
                         dt is not None and dt <= 1000))
    hotter = tl.first(0, lambda x: x.get("temp_dc") is not None and x["temp_dc"] >= stop)
    if hotter is not None and _closed_at(tl, hotter["t"] - 1000):
        out.append(_open_within(tl, "overtemp_stop", "temperature >= %d.%d C -> open"
                                % (stop // 10, stop % 10), hotter["t"], 1000))
        out[-1].limit += " (project)"
    return out


def _limit_applied(tl, records):
    """A backend current limit below the offer: the PWM offers at most the limit. Decreases
    protect the installation, so they apply at once (project limit: 1 s after delivery)."""
    out = []
    for s in tl.steps:
        if s["k"] != "backend" or s["name"] != "set_limit" or s.get("skipped"):
            continue
        limit_ma = (s.get("args") or {}).get("limit_ma")
        if not limit_ma:
            continue
        before = tl.at(s["t"])
        if before is None or not offered_ma(before["duty"]) \
                or offered_ma(before["duty"]) <= limit_ma:
            continue
        delivered = next((m for m in records if m.get("k") == "mqtt" and m["t"] >= s["t"]
                          and m.get("topic") == "cmd"
                          and isinstance(m.get("payload"), dict)
                          and m["payload"].get("id") == s.get("id")), None)
        t0 = delivered["t"] if delivered else s["t"]
        r = tl.first(t0, lambda x: offered_ma(x["duty"]) <= limit_ma)
        dt = None if r is None else r["t"] - t0
        out.append(Check("limit_applied", "backend limit %d A -> PWM offers <= limit"
                         % (limit_ma // 1000), t0, dt, "<= 1000 ms (project)",
                         dt is not None and dt <= 1000))
    return out


def _duty_within_limits(tl):
    """Whenever the PWM runs, the current it codes (as the EV reads it) stays within the
    installation's max_current_ma and the cable's PP rating (IEC 61851-1 Annex B), as they
    stand at that moment (set_config and a change of cable move them)."""
    pwm = [r for r in tl.ticks if _pwm(r["duty"])]
    if not pwm:
        return []
    limits = [tl.current_limit_ma(r["t"]) for r in pwm]
    worst = None
    for r, lim in zip(pwm, limits):
        over = offered_ma(r["duty"]) - lim
        if worst is None or over > worst[0]:
            worst = (over, r, lim)
    over, r, lim = worst
    lo, hi = min(limits), max(limits)
    text = "<= %d A" % (hi // 1000) if lo == hi else "<= %d..%d A (as set)" % (lo // 1000,
                                                                             hi // 1000)
    got = offered_ma(r["duty"])
    note = "highest %.1f A at %d ms" % (got / 1000, r["t"]) if over <= 0 else \
        "%.1f A at %d ms over the %d A then in force" % (got / 1000, r["t"], lim // 1000)
    if over <= 0 and lo != hi:
        best = max(pwm, key=lambda x: offered_ma(x["duty"]))
        note = "highest %.1f A at %d ms" % (offered_ma(best["duty"]) / 1000, best["t"])
    return [Check("duty_within_limits", "PWM offers <= installation and cable rating",
                  pwm[0]["t"], None, text, over <= 0, note)]


def _wake_up(tl):
    """An EV left in B2 without requesting is woken once per plug-in: after wake_up_after_ms
    the PWM stops (x1, or F) for wake_up_hold_ms, then comes back (Annex A practice)."""
    out = []
    if not tl.cfg("wake_up_enabled", True):
        return out
    after = tl.cfg("wake_up_after_ms", 30000)
    hold = tl.cfg("wake_up_hold_ms", 3000)
    b2_since = None
    i = 0
    ticks = tl.ticks
    while i < len(ticks):
        r = ticks[i]
        if r["ev"] == "B" and _pwm(r["duty"]) and not r["blocking"]:
            if b2_since is None:
                b2_since = r["t"]
        elif b2_since is not None and r["ev"] == "B" and r["duty"] in (0, 1000) \
                and not r["blocking"] and r["offered_ma"]:
            start = r["t"]
            end = next((x for x in ticks[i + 1:] if _pwm(x["duty"]) or x["ev"] != "B"), None)
            held = (end["t"] if end else tl.end_ms) - start
            waited = start - b2_since
            ok = after <= waited <= after + 100 and (end is None or hold - 20 <= held <= hold + 100)
            out.append(Check("wake_up", "EV idle in B2 -> wake-up (%s)" % (
                "F" if r["duty"] == 0 else "x1"), b2_since, waited,
                "%d..%d ms (config)" % (after, after + 100), ok, "held %d ms" % held))
            b2_since = None
            if end is None:
                break
            i = ticks.index(end)
            continue
        else:
            b2_since = None
        i += 1
    return out


def all_pass(checks):
    return all(c.ok for c in checks)


def format_report(checks):
    lines = ["IEC 61851-1 Annex A report (times in simulated ms)",
             "  %-52s %9s %9s  %-26s %s" % ("sequence", "at", "measured", "limit", "result")]
    for c in checks:
        m = "-" if c.measured_ms is None else "%d" % c.measured_ms
        lines.append("  %-52s %9d %9s  %-26s %s%s" % (
            c.title[:52], c.at_ms, m, c.limit, "pass" if c.ok else "FAIL",
            ("  (" + c.note + ")") if c.note else ""))
    if not checks:
        lines.append("  (no sequence in this trace)")
    n_fail = sum(1 for c in checks if not c.ok)
    lines.append("  %d sequences, %d passed, %d failed" % (len(checks), len(checks) - n_fail,
                                                          n_fail))
    return "\n".join(lines)

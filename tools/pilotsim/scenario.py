"""Scenario files: parse and validate (docs/scenarios.md is the reference).

A scenario is one JSON object: settings, expectations and a list of timed steps. Parsing
checks everything (names, types, ranges, time order) and raises ScenarioError with the
step number and the reason, so a bad file fails before any peer or firmware starts.

Runs on CPython (the orchestrator checks the file) and on the MicroPython unix port (the
runner plays it), so it uses only what both have.
"""
import json

MAX_DURATION_MS = 3600 * 1000
MAX_STEPS = 500

# EV actions: what the vehicle does with its plug and S2 switch, and how much it draws.
EV_ACTIONS = ("plug", "unplug", "request", "request_ventilation", "pause", "resume", "draw")

# Fault names: injected into the model, the board or a peer. Each takes "on" (default true);
# "temperature" takes to_dc / over_ms instead.
FAULTS = (
    "diode_short",          # EV diode shorted: the CP's negative half mirrors the positive
    "cp_short_pe",          # CP wire shorted to PE: state E
    "cp_open",              # CP wire broken: the EVSE sees +12 / -12 V (like no EV)
    "pe_loss",              # PE broken: the EV circuit and the cable's Rc float
    "rcd_trip",             # residual-current monitor trips
    "rcd_selftest_fail",    # residual-current monitor does not answer its test input
    "contactor_welded",     # main contacts stay closed once closed
    "contactor_stuck_open",  # main contacts never close
    "meter_silent",         # the meter peer stops answering
    "meter_garbage",        # the meter peer's answers arrive corrupted (bad CRC)
    "ev_overdraw",          # the EV draws its wanted current whatever is offered
    "network_stall",        # the broker path is black-holed (TCP open, nothing passes)
    "power_cut",            # mains gone (firmware stops, coil drops); off = power back, boot
    "temperature",          # temperature ramp: to_dc (0.1 C) over over_ms
)

# Backend commands are those of firmware/commands.py; their arguments are checked there.
PEER_CHOICES = ("required", "optional", "none")

_TOP_KEYS = ("name", "description", "duration_ms", "seed", "config", "ev", "front_end",
             "broker", "meter", "start_ticks", "expect", "steps", "tick_ms",
             "no_broker_config")
_EV_KEYS = ("phases", "draw_a", "cable_a", "stop_ms")
_EXPECT_KEYS = ("faults", "states", "sequences", "energy_wh_min", "energy_wh_max",
                "no_faults", "min_mqtt_messages", "replies_ok", "replies_error",
                "session_reasons")
_FRONT_KEYS = ("noise_mv",)
_CABLES = (13, 20, 32, 63)


class ScenarioError(ValueError):
    pass


def _is_int(v):
    return isinstance(v, int) and v is not True and v is not False


def _int(where, v, low, high):
    if not _is_int(v):
        raise ScenarioError("%s: expected an integer" % where)
    if v < low or v > high:
        raise ScenarioError("%s: %d out of range %d..%d" % (where, v, low, high))
    return v


def _bool(where, v):
    if v is True or v is False:
        return v
    raise ScenarioError("%s: expected true or false" % where)


def _str(where, v, maxlen=200):
    if not isinstance(v, str) or not v or len(v) > maxlen:
        raise ScenarioError("%s: expected a string of 1..%d characters" % (where, maxlen))
    return v


def _strlist(where, v):
    if not isinstance(v, list):
        raise ScenarioError("%s: expected a list of strings" % where)
    for i, s in enumerate(v):
        _str("%s[%d]" % (where, i), s, 64)
    return v


def _only(where, obj, allowed):
    """obj is an object whose keys are all in `allowed` (empty: any keys)."""
    if not isinstance(obj, dict):
        raise ScenarioError("%s: expected an object" % where)
    if not allowed:
        return True
    for k in obj:
        if k not in allowed:
            raise ScenarioError("%s: unknown key '%s'%s (known: %s)"
                                % (where, k, _suggest(k, allowed), ", ".join(allowed)))
    return True


class Step:
    """One timed action. `kind` is "ev", "fault", "backend", "meter" or "mark"."""

    def __init__(self, at_ms, kind, name, args):
        self.at_ms = at_ms
        self.kind = kind
        self.name = name
        self.args = args

    def __repr__(self):
        return "Step(%d, %s, %s, %r)" % (self.at_ms, self.kind, self.name, self.args)


class Scenario:
    def __init__(self):
        self.name = ""
        self.description = ""
        self.duration_ms = 0
        self.seed = 1
        self.tick_ms = 10
        self.config = {}
        self.no_broker_config = {}
        self.phases = 3
        self.draw_ma = 16000
        self.cable_a = 32
        self.stop_ms = 1000
        self.noise_mv = 3
        self.broker = "optional"
        self.meter = True
        self.start_ticks = 0
        self.expect = {}
        self.steps = []

    def to_dict(self):
        """The checked scenario as plain data (the runner's input)."""
        return {
            "name": self.name, "description": self.description,
            "duration_ms": self.duration_ms, "seed": self.seed, "tick_ms": self.tick_ms,
            "config": self.config, "no_broker_config": self.no_broker_config, "ev": {"phases": self.phases,
                                          "draw_a": self.draw_ma // 1000,
                                          "cable_a": self.cable_a, "stop_ms": self.stop_ms},
            "front_end": {"noise_mv": self.noise_mv}, "broker": self.broker,
            "meter": self.meter, "start_ticks": self.start_ticks, "expect": self.expect,
            "steps": [_step_dict(s) for s in self.steps],
        }

    def uses_backend(self):
        for s in self.steps:
            if s.kind == "backend" or (s.kind == "fault" and s.name == "network_stall"):
                return True
        return False


def _step_dict(s):
    d = {"at": s.at_ms}
    if s.kind == "ev":
        d["ev"] = s.name
    elif s.kind == "fault":
        d["fault"] = s.name
    elif s.kind == "backend":
        d["backend"] = s.name
    elif s.kind == "meter":
        d["meter"] = s.name
    else:
        d["mark"] = s.name
    for k in s.args:
        d[k] = s.args[k]
    return d


def _parse_step(i, raw, prev_ms, duration_ms):
    where = "steps[%d]" % i
    if not isinstance(raw, dict):
        raise ScenarioError("%s: expected an object" % where)
    if "at" in raw and "after" in raw:
        raise ScenarioError("%s: give 'at' or 'after', not both" % where)
    if "at" in raw:
        at = _int(where + ".at", raw["at"], 0, MAX_DURATION_MS)
    elif "after" in raw:
        at = prev_ms + _int(where + ".after", raw["after"], 0, MAX_DURATION_MS)
    else:
        raise ScenarioError("%s: needs 'at' (ms from start) or 'after' (ms after the"
                            " previous step)" % where)
    if at < prev_ms:
        raise ScenarioError("%s: at %d ms is before the previous step (%d ms): steps must"
                            " be in time order" % (where, at, prev_ms))
    if at > duration_ms:
        raise ScenarioError("%s: at %d ms is after the end (duration_ms %d)"
                            % (where, at, duration_ms))
    kinds = [k for k in ("ev", "fault", "backend", "meter", "mark") if k in raw]
    if len(kinds) != 1:
        raise ScenarioError("%s: needs exactly one of ev, fault, backend, meter, mark" % where)
    kind = kinds[0]
    name = raw[kind]
    args = {}
    if kind == "ev":
        _only(where, raw, ("at", "after", "ev", "amps", "cable_a"))
        _known(where, name, EV_ACTIONS, "ev action")
        if name == "draw":
            if "amps" not in raw:
                raise ScenarioError("%s: draw needs 'amps'" % where)
            args["amps"] = _int(where + ".amps", raw["amps"], 0, 80)
        elif "amps" in raw:
            raise ScenarioError("%s: 'amps' only goes with draw" % where)
        if "cable_a" in raw:
            # Another cable with this plug-in (or, on unplug, the one the next plug uses).
            if name not in ("plug", "unplug"):
                raise ScenarioError("%s: 'cable_a' only goes with plug or unplug" % where)
            args["cable_a"] = _cable(where + ".cable_a", raw["cable_a"])
    elif kind == "fault":
        _known(where, name, FAULTS, "fault")
        if name == "temperature":
            _only(where, raw, ("at", "after", "fault", "to_dc", "over_ms"))
            if "to_dc" not in raw:
                raise ScenarioError("%s: temperature needs 'to_dc' (0.1 C)" % where)
            args["to_dc"] = _int(where + ".to_dc", raw["to_dc"], -400, 1500)
            args["over_ms"] = _int(where + ".over_ms", raw.get("over_ms", 0), 0,
                                   MAX_DURATION_MS)
        else:
            _only(where, raw, ("at", "after", "fault", "on"))
            args["on"] = _bool(where + ".on", raw.get("on", True))
    elif kind == "backend":
        _only(where, raw, ("at", "after", "backend", "args", "raw", "id"))
        _str(where + ".backend", name, 32)
        if "raw" in raw:
            # A deliberately malformed command, sent as is: tests the firmware's rejection.
            args["raw"] = _str(where + ".raw", raw["raw"], 1024)
        else:
            a = raw.get("args", {})
            if not isinstance(a, dict):
                raise ScenarioError("%s.args: expected an object" % where)
            args["args"] = a
            _check_command(where, name, a)
        if "id" in raw:
            args["id"] = _str(where + ".id", raw["id"], 64)
    elif kind == "meter":
        _only(where, raw, ("at", "after", "meter", "voltage_v", "energy_wh"))
        if name != "set":
            raise ScenarioError("%s: meter action must be 'set'" % where)
        if "voltage_v" in raw:
            args["voltage_v"] = _int(where + ".voltage_v", raw["voltage_v"], 0, 500)
        if "energy_wh" in raw:
            args["energy_wh"] = _int(where + ".energy_wh", raw["energy_wh"], 0, 10 ** 9)
        if not args:
            raise ScenarioError("%s: meter set needs voltage_v and/or energy_wh" % where)
    else:
        _only(where, raw, ("at", "after", "mark"))
        _str(where + ".mark", name, 64)
    return Step(at, kind, name, args)


def _check_command(where, name, args):
    # The firmware's own parser decides what a valid command is.
    try:
        from firmware import command_parse, commands
    except ImportError:
        return
    names = tuple(sorted(command_parse.COMMANDS))
    if names and name not in names:
        raise ScenarioError("%s: backend command rejected: unknown command '%s'%s (known: %s)"
                            % (where, name, _suggest(name, names), ", ".join(names)))
    payload = json.dumps({"v": 1, "id": "check", "cmd": name, "args": args})
    try:
        commands.parse(payload.encode())
    except ValueError as e:
        raise ScenarioError("%s: backend command rejected: %s" % (where, e))


# Annex A sequence ids the report (annexa.py) can list: what expect.sequences may name.
SEQUENCES = (
    "plug_in", "close_in_c", "close_allowed", "closed_without_pwm", "blocking_fault_open",
    "c_to_b_open", "c_to_a_open", "cp_open_open", "pe_loss_open", "power_cut_open",
    "pwm_off_open", "diode_fault_open", "cp_short_open", "rcd_trip_open", "fault_raised",
    "fault_f_hold", "diode_latched", "rcd_latched", "d_no_power", "d_no_ventilation_open",
    "welded_detected", "welded_never_recloses", "not_closing_detected", "not_closing_open",
    "rcd_selftest_failed", "rcd_selftest_blocks", "overcurrent_stop", "overtemp_derate",
    "overtemp_stop", "meter_stale", "network_stall_detected", "duty_within_limits",
    "wake_up", "limit_applied",
)


def _state_names():
    # The charge states, and OFF: what the trace shows during a power cut.
    try:
        from firmware.states import NAMES
    except ImportError:
        return None
    return tuple(NAMES) + ("OFF",)


def _fault_names():
    try:
        from firmware.faults import all_faults
    except ImportError:
        return None
    return tuple(f.name for f in all_faults())


def _distance(a, b):
    """Edit distance (insert, delete, substitute), for "did you mean"."""
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
        prev = cur
    return prev[len(b)]


def _suggest(word, known):
    if not isinstance(word, str):
        return ""
    best = None
    for k in known:
        d = _distance(word.lower(), k.lower())
        if best is None or d < best[0]:
            best = (d, k)
    if best is not None and best[0] <= max(2, len(word) // 4):
        return " (did you mean '%s'?)" % best[1]
    return ""


def _known(where, value, known, what):
    if value not in known:
        raise ScenarioError("%s: unknown %s '%s'%s (known: %s)"
                            % (where, what, value, _suggest(value, known), ", ".join(known)))


class _Errors:
    """Collects every error of a file, so one message lists them all."""

    def __init__(self):
        self.items = []

    def check(self, fn, *args):
        try:
            return fn(*args)
        except ScenarioError as e:
            self.items.append(e.args[0])
            return None


def parse(data, source="scenario"):
    """A Scenario from a dict (already decoded JSON). Raises ScenarioError naming every
    error with its place (its `errors` attribute lists them)."""
    errs = _Errors()
    sc = errs.check(_parse, data, errs)
    if errs.items:
        raise _error(source, errs.items)
    return sc


def _error(source, items):
    if len(items) == 1:
        e = ScenarioError("%s: %s" % (source, items[0]))
    else:
        e = ScenarioError("%s: %d errors:\n%s" % (source, len(items), "\n".join(
            "  " + i for i in items)))
    e.errors = items
    return e


def _parse(data, errs):
    _only("scenario", data, ())      # an object at all
    for k in data:
        if k not in _TOP_KEYS:
            errs.items.append("scenario: unknown key '%s'%s (known: %s)"
                              % (k, _suggest(k, _TOP_KEYS), ", ".join(_TOP_KEYS)))
    sc = Scenario()
    sc.name = errs.check(_name, data.get("name")) or "scenario"
    d = data.get("description", "")
    if isinstance(d, str):
        sc.description = d
    else:
        errs.items.append("description: expected a string")
    if "duration_ms" not in data:
        errs.items.append("duration_ms: required")
    else:
        sc.duration_ms = errs.check(_int, "duration_ms", data["duration_ms"], 100,
                                    MAX_DURATION_MS) or MAX_DURATION_MS
    sc.seed = _or(errs.check(_int, "seed", data.get("seed", 1), 0, 0x3FFFFFFF), 1)
    sc.tick_ms = _or(errs.check(_int, "tick_ms", data.get("tick_ms", 10), 1, 100), 10)
    sc.start_ticks = _or(errs.check(_int, "start_ticks", data.get("start_ticks", 0), 0,
                                    (1 << 30) - 1), 0)
    sc.config = errs.check(_config, data.get("config", {})) or {}
    sc.no_broker_config = errs.check(_no_broker_config, sc.config,
                                     data.get("no_broker_config", {})) or {}
    ev = data.get("ev", {})
    if errs.check(_only, "ev", ev, _EV_KEYS) is None and isinstance(ev, dict):
        pass
    if not isinstance(ev, dict):
        ev = {}
    sc.phases = _or(errs.check(_int, "ev.phases", ev.get("phases", 3), 1, 3), 3)
    sc.draw_ma = _or(errs.check(_int, "ev.draw_a", ev.get("draw_a", 16), 0, 80), 16) * 1000
    sc.cable_a = _or(errs.check(_cable, "ev.cable_a", ev.get("cable_a", 32)), 32)
    sc.stop_ms = _or(errs.check(_int, "ev.stop_ms", ev.get("stop_ms", 1000), 0, 3000), 1000)
    fe = data.get("front_end", {})
    errs.check(_only, "front_end", fe, _FRONT_KEYS)
    if not isinstance(fe, dict):
        fe = {}
    sc.noise_mv = _or(errs.check(_int, "front_end.noise_mv", fe.get("noise_mv", 3), 0, 50), 3)
    sc.broker = data.get("broker", "optional")
    if sc.broker not in PEER_CHOICES:
        errs.items.append("broker: one of %s" % ", ".join(PEER_CHOICES))
    sc.meter = _or(errs.check(_bool, "meter", data.get("meter", True)), True)
    sc.expect = _expect(data.get("expect", {}), errs)
    steps = data.get("steps")
    if not isinstance(steps, list) or not steps:
        errs.items.append("steps: expected a non-empty list")
        steps = []
    elif len(steps) > MAX_STEPS:
        errs.items.append("steps: at most %d" % MAX_STEPS)
    prev = 0
    for i, raw in enumerate(steps):
        st = errs.check(_parse_step, i, raw, prev, sc.duration_ms)
        if st is not None:
            prev = st.at_ms
            sc.steps.append(st)
    for i, st in enumerate(sc.steps):
        if not sc.meter and (st.kind == "meter" or (st.kind == "fault"
                                                    and st.name.startswith("meter_"))):
            errs.items.append("steps[%d]: needs the meter (\"meter\": true)" % i)
        if sc.broker == "none" and (st.kind == "backend" or (
                st.kind == "fault" and st.name == "network_stall")):
            errs.items.append("steps[%d]: needs a broker (\"broker\" is \"none\")" % i)
    return sc


def _or(v, default):
    return default if v is None else v


def _name(v):
    name = _str("name", v, 64)
    for ch in name:
        if not (ch.isalpha() or ch.isdigit() or ch in "-_."):
            raise ScenarioError("name: letters, digits, - _ . only")
    return name


def _cable(where, v):
    if not _is_int(v) or v not in _CABLES:
        raise ScenarioError("%s: one of 13, 20, 32, 63" % where)
    return v


def _config(cfg):
    if not isinstance(cfg, dict):
        raise ScenarioError("config: expected an object")
    try:
        from firmware.config import Config
    except ImportError:
        return cfg
    try:
        Config(cfg)
    except ValueError as e:
        raise ScenarioError("config: %s" % e.args[0])
    return cfg


def _no_broker_config(cfg, nb):
    if not isinstance(nb, dict):
        raise ScenarioError("no_broker_config: expected an object")
    try:
        from firmware.config import Config
    except ImportError:
        return nb
    try:
        Config(cfg).update(nb)
    except ValueError as e:
        raise ScenarioError("no_broker_config: %s" % e.args[0])
    return nb


def _expect(exp, errs):
    if errs.check(_only, "expect", exp, ()) is None and not isinstance(exp, dict):
        return {}
    for k in exp:
        if k not in _EXPECT_KEYS:
            errs.items.append("expect: unknown key '%s'%s (known: %s)"
                              % (k, _suggest(k, _EXPECT_KEYS), ", ".join(_EXPECT_KEYS)))
    names = {"faults": (_fault_names(), "fault"), "states": (_state_names(), "state"),
             "sequences": (SEQUENCES, "sequence")}
    for k in ("faults", "states", "sequences", "replies_error", "session_reasons"):
        if k not in exp:
            continue
        if errs.check(_strlist, "expect." + k, exp[k]) is None:
            continue
        known, what = names.get(k, (None, None))
        if known:
            for i, v in enumerate(exp[k]):
                errs.check(_known, "expect.%s[%d]" % (k, i), v, known, what)
    for k in ("energy_wh_min", "energy_wh_max", "min_mqtt_messages"):
        if k in exp:
            errs.check(_int, "expect." + k, exp[k], 0, 10 ** 9)
    for k in ("no_faults", "replies_ok"):
        if k in exp:
            errs.check(_bool, "expect." + k, exp[k])
    return exp


MASK = "***"


def _is_secret_key(key):
    try:
        from firmware.config import is_secret
    except ImportError:
        return False
    return is_secret(key)


def secret_values(sc, config=None):
    """Every secret value the scenario configures (config, no_broker_config, and the
    set_config commands it sends): no output may show one."""
    found = []

    def take(d):
        if isinstance(d, dict):
            for k in d:
                v = d[k]
                if _is_secret_key(k) and isinstance(v, str) and v and v not in found:
                    found.append(v)
    take(sc.config)
    take(sc.no_broker_config)
    take(config)
    for st in sc.steps:
        if st.kind == "backend":
            a = st.args.get("args")
            if isinstance(a, dict):
                take(a.get("changes"))
    # longest first, so a secret containing another is masked whole
    found.sort(key=lambda v: -len(v))
    return tuple(found)


def mask(obj, secrets=()):
    """A copy of obj (decoded JSON) with secrets masked: the value of every secret config
    key, and every occurrence of a configured secret value in any string."""
    if isinstance(obj, dict):
        out = {}
        for k in obj:
            v = obj[k]
            if _is_secret_key(k) and isinstance(v, str) and v:
                out[k] = MASK
            else:
                out[k] = mask(v, secrets)
        return out
    if isinstance(obj, list):
        return [mask(v, secrets) for v in obj]
    if isinstance(obj, str) and secrets:
        for s in secrets:
            if s in obj:
                obj = obj.replace(s, MASK)
    return obj


def loads(text, source="scenario"):
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ScenarioError("%s: not valid JSON (%s)" % (source, e))
    return parse(data, source)


def load(path):
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        reason = e.args[1] if len(e.args) > 1 else "cannot be read (%s)" % e
        raise _error(path, ["cannot read the file: %s" % reason])
    return loads(text, path)

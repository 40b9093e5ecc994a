"""Backend commands: parse, validate, dispatch to the station, build the reply.

A command is one JSON object on <prefix>/<station_id>/cmd:
    {"v": 1, "id": "c-17", "cmd": "set_limit", "args": {"limit_ma": 16000, "expires_s": 600}}
and is answered on .../reply with the same "id" (see firmware/messages.py, docs/mqtt.md).

Everything that can be checked without the station's state is checked here; a command that
fails a check is answered with an error and never reaches the station. Whether a valid
command makes sense in the current state is the station's decision: its method returns None
(done) or a reason string, and the reply carries that reason.

The station implements CommandTarget. Methods are called from the control loop (inside
MqttLink.step), so they must not block; cmd_reboot and cmd_selftest should schedule the work
and return, so that the reply can still be sent.
"""
from firmware import config
from firmware import messages
from firmware import strictjson
from firmware.auth import ID_TAG_MAX, IdTagError, check_id_tag
from firmware.pilot import CURRENT_MIN_MA
import json

MAX_COMMAND_BYTES = 1024
MAX_ID_LEN = 64              # characters (Unicode code points), not bytes
MAX_ID_TAG_LEN = ID_TAG_MAX  # as firmware/auth.py: the tags the reader path asks the backend about
MAX_LIMIT_MA = 80000
MAX_EXPIRES_S = 7 * 86400
MAX_CONFIG_KEYS = 32
MAX_FAULT_NAME_LEN = 32


class CommandError(ValueError):
    pass


class CommandTarget:
    """What the station provides to the command dispatcher. Every method returns None on
    success or a short reason string when the command makes no sense now (for example
    "no EV connected"), unless documented otherwise. now_ms is ticks_ms()."""

    def cmd_start(self, now_ms):
        """Start (or resume) charging."""
        raise NotImplementedError

    def cmd_stop(self, now_ms):
        """Stop charging (a pause: the session stays open until the EV leaves)."""
        raise NotImplementedError

    def cmd_authorize(self, id_tag, now_ms):
        """Authorize `id_tag` (str, 1..36 printable ASCII characters) as if presented locally."""
        raise NotImplementedError

    def cmd_set_limit(self, limit_ma, expires_s, now_ms):
        """Backend current limit: 0..80000 mA, where anything below 6000 pauses the charge
        (the charger's rule: no duty offers less than 6 A); expires_s None = until
        changed, else 1..604800 s after which the limit lapses."""
        raise NotImplementedError

    def cmd_set_availability(self, operative, now_ms):
        """True = operative, False = inoperative (after any running session ends)."""
        raise NotImplementedError

    def cmd_get_config(self, keys):
        """Returns a dict of config values, secrets masked (Config.public(keys)); keys None
        means all."""
        raise NotImplementedError

    def cmd_set_config(self, changes):
        """Apply `changes` with Config.update (all or nothing) and persist; the
        ConfigError message is the reason."""
        raise NotImplementedError

    def cmd_reboot(self, now_ms):
        """Schedule a clean restart (after the reply has gone out)."""
        raise NotImplementedError

    def cmd_selftest(self, now_ms):
        """Schedule the self-test; its result is reported as an event."""
        raise NotImplementedError

    def cmd_diagnostics(self):
        """Returns a dict snapshot for troubleshooting (no secrets)."""
        raise NotImplementedError

    def cmd_clear_fault(self, name, now_ms):
        """Clear latched fault `name` if the fault table allows clearing it remotely."""
        raise NotImplementedError


# Argument kinds
_INT = 0
_STR = 1
_BOOL = 2
_KEYS = 3      # list of config keys
_CHANGES = 4   # object of config key: value
_CHOICE = 5    # str from a tuple
_ID_TAG = 6    # an idTag (firmware/auth.py check_id_tag)

_REQUIRED = True
_OPTIONAL = False

# name: ((arg, kind, low, high, required), ...)
_COMMANDS = {
    "start": (),
    "stop": (),
    "authorize": (("id_tag", _ID_TAG, 1, MAX_ID_TAG_LEN, _REQUIRED),),
    "set_limit": (("limit_ma", _INT, 0, MAX_LIMIT_MA, _REQUIRED),
                  ("expires_s", _INT, 1, MAX_EXPIRES_S, _OPTIONAL)),
    "set_availability": (("availability", _CHOICE, ("operative", "inoperative"), None,
                          _REQUIRED),),
    "get_config": (("keys", _KEYS, 1, MAX_CONFIG_KEYS, _OPTIONAL),),
    "set_config": (("changes", _CHANGES, 1, MAX_CONFIG_KEYS, _REQUIRED),),
    "reboot": (),
    "selftest": (),
    "diagnostics": (),
    "clear_fault": (("name", _STR, 1, MAX_FAULT_NAME_LEN, _REQUIRED),),
}

COMMAND_NAMES = tuple(sorted(_COMMANDS))


def _is_int(v):
    # bool is not an int here: true for a current is a mistake, not 1 mA.
    return isinstance(v, int) and v is not True and v is not False


def _printable(s):
    for ch in s:
        if ch < " " or ch == "\x7f":
            return False
    return True


def _check_arg(cmd, name, kind, low, high, value):
    where = "%s.%s" % (cmd, name)
    if kind == _INT:
        if not _is_int(value):
            raise CommandError("%s: expected an integer" % where)
        if value < low or value > high:
            raise CommandError("%s: %d out of range %d..%d" % (where, value, low, high))
        return value
    if kind == _BOOL:
        if value is not True and value is not False:
            raise CommandError("%s: expected true or false" % where)
        return value
    if kind == _STR:
        if not isinstance(value, str):
            raise CommandError("%s: expected a string" % where)
        if len(value) < low or len(value) > high:
            raise CommandError("%s: length must be %d..%d" % (where, low, high))
        if not _printable(value):
            raise CommandError("%s: control characters not allowed" % where)
        return value
    if kind == _ID_TAG:
        try:
            return check_id_tag(value)
        except IdTagError as e:
            raise CommandError("%s: %s" % (where, e.args[0]))
    if kind == _CHOICE:
        if not isinstance(value, str) or value not in low:
            raise CommandError("%s: must be one of %s" % (where, ", ".join(low)))
        return value
    if kind == _KEYS:
        if not isinstance(value, list):
            raise CommandError("%s: expected a list of config keys" % where)
        if len(value) < low or len(value) > high:
            raise CommandError("%s: %d..%d keys" % (where, low, high))
        for key in value:
            if not isinstance(key, str) or key not in config.SCHEMA:
                raise CommandError("%s: unknown config key %s" % (where, _short(key)))
        return value
    if kind == _CHANGES:
        if not isinstance(value, dict):
            raise CommandError("%s: expected an object of config keys" % where)
        if len(value) < low or len(value) > high:
            raise CommandError("%s: %d..%d keys" % (where, low, high))
        for key in value:
            try:
                config.validate(key, value[key])
            except config.ConfigError as e:
                raise CommandError("%s: %s" % (where, e.args[0]))
        return value
    raise CommandError("%s: bad schema" % where)


def _short(value):
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse(payload):
    """Parse and validate one command payload (bytes). Returns (corr_id, name, args) with
    args a dict of validated values, or raises CommandError. The correlation id is
    returned through the exception's `corr_id` attribute when it could be read, so the
    error reply can still be correlated."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError("payload too large: %d > %d bytes" % (len(payload), MAX_COMMAND_BYTES))
    try:
        # Strict RFC 8259 and UTF-8 first: MicroPython's json.loads runs documents that
        # are not JSON. The reason names a byte offset, never the bytes.
        strictjson.validate(payload)
    except strictjson.JSONError as e:
        raise CommandError("not valid JSON: " + e.args[0])
    try:
        msg = json.loads(strictjson.join_surrogates(payload))
    except (ValueError, UnicodeError, RuntimeError):
        raise CommandError("not valid JSON")
    if not isinstance(msg, dict):
        raise CommandError("expected a JSON object")
    corr_id = msg.get("id")
    if corr_id is None:
        raise CommandError("id: missing")
    if (not _is_int(corr_id) and not isinstance(corr_id, str)) or (
            isinstance(corr_id, str) and not 1 <= len(corr_id) <= MAX_ID_LEN):
        raise CommandError("id: expected a string of 1..%d characters or an integer" % MAX_ID_LEN)
    try:
        v = msg.get("v", messages.API_VERSION)
        if v != messages.API_VERSION or v is True:
            raise CommandError("v: unsupported version %s (this station speaks %d)"
                               % (_short(v), messages.API_VERSION))
        for key in msg:
            if key not in ("v", "id", "cmd", "args"):
                raise CommandError("unknown field %s" % _short(key))
        name = msg.get("cmd")
        if not isinstance(name, str):
            raise CommandError("cmd: missing or not a string")
        spec = _COMMANDS.get(name)
        if spec is None:
            raise CommandError("cmd: unknown command %s" % _short(name))
        raw = msg.get("args", {})
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise CommandError("args: expected an object")
        args = {}
        known = []
        for arg, kind, low, high, required in spec:
            known.append(arg)
            if arg in raw and raw[arg] is not None:
                args[arg] = _check_arg(name, arg, kind, low, high, raw[arg])
            elif required:
                raise CommandError("%s.%s: missing" % (name, arg))
            else:
                args[arg] = None
        for arg in raw:
            if arg not in known:
                raise CommandError("%s: unknown argument %s" % (name, _short(arg)))
    except CommandError as e:
        e.corr_id = corr_id
        e.cmd = msg.get("cmd") if isinstance(msg.get("cmd"), str) else None
        raise
    return corr_id, name, args


def _mask(values):
    # Defence in depth: whatever the station returns, a secret never leaves the station.
    if not isinstance(values, dict):
        return values
    out = {}
    for key in values:
        value = values[key]
        if config.is_secret(key) and value not in ("", "***"):
            value = "***"
        out[key] = value
    return out


class CommandDispatcher:
    """Validates command payloads and calls the station (a CommandTarget).

    handle(payload, now_ms) returns the reply message (a dict for messages.encode).
    Counters: accepted (reached the station and it said ok), failed (reached the station and
    it refused with a reason), rejected (invalid, never reached the station)."""

    def __init__(self, target):
        self.target = target
        self.accepted = 0
        self.failed = 0
        self.rejected = 0
        self.last_rejection = None

    def stats(self):
        return {"accepted": self.accepted, "failed": self.failed, "rejected": self.rejected}

    def reject(self, reason, corr_id=None, cmd=None):
        self.rejected += 1
        self.last_rejection = reason
        return messages.reply(corr_id, cmd, reason)

    def handle(self, payload, now_ms):
        try:
            corr_id, name, args = parse(payload)
        except CommandError as e:
            return self.reject(e.args[0], getattr(e, "corr_id", None), getattr(e, "cmd", None))
        try:
            reason, data = self._call(name, args, now_ms)
        except Exception as e:  # a station bug must not take the link down
            reason, data = "internal error: %s" % _short(repr(e)), None
        if reason is not None:
            if not isinstance(reason, str):
                reason = _short(repr(reason))
            self.failed += 1
            return messages.reply(corr_id, name, reason)
        self.accepted += 1
        return messages.reply(corr_id, name, None, data)

    def _call(self, name, args, now_ms):
        t = self.target
        if name == "start":
            return t.cmd_start(now_ms), None
        if name == "stop":
            return t.cmd_stop(now_ms), None
        if name == "authorize":
            return t.cmd_authorize(args["id_tag"], now_ms), None
        if name == "set_limit":
            # IEC 61851-1: no duty offers less than 6 A, so a smaller limit pauses the
            # charge (PWM off, x1) until a limit of 6 A or more comes; the reply says so.
            limit = args["limit_ma"]
            return (t.cmd_set_limit(limit, args["expires_s"], now_ms),
                    {"limit_ma": limit, "paused_by_limit": limit < CURRENT_MIN_MA})
        if name == "set_availability":
            return t.cmd_set_availability(args["availability"] == "operative", now_ms), None
        if name == "get_config":
            return None, _mask(t.cmd_get_config(args["keys"]))
        if name == "set_config":
            changes = args["changes"]
            reason = t.cmd_set_config(changes)
            if reason is not None:
                return reason, None
            return None, {"keys": sorted(changes),
                          "reboot_required": sorted(k for k in changes if config.needs_reboot(k))}
        if name == "reboot":
            return t.cmd_reboot(now_ms), None
        if name == "selftest":
            return t.cmd_selftest(now_ms), None
        if name == "diagnostics":
            return None, _mask(t.cmd_diagnostics())
        if name == "clear_fault":
            return t.cmd_clear_fault(args["name"], now_ms), None
        raise CommandError("cmd: unknown command %s" % name)

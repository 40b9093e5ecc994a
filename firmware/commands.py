"""Backend commands: parse, validate, dispatch to the station, build the reply.

A command is one JSON object on <prefix>/<station_id>/cmd:
    {"v": 1, "id": "c-17", "cmd": "set_limit", "args": {"limit_ma": 16000, "expires_s": 600}}
and is answered on .../reply with the same "id" (see firmware/messages.py, docs/mqtt.md).

Everything that can be checked without the station's state is checked here; a command that
fails a check is answered with an error and never reaches the station. Whether a valid
command makes sense in the current state is the station's decision: its method returns None
(done), a (code, reason) pair or a reason string (code GenericError), and the reply carries
both. Every error reply has a stable `code` (the list below, docs/mqtt.md "Error codes").

Before the station sees a command the dispatcher also decides:
- exactly once: a correlation id in the ledger (firmware/ledger.py) is answered with its
  first reply, not executed again;
- expiry: `expires_at` (UTC s) or `sent_at` + `ttl_s`; a stale command is refused;
- authority: settings that decide whom the station trusts (config.TRUST_KEYS) change only
  by a command signed by the owner (firmware/owner.py), and credentials only over TLS
  unless `mqtt_plain_credentials` allows it.

The station implements CommandTarget (firmware/command_target.py: the interface, written
down there and never imported, so that its methods take no RAM). Methods are called from
the control loop (inside MqttLink.step), so they must not block; cmd_reboot and cmd_selftest should schedule the work
and return, so that the reply can still be sent.
"""
from firmware import config
from firmware import messages
from firmware import owner
from firmware import strictjson
from firmware.ledger import KEEP_BYTES as LEDGER_KEEP_BYTES
from firmware.auth import ID_TAG_MAX, IdTagError, check_id_tag
from firmware.compat import const
from firmware.pilot import CURRENT_MIN_MA
import json

MAX_COMMAND_BYTES = 1024
MAX_ID_LEN = 64              # characters (Unicode code points), not bytes
MAX_ID_TAG_LEN = ID_TAG_MAX  # as firmware/auth.py: the tags the reader path asks the backend about
MAX_LIMIT_MA = const(80000)
MAX_EXPIRES_S = const(7 * 86400)
MAX_CONFIG_KEYS = const(32)
MAX_FAULT_NAME_LEN = const(32)
MAX_TTL_S = 7 * 86400
MAX_SIGNED_AHEAD_S = 3600    # a signed command expires within this: bounds a replay

# Error codes (docs/mqtt.md "Error codes"). The first group is OCPP's CallError codes, used
# with the meaning OCPP gives them; the second group is the station's own.
FORMATION_VIOLATION = "FormationViolation"      # not JSON, not UTF-8, not an object, too large
PROTOCOL_ERROR = "ProtocolError"                # no usable correlation id
TYPE_CONSTRAINT = "TypeConstraintViolation"     # a field of the wrong type
PROPERTY_CONSTRAINT = "PropertyConstraintViolation"    # a value out of its range or set
OCCURRENCE_CONSTRAINT = "OccurrenceConstraintViolation"  # missing or unknown field/argument
NOT_IMPLEMENTED = "NotImplemented"              # unknown command
NOT_SUPPORTED = "NotSupported"                  # known, not supported (API version, feature)
SECURITY_ERROR = "SecurityError"                # a signature that does not verify
INTERNAL_ERROR = "InternalError"                # the station failed while executing it
GENERIC_ERROR = "GenericError"                  # anything else the station refused
NO_EV = "NO_EV"                    # no EV connected
NO_SESSION = "NO_SESSION"          # no session to stop
INOPERATIVE = "INOPERATIVE"        # the operator set the station inoperative
BUSY = "BUSY"                      # a reboot or self-test is in the way; try later
ALREADY = "ALREADY"                # already in the state asked for (nothing done)
NOT_AUTHORIZED = "NOT_AUTHORIZED"  # the idTag is not accepted
OCCUPIED = "OCCUPIED"              # the session belongs to another idTag
STORAGE = "STORAGE"                # the change could not be stored on flash
ON_SITE = "ON_SITE"                # this fault may only be cleared at the station
DISABLED = "DISABLED"              # the feature is switched off in the configuration
RETAINED = "RETAINED"              # a retained command: never run
EXPIRED = "EXPIRED"                # past its expires_at / sent_at + ttl_s
CLOCK_NOT_SET = "CLOCK_NOT_SET"    # an expiry the station cannot check without UTC time
OWNER_ONLY = "OWNER_ONLY"          # a trust setting without the owner's signature
INSECURE = "INSECURE"              # credentials over a connection without TLS
OTHER_SESSION = "OTHER_SESSION"    # a stop meant for another session (named, or sent before it)

# A stop sent (by the backend's clock) this long before the running session began was meant
# for an earlier one: held back by an outage, it must not end the next driver's charge.
# The margin allows for the two clocks' skew; a backend that names the session is exact.
STOP_SKEW_S = const(5)

ERROR_CODES = (FORMATION_VIOLATION, PROTOCOL_ERROR, TYPE_CONSTRAINT, PROPERTY_CONSTRAINT,
               OCCURRENCE_CONSTRAINT, NOT_IMPLEMENTED, NOT_SUPPORTED, SECURITY_ERROR,
               INTERNAL_ERROR, GENERIC_ERROR, NO_EV, NO_SESSION, INOPERATIVE, BUSY, ALREADY,
               NOT_AUTHORIZED, OCCUPIED, STORAGE, ON_SITE, DISABLED, RETAINED, EXPIRED,
               CLOCK_NOT_SET, OWNER_ONLY, INSECURE)

# Commands that change nothing: answered afresh, never recorded in the ledger.
READ_ONLY = ("get_config", "diagnostics")


class CommandError(ValueError):
    """A command refused before it reached the station: args[0] is the reason, `code` the
    error code."""

    def __init__(self, reason, code=GENERIC_ERROR):
        super().__init__(reason)
        self.code = code


# Argument kinds
# (const: the argument tables below then fold into constant tuples, in flash when frozen)
_INT = const(0)
_STR = const(1)
_BOOL = const(2)
_KEYS = const(3)      # list of config keys
_CHANGES = const(4)   # object of config key: value
_CHOICE = const(5)    # str from a tuple
_ID_TAG = const(6)    # an idTag (firmware/auth.py check_id_tag)

_REQUIRED = const(True)
_OPTIONAL = const(False)

# name: ((arg, kind, low, high, required), ...)
_COMMANDS = {
    "start": (("id_tag", _ID_TAG, 1, MAX_ID_TAG_LEN, _OPTIONAL),
              ("connector_id", _INT, 1, 8, _OPTIONAL)),
    "stop": (("session_id", _STR, 1, MAX_ID_LEN, _OPTIONAL),),
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
            raise CommandError("%s: expected an integer" % where, TYPE_CONSTRAINT)
        if value < low or value > high:
            raise CommandError("%s: %d out of range %d..%d" % (where, value, low, high),
                               PROPERTY_CONSTRAINT)
        return value
    if kind == _BOOL:
        if value is not True and value is not False:
            raise CommandError("%s: expected true or false" % where, TYPE_CONSTRAINT)
        return value
    if kind == _STR:
        if not isinstance(value, str):
            raise CommandError("%s: expected a string" % where, TYPE_CONSTRAINT)
        if len(value) < low or len(value) > high:
            raise CommandError("%s: length must be %d..%d" % (where, low, high),
                               PROPERTY_CONSTRAINT)
        if not _printable(value):
            raise CommandError("%s: control characters not allowed" % where,
                               PROPERTY_CONSTRAINT)
        return value
    if kind == _ID_TAG:
        if not isinstance(value, str):
            raise CommandError("%s: expected a string" % where, TYPE_CONSTRAINT)
        try:
            return check_id_tag(value)
        except IdTagError as e:
            raise CommandError("%s: %s" % (where, e.args[0]), PROPERTY_CONSTRAINT)
    if kind == _CHOICE:
        if not isinstance(value, str) or value not in low:
            raise CommandError("%s: must be one of %s" % (where, ", ".join(low)),
                               PROPERTY_CONSTRAINT)
        return value
    if kind == _KEYS:
        if not isinstance(value, list):
            raise CommandError("%s: expected a list of config keys" % where, TYPE_CONSTRAINT)
        if len(value) < low or len(value) > high:
            raise CommandError("%s: %d..%d keys" % (where, low, high), PROPERTY_CONSTRAINT)
        for key in value:
            if not isinstance(key, str) or config.spec(key) is None:
                raise CommandError("%s: unknown config key %s" % (where, _short(key)),
                                   PROPERTY_CONSTRAINT)
        return value
    if kind == _CHANGES:
        if not isinstance(value, dict):
            raise CommandError("%s: expected an object of config keys" % where,
                               TYPE_CONSTRAINT)
        if len(value) < low or len(value) > high:
            raise CommandError("%s: %d..%d keys" % (where, low, high), PROPERTY_CONSTRAINT)
        for key in value:
            try:
                config.validate(key, value[key])
            except config.ConfigError as e:
                raise CommandError("%s: %s" % (where, e.args[0]), PROPERTY_CONSTRAINT)
        return value
    raise CommandError("%s: bad schema" % where, INTERNAL_ERROR)


def _short(value):
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _read(payload):
    # Strict RFC 8259 and UTF-8 first: MicroPython's json.loads runs documents that are not
    # JSON. The reason names a byte offset, never the bytes.
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError("payload too large: %d > %d bytes" % (len(payload), MAX_COMMAND_BYTES),
                           FORMATION_VIOLATION)
    try:
        strictjson.validate(payload)
    except strictjson.JSONError as e:
        raise CommandError("not valid JSON: " + e.args[0], FORMATION_VIOLATION)
    try:
        msg = json.loads(strictjson.join_surrogates(payload))
    except (ValueError, UnicodeError, RuntimeError):
        raise CommandError("not valid JSON", FORMATION_VIOLATION)
    if not isinstance(msg, dict):
        raise CommandError("expected a JSON object", FORMATION_VIOLATION)
    corr_id = msg.get("id")
    if corr_id is None:
        raise CommandError("id: missing", PROTOCOL_ERROR)
    if (not _is_int(corr_id) and not isinstance(corr_id, str)) or (
            isinstance(corr_id, str) and not 1 <= len(corr_id) <= MAX_ID_LEN):
        raise CommandError("id: expected a string of 1..%d characters or an integer" % MAX_ID_LEN,
                           PROTOCOL_ERROR)
    return msg, corr_id


_ENVELOPE = ("v", "id", "cmd", "args", "expires_at", "sent_at", "ttl_s", "sig")


def _time_field(msg, name, high):
    value = msg.get(name)
    if value is None:
        return None
    if not _is_int(value):
        raise CommandError("%s: expected an integer" % name, TYPE_CONSTRAINT)
    if value < 0 or value > high:
        raise CommandError("%s: %d out of range 0..%d" % (name, value, high),
                           PROPERTY_CONSTRAINT)
    return value


def _expiry(msg):
    # expires_at (UTC s), or sent_at (UTC s) + ttl_s: when the command goes stale.
    # Returns (expires_at, sent_at).
    expires_at = _time_field(msg, "expires_at", 1 << 40)
    sent_at = _time_field(msg, "sent_at", 1 << 40)
    ttl = _time_field(msg, "ttl_s", MAX_TTL_S)
    if ttl is not None:
        if sent_at is None:
            raise CommandError("ttl_s: needs sent_at (UTC seconds)", OCCURRENCE_CONSTRAINT)
        if ttl < 1:
            raise CommandError("ttl_s: 0 out of range 1..%d" % MAX_TTL_S, PROPERTY_CONSTRAINT)
        if expires_at is None or sent_at + ttl < expires_at:
            expires_at = sent_at + ttl
    return expires_at, sent_at


def parse_envelope(payload):
    """Parse and validate one command payload (bytes). Returns (corr_id, name, args,
    expires_at, signed, sent_at) with args a dict of validated values, expires_at and
    sent_at None or UTC seconds, signed True when the command carries a `sig` (not yet verified), or raises
    CommandError. The correlation id and command name are set on the exception
    (`corr_id`, `cmd`) when they could be read, so the error reply can be correlated."""
    msg, corr_id = None, None
    try:
        msg, corr_id = _read(payload)
        v = msg.get("v", messages.API_VERSION)
        if v != messages.API_VERSION or v is True:
            raise CommandError("v: unsupported version %s (this station speaks %d)"
                               % (_short(v), messages.API_VERSION), NOT_SUPPORTED)
        for key in msg:
            if key not in _ENVELOPE:
                raise CommandError("unknown field %s" % _short(key), OCCURRENCE_CONSTRAINT)
        name = msg.get("cmd")
        if name is None:
            raise CommandError("cmd: missing or not a string", OCCURRENCE_CONSTRAINT)
        if not isinstance(name, str):
            raise CommandError("cmd: missing or not a string", TYPE_CONSTRAINT)
        spec = _COMMANDS.get(name)
        if spec is None:
            raise CommandError("cmd: unknown command %s" % _short(name), NOT_IMPLEMENTED)
        sig = msg.get("sig")
        if sig is not None and (not isinstance(sig, str) or len(sig) != owner.SIG_HEX):
            raise CommandError("sig: expected %d hex digits" % owner.SIG_HEX, TYPE_CONSTRAINT)
        expires_at, sent_at = _expiry(msg)
        raw = msg.get("args", {})
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise CommandError("args: expected an object", TYPE_CONSTRAINT)
        args = {}
        known = []
        for arg, kind, low, high, required in spec:
            known.append(arg)
            if arg in raw and raw[arg] is not None:
                args[arg] = _check_arg(name, arg, kind, low, high, raw[arg])
            elif required:
                raise CommandError("%s.%s: missing" % (name, arg), OCCURRENCE_CONSTRAINT)
            else:
                args[arg] = None
        for arg in raw:
            if arg not in known:
                raise CommandError("%s: unknown argument %s" % (name, _short(arg)),
                                   OCCURRENCE_CONSTRAINT)
    except CommandError as e:
        e.corr_id = corr_id
        e.cmd = None
        if msg is not None and isinstance(msg.get("cmd"), str):
            e.cmd = msg.get("cmd")
        raise
    return corr_id, name, args, expires_at, sig is not None, sent_at


def parse(payload):
    """parse_envelope without the expiry and signature: (corr_id, name, args)."""
    corr_id, name, args, _, _, _ = parse_envelope(payload)
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
    it refused with a reason), rejected (invalid, stale, unauthorised: never reached the
    station), duplicates (answered from the ledger, not executed again).

    wall_time() -> UTC seconds or None (clock not set): stamps replies, checks expiry.
    ledger: firmware.ledger.Ledger, or None for no duplicate detection.
    cfg, station_id: for the owner's signature (owner_key) and the credential rule
      (mqtt_tls, mqtt_plain_credentials); without cfg trust settings are refused outright.
    """

    def __init__(self, target, wall_time=None, ledger=None, cfg=None, station_id=""):
        self.target = target
        self.wall_time = wall_time or _no_clock
        self.ledger = ledger
        self.cfg = cfg
        self.station_id = station_id
        self.accepted = 0
        self.failed = 0
        self.rejected = 0
        self.duplicates = 0
        self.last_rejection = None

    def stats(self):
        return {"accepted": self.accepted, "failed": self.failed, "rejected": self.rejected,
                "duplicates": self.duplicates}

    def _reply(self, corr_id, cmd, reason=None, data=None, code=None):
        return messages.reply(corr_id, cmd, reason, data, code, self.wall_time())

    def reject(self, reason, corr_id=None, cmd=None, code=GENERIC_ERROR):
        self.rejected += 1
        self.last_rejection = reason
        return self._reply(corr_id, cmd, reason, None, code)

    def refuse_unread(self, payload, reason, code):
        """Refuse `payload` without running it (a retained command), answering with its
        correlation id and name when they can be read."""
        corr_id = name = None
        try:
            corr_id, name, _, _, _, _ = parse_envelope(payload)
        except CommandError as e:
            corr_id = getattr(e, "corr_id", None)
            name = getattr(e, "cmd", None)
        return self.reject(reason, corr_id, name, code)

    def handle(self, payload, now_ms):
        try:
            corr_id, name, args, expires_at, signed, sent_at = parse_envelope(payload)
        except CommandError as e:
            return self.reject(e.args[0], getattr(e, "corr_id", None), getattr(e, "cmd", None),
                               e.code)
        recorded = self.ledger is not None and name not in READ_ONLY
        if recorded:
            first = self.ledger.find(corr_id)
            if first is not None:
                # Executed already: the first reply again, not a second execution.
                self.duplicates += 1
                reply = json.loads(first)
                reply["duplicate"] = True
                return reply
        try:
            self._admit(payload, name, args, expires_at, signed)
        except CommandError as e:
            return self.reject(e.args[0], corr_id, name, e.code)
        try:
            outcome, data = self._call(name, args, now_ms, sent_at)
        except Exception as e:  # a station bug must not take the link down
            outcome, data = (INTERNAL_ERROR, "internal error: %s" % _short(repr(e))), None
        if outcome is not None:
            code, reason = _outcome(outcome)
            self.failed += 1
            reply = self._reply(corr_id, name, reason, None, code)
        else:
            self.accepted += 1
            reply = self._reply(corr_id, name, None, data)
        if recorded:
            self._record(corr_id, reply)
        return reply

    def _record(self, corr_id, reply):
        encoded = messages.encode(reply)
        if len(encoded) > LEDGER_KEEP_BYTES:
            short = dict(reply)
            short.pop("data", None)
            encoded = messages.encode(short)
        self.ledger.add(corr_id, encoded)

    def _admit(self, payload, name, args, expires_at, signed):
        # Authority first (a forged signature says nothing about the rest), then expiry,
        # then the rules for settings that decide whom the station trusts.
        cfg = self.cfg
        if signed:
            key = owner.key_bytes(cfg["owner_key"]) if cfg is not None else None
            if key is None:
                raise CommandError("sig: no owner key is provisioned on this station",
                                   SECURITY_ERROR)
            if not owner.verify(payload, self.station_id, key):
                raise CommandError("sig: the signature does not verify", SECURITY_ERROR)
        now = self.wall_time()
        if expires_at is not None or signed:
            if now is None:
                raise CommandError("the station's clock is not set: an expiry cannot be checked",
                                   CLOCK_NOT_SET)
            if signed and (expires_at is None or expires_at > now + MAX_SIGNED_AHEAD_S):
                raise CommandError("a signed command needs an expiry within %d s"
                                   % MAX_SIGNED_AHEAD_S, SECURITY_ERROR)
            if now > expires_at:
                raise CommandError("expired %d s ago" % (now - expires_at), EXPIRED)
        if name != "set_config":
            return
        changes = args["changes"]
        for key in changes:
            if config.is_trust(key) and not signed:
                raise CommandError("set_config.changes: %s decides whom the station trusts: "
                                   "only a command signed by the owner (or service mode) "
                                   "changes it" % key, OWNER_ONLY)
            if config.is_credential(key) and changes[key] and cfg is not None \
                    and not cfg["mqtt_tls"] and not cfg["mqtt_plain_credentials"]:
                raise CommandError("set_config.changes: %s is a credential: not over a "
                                   "connection without TLS (mqtt_plain_credentials)" % key,
                                   INSECURE)

    def _call(self, name, args, now_ms, sent_at=None):
        t = self.target
        if name == "start":
            connector = args["connector_id"]
            if connector is not None and self.cfg is not None \
                    and connector != self.cfg["connector_id"]:
                return (PROPERTY_CONSTRAINT, "start.connector_id: this station has connector %d"
                        % self.cfg["connector_id"]), None
            return t.cmd_start(now_ms, args["id_tag"], connector), None
        if name == "stop":
            return t.cmd_stop(now_ms, args["session_id"], sent_at), None
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
            outcome = t.cmd_set_config(changes)
            if outcome is not None:
                return outcome, None
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
        raise CommandError("cmd: unknown command %s" % name, NOT_IMPLEMENTED)


def _no_clock():
    return None


def _outcome(outcome):
    # The station's refusal: (code, reason), or a bare reason (GenericError).
    if isinstance(outcome, tuple) and len(outcome) == 2:
        code, reason = outcome
        if not isinstance(reason, str):
            reason = _short(repr(reason))
        return code, reason
    if not isinstance(outcome, str):
        outcome = _short(repr(outcome))
    return GENERIC_ERROR, outcome

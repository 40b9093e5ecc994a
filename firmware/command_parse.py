"""The work of one backend command, for firmware/commands.py CommandDispatcher: read the
payload (strict JSON), validate the envelope and the arguments, authorise it (the owner's
signature, expiry, trust and credential rules), call the station and build the reply.

Imported for each command and unloaded after it (firmware/commands.py, compat.unload): what
it holds, its tables and functions and the owner's signature check, is in the heap only
while a command is handled. Nothing resident may keep a reference to it (a function, a
table), or it would stay.
"""
import json

from firmware import auth
from firmware import commands as _c
from firmware import config
from firmware import messages
from firmware import strictjson
from firmware.compat import const

# Few names: constants are const, other modules' names are reached through their module
# (or imported where used), small helpers are not functions of their own. The globals table
# of a module imported for each command is the largest block its import needs, and a full
# heap lacks blocks of 300-500 B (a table of 34 names took 376 B; 22 take 184 B).
_MAX_ID_LEN = const(64)          # characters (Unicode code points), not bytes
_MAX_LIMIT_MA = const(80000)
_MAX_EXPIRES_S = const(7 * 86400)
_MAX_CONFIG_KEYS = const(32)
_MAX_FAULT_NAME_LEN = const(32)
_MAX_TTL_S = const(7 * 86400)
_MAX_SIGNED_AHEAD_S = const(3600)   # a signed command expires within this: bounds a replay
_SIG_HEX = const(64)                # firmware/owner.py SIG_HEX: HMAC-SHA256 as hex digits

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
COMMANDS = {
    # (auth.ID_TAG_MAX: the idTags the reader path asks the backend about)
    "start": (("id_tag", _ID_TAG, 1, auth.ID_TAG_MAX, _OPTIONAL),
              ("connector_id", _INT, 1, 8, _OPTIONAL)),
    "stop": (("session_id", _STR, 1, _MAX_ID_LEN, _OPTIONAL),),
    "authorize": (("id_tag", _ID_TAG, 1, auth.ID_TAG_MAX, _REQUIRED),),
    "set_limit": (("limit_ma", _INT, 0, _MAX_LIMIT_MA, _REQUIRED),
                  ("expires_s", _INT, 1, _MAX_EXPIRES_S, _OPTIONAL)),
    "set_availability": (("availability", _CHOICE, ("operative", "inoperative"), None,
                          _REQUIRED),),
    "get_config": (("keys", _KEYS, 1, _MAX_CONFIG_KEYS, _OPTIONAL),),
    "set_config": (("changes", _CHANGES, 1, _MAX_CONFIG_KEYS, _REQUIRED),),
    "reboot": (),
    "selftest": (),
    "diagnostics": (),
    "clear_fault": (("name", _STR, 1, _MAX_FAULT_NAME_LEN, _REQUIRED),),
}



def _is_int(v):
    # bool is not an int here: true for a current is a mistake, not 1 mA.
    return isinstance(v, int) and v is not True and v is not False


def _check_arg(cmd, name, kind, low, high, value):
    where = "%s.%s" % (cmd, name)
    if kind == _INT:
        if not _is_int(value):
            raise _c.CommandError("%s: expected an integer" % where, _c.TYPE_CONSTRAINT)
        if value < low or value > high:
            raise _c.CommandError("%s: %d out of range %d..%d" % (where, value, low, high),
                                  _c.PROPERTY_CONSTRAINT)
        return value
    if kind == _BOOL:
        if value is not True and value is not False:
            raise _c.CommandError("%s: expected true or false" % where, _c.TYPE_CONSTRAINT)
        return value
    if kind == _STR:
        if not isinstance(value, str):
            raise _c.CommandError("%s: expected a string" % where, _c.TYPE_CONSTRAINT)
        if len(value) < low or len(value) > high:
            raise _c.CommandError("%s: length must be %d..%d" % (where, low, high),
                                  _c.PROPERTY_CONSTRAINT)
        for ch in value:
            if ch < " " or ch == "\x7f":
                raise _c.CommandError("%s: control characters not allowed" % where,
                                      _c.PROPERTY_CONSTRAINT)
        return value
    if kind == _ID_TAG:
        if not isinstance(value, str):
            raise _c.CommandError("%s: expected a string" % where, _c.TYPE_CONSTRAINT)
        try:
            return auth.check_id_tag(value)
        except auth.IdTagError as e:
            raise _c.CommandError("%s: %s" % (where, e.args[0]), _c.PROPERTY_CONSTRAINT)
    if kind == _CHOICE:
        if not isinstance(value, str) or value not in low:
            raise _c.CommandError("%s: must be one of %s" % (where, ", ".join(low)),
                                  _c.PROPERTY_CONSTRAINT)
        return value
    if kind == _KEYS:
        if not isinstance(value, list):
            raise _c.CommandError("%s: expected a list of config keys" % where, _c.TYPE_CONSTRAINT)
        if len(value) < low or len(value) > high:
            raise _c.CommandError("%s: %d..%d keys" % (where, low, high), _c.PROPERTY_CONSTRAINT)
        for key in value:
            if not isinstance(key, str) or config.spec(key) is None:
                raise _c.CommandError("%s: unknown config key %s" % (where, _short(key)),
                                      _c.PROPERTY_CONSTRAINT)
        return value
    if kind == _CHANGES:
        if not isinstance(value, dict):
            raise _c.CommandError("%s: expected an object of config keys" % where,
                                  _c.TYPE_CONSTRAINT)
        if len(value) < low or len(value) > high:
            raise _c.CommandError("%s: %d..%d keys" % (where, low, high), _c.PROPERTY_CONSTRAINT)
        for key in value:
            try:
                config.validate(key, value[key])
            except config.ConfigError as e:
                raise _c.CommandError("%s: %s" % (where, e.args[0]), _c.PROPERTY_CONSTRAINT)
        return value
    raise _c.CommandError("%s: bad schema" % where, _c.INTERNAL_ERROR)


def _short(value):
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _read(payload):
    # Strict RFC 8259 and UTF-8 first: MicroPython's json.loads runs documents that are not
    # JSON. The reason names a byte offset, never the bytes.
    if len(payload) > _c.MAX_COMMAND_BYTES:
        raise _c.CommandError("payload too large: %d > %d bytes"
                              % (len(payload), _c.MAX_COMMAND_BYTES),
                              _c.FORMATION_VIOLATION)
    try:
        strictjson.validate(payload)
    except strictjson.JSONError as e:
        raise _c.CommandError("not valid JSON: " + e.args[0], _c.FORMATION_VIOLATION)
    try:
        msg = json.loads(strictjson.join_surrogates(payload))
    except (ValueError, UnicodeError, RuntimeError):
        raise _c.CommandError("not valid JSON", _c.FORMATION_VIOLATION)
    if not isinstance(msg, dict):
        raise _c.CommandError("expected a JSON object", _c.FORMATION_VIOLATION)
    corr_id = msg.get("id")
    if corr_id is None:
        raise _c.CommandError("id: missing", _c.PROTOCOL_ERROR)
    if (not _is_int(corr_id) and not isinstance(corr_id, str)) or (
            isinstance(corr_id, str) and not 1 <= len(corr_id) <= _MAX_ID_LEN):
        raise _c.CommandError("id: expected a string of 1..%d characters or an integer"
                              % _MAX_ID_LEN,
                              _c.PROTOCOL_ERROR)
    return msg, corr_id


def _time_field(msg, name, high):
    value = msg.get(name)
    if value is None:
        return None
    if not _is_int(value):
        raise _c.CommandError("%s: expected an integer" % name, _c.TYPE_CONSTRAINT)
    if value < 0 or value > high:
        raise _c.CommandError("%s: %d out of range 0..%d" % (name, value, high),
                              _c.PROPERTY_CONSTRAINT)
    return value


def _expiry(msg):
    # expires_at (UTC s), or sent_at (UTC s) + ttl_s: when the command goes stale.
    # Returns (expires_at, sent_at).
    expires_at = _time_field(msg, "expires_at", 1 << 40)
    sent_at = _time_field(msg, "sent_at", 1 << 40)
    ttl = _time_field(msg, "ttl_s", _MAX_TTL_S)
    if ttl is not None:
        if sent_at is None:
            raise _c.CommandError("ttl_s: needs sent_at (UTC seconds)", _c.OCCURRENCE_CONSTRAINT)
        if ttl < 1:
            raise _c.CommandError("ttl_s: 0 out of range 1..%d" % _MAX_TTL_S,
                                  _c.PROPERTY_CONSTRAINT)
        if expires_at is None or sent_at + ttl < expires_at:
            expires_at = sent_at + ttl
    return expires_at, sent_at


def parse_envelope(payload):
    """Parse and validate one command payload (bytes). Returns (corr_id, name, args,
    expires_at, signed, sent_at) with args a dict of validated values, expires_at and
    sent_at None or UTC seconds, signed True when the command carries a `sig` (not yet
    verified), or raises CommandError. The correlation id and command name are set on the exception
    (`corr_id`, `cmd`) when they could be read, so the error reply can be correlated."""
    msg, corr_id = None, None
    try:
        msg, corr_id = _read(payload)
        v = msg.get("v", messages.API_VERSION)
        if v != messages.API_VERSION or v is True:
            raise _c.CommandError("v: unsupported version %s (this station speaks %d)"
                                  % (_short(v), messages.API_VERSION), _c.NOT_SUPPORTED)
        for key in msg:
            if key not in ("v", "id", "cmd", "args", "expires_at", "sent_at", "ttl_s",
                           "sig"):
                raise _c.CommandError("unknown field %s" % _short(key), _c.OCCURRENCE_CONSTRAINT)
        name = msg.get("cmd")
        if name is None:
            raise _c.CommandError("cmd: missing or not a string", _c.OCCURRENCE_CONSTRAINT)
        if not isinstance(name, str):
            raise _c.CommandError("cmd: missing or not a string", _c.TYPE_CONSTRAINT)
        spec = COMMANDS.get(name)
        if spec is None:
            raise _c.CommandError("cmd: unknown command %s" % _short(name), _c.NOT_IMPLEMENTED)
        sig = msg.get("sig")
        if sig is not None and (not isinstance(sig, str) or len(sig) != _SIG_HEX):
            raise _c.CommandError("sig: expected %d hex digits" % _SIG_HEX,
                                  _c.TYPE_CONSTRAINT)
        expires_at, sent_at = _expiry(msg)
        raw = msg.get("args", {})
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise _c.CommandError("args: expected an object", _c.TYPE_CONSTRAINT)
        args = {}
        known = []
        for arg, kind, low, high, required in spec:
            known.append(arg)
            if arg in raw and raw[arg] is not None:
                args[arg] = _check_arg(name, arg, kind, low, high, raw[arg])
            elif required:
                raise _c.CommandError("%s.%s: missing" % (name, arg), _c.OCCURRENCE_CONSTRAINT)
            else:
                args[arg] = None
        for arg in raw:
            if arg not in known:
                raise _c.CommandError("%s: unknown argument %s" % (name, _short(arg)),
                                      _c.OCCURRENCE_CONSTRAINT)
    except _c.CommandError as e:
        e.corr_id = corr_id
        e.cmd = None
        if msg is not None and isinstance(msg.get("cmd"), str):
            e.cmd = msg.get("cmd")
        raise
    return corr_id, name, args, expires_at, sig is not None, sent_at


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


def refuse_unread(d, payload, reason, code):
    """Refuse `payload` without running it (a retained command), answering with its
    correlation id and name when they can be read."""
    corr_id = name = None
    try:
        corr_id, name, _, _, _, _ = parse_envelope(payload)
    except _c.CommandError as e:
        corr_id = getattr(e, "corr_id", None)
        name = getattr(e, "cmd", None)
    return d.reject(reason, corr_id, name, code)


def handle(d, payload, now_ms):
    """CommandDispatcher.handle: the reply to one payload. `d`: the dispatcher (the station
    it calls, its ledger and counters)."""
    try:
        corr_id, name, args, expires_at, signed, sent_at = parse_envelope(payload)
    except _c.CommandError as e:
        return d.reject(e.args[0], getattr(e, "corr_id", None), getattr(e, "cmd", None),
                        e.code)
    # Commands that change nothing are answered afresh, never recorded in the ledger.
    recorded = d.ledger is not None and name not in ("get_config", "diagnostics")
    if recorded:
        first = d.ledger.find(corr_id)
        if first is not None:
            # Executed already: the first reply again, not a second execution.
            d.duplicates += 1
            reply = json.loads(first)
            reply["duplicate"] = True
            return reply
    try:
        _admit(d, payload, name, args, expires_at, signed)
    except _c.CommandError as e:
        return d.reject(e.args[0], corr_id, name, e.code)
    try:
        outcome, data = _call(d, name, args, now_ms, sent_at)
    except Exception as e:  # a station bug must not take the link down
        outcome, data = (_c.INTERNAL_ERROR, "internal error: %s" % _short(repr(e))), None
    if outcome is None:
        d.accepted += 1
        reply = d.reply(corr_id, name, None, data)
    else:
        # The station's refusal: (code, reason), or a bare reason (GenericError).
        code, reason = _c.GENERIC_ERROR, outcome
        if isinstance(outcome, tuple) and len(outcome) == 2:
            code, reason = outcome
        if not isinstance(reason, str):
            reason = _short(repr(reason))
        d.failed += 1
        reply = d.reply(corr_id, name, reason, None, code)
    if recorded:
        from firmware.ledger import KEEP_BYTES
        encoded = messages.encode(reply)
        if len(encoded) > KEEP_BYTES:
            short = dict(reply)
            short.pop("data", None)
            encoded = messages.encode(short)
        d.ledger.add(corr_id, encoded)
    return reply


def _admit(d, payload, name, args, expires_at, signed):
    # Authority first (a forged signature says nothing about the rest), then expiry,
    # then the rules for settings that decide whom the station trusts.
    cfg = d.cfg
    if signed:
        # The owner's signature check (firmware/owner.py) is imported for a signed command
        # only, and unloaded after it as this module is.
        from firmware import owner
        from firmware.compat import unload
        try:
            key = owner.key_bytes(cfg["owner_key"]) if cfg is not None else None
            if key is None:
                raise _c.CommandError("sig: no owner key is provisioned on this station",
                                      _c.SECURITY_ERROR)
            if not owner.verify(payload, d.station_id, key):
                raise _c.CommandError("sig: the signature does not verify",
                                      _c.SECURITY_ERROR)
        finally:
            unload("firmware.owner")
    now = d.wall_time()
    if expires_at is not None or signed:
        if now is None:
            raise _c.CommandError("the station's clock is not set: an expiry cannot be checked",
                                  _c.CLOCK_NOT_SET)
        if signed and (expires_at is None or expires_at > now + _MAX_SIGNED_AHEAD_S):
            raise _c.CommandError("a signed command needs an expiry within %d s"
                                  % _MAX_SIGNED_AHEAD_S, _c.SECURITY_ERROR)
        if now > expires_at:
            raise _c.CommandError("expired %d s ago" % (now - expires_at), _c.EXPIRED)
    if name != "set_config":
        return
    changes = args["changes"]
    for key in changes:
        if config.is_trust(key) and not signed:
            raise _c.CommandError("set_config.changes: %s decides whom the station trusts: "
                                  "only a command signed by the owner (or service mode) "
                                  "changes it" % key, _c.OWNER_ONLY)
        if config.is_credential(key) and changes[key] and cfg is not None \
                and not cfg["mqtt_tls"] and not cfg["mqtt_plain_credentials"]:
            raise _c.CommandError("set_config.changes: %s is a credential: not over a "
                                  "connection without TLS (mqtt_plain_credentials)" % key,
                                  _c.INSECURE)


def _call(d, name, args, now_ms, sent_at=None):
    t = d.target
    if name == "start":
        connector = args["connector_id"]
        if connector is not None and d.cfg is not None \
                and connector != d.cfg["connector_id"]:
            return (_c.PROPERTY_CONSTRAINT, "start.connector_id: this station has connector %d"
                    % d.cfg["connector_id"]), None
        return t.cmd_start(now_ms, args["id_tag"], connector), None
    if name == "stop":
        return t.cmd_stop(now_ms, args["session_id"], sent_at), None
    if name == "authorize":
        return t.cmd_authorize(args["id_tag"], now_ms), None
    if name == "set_limit":
        # IEC 61851-1: no duty offers less than 6 A, so a smaller limit pauses the
        # charge (PWM off, x1) until a limit of 6 A or more comes; the reply says so.
        from firmware.pilot import CURRENT_MIN_MA
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
    raise _c.CommandError("cmd: unknown command %s" % name, _c.NOT_IMPLEMENTED)

"""OCPP-J RPC framing (OCPP-J 1.6 section 4): CALL, CALLRESULT and CALLERROR, one CALL of ours
in flight at a time.

    [2, "<uniqueId>", "<Action>", {payload}]       CALL
    [3, "<uniqueId>", {payload}]                   CALLRESULT
    [4, "<uniqueId>", "<errorCode>", "<errorDescription>", {errorDetails}]   CALLERROR

An incoming message that is not one of these is a FormationViolation: answered with a
CALLERROR when its uniqueId can be read, dropped (and counted) when not.
"""
import json

from firmware import strictjson
from firmware.compat import const, ticks_add, ticks_diff

CALL = const(2)
CALLRESULT = const(3)
CALLERROR = const(4)

MAX_ID = const(36)        # uniqueId: at most 36 characters (OCPP-J 4.1.3)

# CallError codes (OCPP-J 4.2.3)
NOT_IMPLEMENTED = "NotImplemented"
NOT_SUPPORTED = "NotSupported"
INTERNAL = "InternalError"
PROTOCOL = "ProtocolError"
SECURITY = "SecurityError"
FORMATION = "FormationViolation"
PROPERTY = "PropertyConstraintViolation"
OCCURRENCE = "OccurenceConstraintViolation"     # sic: the 1.6 spelling
TYPE = "TypeConstraintViolation"
GENERIC = "GenericError"


class CallError(Exception):
    """Raised by an operation's handler: answered as a CALLERROR."""

    def __init__(self, code, description="", uid=None):
        super().__init__(code, description)
        self.code = code
        self.description = description
        self.uid = uid            # the CALL's uniqueId when it could be read


def encode_call(uid, action, payload):
    return json.dumps([CALL, uid, action, payload])


def encode_result(uid, payload):
    return json.dumps([CALLRESULT, uid, payload])


def _flat(items):
    for v in items:
        if isinstance(v, (dict, list, tuple)):
            return False
    return True


def pieces(obj):
    """The JSON text of `obj` in pieces: a container that holds containers is opened, its
    items given and closed piece by piece; one that holds only scalars (a sampledValue,
    about 90 B) is one json.dumps. Sent with WsClient.send_pieces, a message (a MeterValues
    of 1 KB, say) never exists as one string or one block, for about twice the CPU time of
    one json.dumps."""
    if _flat(obj.values() if isinstance(obj, dict) else obj
             if isinstance(obj, (list, tuple)) else ()):
        yield json.dumps(obj)
    elif isinstance(obj, dict):
        yield "{"
        sep = ""
        for k in obj:
            yield sep + json.dumps(k) + ":"
            for p in pieces(obj[k]):
                yield p
            sep = ","
        yield "}"
    elif isinstance(obj, (list, tuple)):
        yield "["
        sep = ""
        for v in obj:
            if sep:
                yield sep
            for p in pieces(v):
                yield p
            sep = ","
        yield "]"


def call_pieces(uid, action, payload):
    """A CALL in pieces (see pieces())."""
    yield "[%d,%s,%s," % (CALL, json.dumps(uid), json.dumps(action))
    for p in pieces(payload):
        yield p
    yield "]"


def result_pieces(uid, payload):
    """A CALLRESULT in pieces; `payload` a dict, or a function that returns the payload's
    JSON text in pieces (GetConfiguration's answer, written key by key)."""
    yield "[%d,%s," % (CALLRESULT, json.dumps(uid))
    for p in (payload() if callable(payload) else pieces(payload)):
        yield p
    yield "]"


def encode_error(uid, code, description=""):
    return json.dumps([CALLERROR, uid, code, description[:255], {}])


def decode(raw):
    """(type, uid, a, b): CALL -> (action, payload), CALLRESULT -> (payload, None),
    CALLERROR -> (code, description). Raises CallError(FORMATION) with `uid` set when the
    id could be read."""
    try:
        strictjson.validate(raw)
        msg = json.loads(strictjson.join_surrogates(raw))
    except (strictjson.JSONError, ValueError, UnicodeError, RuntimeError):
        raise CallError(FORMATION, "not JSON")
    if not isinstance(msg, list) or len(msg) < 3:
        raise CallError(FORMATION, "not an OCPP-J message")
    kind = msg[0]
    uid = msg[1]
    if not isinstance(uid, str) or not 0 < len(uid) <= MAX_ID:
        raise CallError(FORMATION, "bad uniqueId")
    if kind == CALL and len(msg) == 4 and isinstance(msg[2], str):
        if not isinstance(msg[3], dict):
            raise CallError(FORMATION, "payload is not an object", uid)
        return CALL, uid, msg[2], msg[3]
    if kind == CALLRESULT and len(msg) == 3:
        return CALLRESULT, uid, msg[2], None
    if kind == CALLERROR and len(msg) >= 4:
        return CALLERROR, uid, msg[2], msg[3]
    raise CallError(FORMATION, "not a CALL, CALLRESULT or CALLERROR", uid)


def field(payload, key, kind, required=True, max_len=None):
    """payload[key] checked against `kind` (int, str, bool, list, dict). A missing required
    field is an OccurenceConstraintViolation, a wrong type a TypeConstraintViolation."""
    v = payload.get(key)
    if v is None:
        if required:
            raise CallError(OCCURRENCE, "%s missing" % key)
        return None
    if kind is int:
        ok = isinstance(v, int) and v is not True and v is not False
    elif kind is float:
        ok = isinstance(v, (int, float)) and v is not True and v is not False
    else:
        ok = isinstance(v, kind)
    if not ok:
        raise CallError(TYPE, "%s: wrong type" % key)
    if max_len is not None and len(v) > max_len:
        raise CallError(PROPERTY, "%s: longer than %d" % (key, max_len))
    return v


def choice(payload, key, allowed, required=True):
    v = field(payload, key, str, required)
    if v is not None and v not in allowed:
        raise CallError(PROPERTY, "%s: not one of %s" % (key, ",".join(allowed)))
    return v


class Caller:
    """Our side of the RPC: one CALL in flight; its answer or its timeout ends it."""

    def __init__(self):
        self._n = 0
        self.uid = None           # the CALL in flight, or None
        self.action = None
        self.context = None
        self._deadline = 0
        self.timeouts = 0

    def busy(self):
        return self.uid is not None

    def begin(self, action, context, now, timeout_ms):
        """A new CALL's uniqueId (the caller sends the CALL); remembered until answered."""
        self._n = (self._n + 1) & 0x3FFFFFF
        self.uid = "%d" % self._n
        self.action = action
        self.context = context
        self._deadline = ticks_add(now, timeout_ms)
        return self.uid

    def start(self, action, payload, context, now, timeout_ms):
        """The frame for a new CALL, as one string (begin() and encode_call())."""
        return encode_call(self.begin(action, context, now, timeout_ms), action, payload)

    def answered(self, uid):
        """True (and the call ends) when `uid` answers the CALL in flight."""
        if self.uid is None or uid != self.uid:
            return False
        self.uid = None
        return True

    def timed_out(self, now):
        if self.uid is not None and ticks_diff(now, self._deadline) >= 0:
            self.uid = None
            self.timeouts += 1
            return True
        return False

    def cancel(self):
        self.uid = None

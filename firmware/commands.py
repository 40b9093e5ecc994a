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

The work of a command (parse, validate, authorise, call the station, build the reply) is in
firmware/command_parse.py, imported for each command and unloaded after it
(compat.unload): commands come now and then, and its tables and functions (0.7 KB, and
0.4 KB more for the owner's signature check of a signed command) stay out of the heap
between them. What stays resident is this module: the error codes, CommandError and the
dispatcher's state (counters, ledger).
The station implements CommandTarget (firmware/command_target.py: the interface, written
down there and never imported, so that its methods take no RAM). Methods are called from
the control loop (inside MqttLink.step), so they must not block; cmd_reboot and cmd_selftest should schedule the work
and return, so that the reply can still be sent.
"""
from firmware import messages
from firmware.compat import const, unload

MAX_COMMAND_BYTES = 1024

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


class CommandError(ValueError):
    """A command refused before it reached the station: args[0] is the reason, `code` the
    error code."""

    def __init__(self, reason, code=GENERIC_ERROR):
        super().__init__(reason)
        self.code = code


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

    def reply(self, corr_id, cmd, reason=None, data=None, code=None):
        return messages.reply(corr_id, cmd, reason, data, code, self.wall_time())

    def reject(self, reason, corr_id=None, cmd=None, code=GENERIC_ERROR):
        self.rejected += 1
        self.last_rejection = reason
        return self.reply(corr_id, cmd, reason, None, code)

    def refuse_unread(self, payload, reason, code):
        """Refuse `payload` without running it (a retained command), answering with its
        correlation id and name when they can be read."""
        try:
            return _parser().refuse_unread(self, payload, reason, code)
        finally:
            unload(_PARSER)

    def handle(self, payload, now_ms):
        """The reply (a dict for messages.encode) to one command payload (bytes)."""
        try:
            return _parser().handle(self, payload, now_ms)
        finally:
            unload(_PARSER)


_PARSER = "firmware.command_parse"


def _parser():
    from firmware import command_parse
    return command_parse


def parse_envelope(payload):
    """firmware/command_parse.py parse_envelope, the parser unloaded after it."""
    try:
        return _parser().parse_envelope(payload)
    finally:
        unload(_PARSER)


def parse(payload):
    """parse_envelope without the expiry and signature: (corr_id, name, args)."""
    corr_id, name, args, _, _, _ = parse_envelope(payload)
    return corr_id, name, args


def _no_clock():
    return None

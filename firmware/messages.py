"""The MQTT message schema between the station and the operator backend (API version 1).

Topics and payloads only: no sockets, no state. docs/mqtt.md is the reference for the
backend side; every payload carries "v": API_VERSION so both ends can evolve.

Topics are bytes: umqtt.simple writes the length of the object it is given, which for a str
with non-ASCII characters is not its length in bytes.
"""
import json

from firmware import strictjson

API_VERSION = 1

# Topic leaves under <prefix>/<station_id>/
STATUS = "status"        # station -> backend, retained; the last will says offline
TELEMETRY = "telemetry"  # station -> backend, periodic and on change
EVENT = "event"          # station -> backend, state changes etc. (not persisted)
RECORD = "record"        # station -> backend, outbox records (persisted, resent until acked)
REPLY = "reply"          # station -> backend, one per command
CMD = "cmd"              # backend -> station
ACK = "ack"              # backend -> station, acknowledges records by id

# Backend -> station acks: at most this many ids, and payloads larger than this are not parsed.
MAX_ACK_IDS = 32
MAX_ACK_BYTES = 4096


class MessageError(ValueError):
    pass


class Topics:
    """The station's topics, built once."""

    def __init__(self, prefix, station_id):
        if not prefix or not station_id:
            raise MessageError("topics: prefix and station id must not be empty")
        for part in (prefix, station_id):
            for ch in "+#":
                if ch in part:
                    raise MessageError("topics: '%s' must not contain + or #" % part)
        if "/" in station_id:
            raise MessageError("topics: station id must not contain /")
        base = "%s/%s/" % (prefix, station_id)
        self.base = base.encode()
        self.status = (base + STATUS).encode()
        self.telemetry = (base + TELEMETRY).encode()
        self.event = (base + EVENT).encode()
        self.record = (base + RECORD).encode()
        self.reply = (base + REPLY).encode()
        self.cmd = (base + CMD).encode()
        self.ack = (base + ACK).encode()


def encode(message):
    """A message dict as the UTF-8 JSON payload. CPython writes non-ASCII as \\u escapes,
    MicroPython as raw UTF-8: both are valid as long as every str in `message` is (inbound
    strings are: firmware/strictjson.py refuses invalid UTF-8 and joins surrogate pairs)."""
    return json.dumps(message).encode()


def _with(fields, head):
    out = dict(head)
    if fields:
        for k in fields:
            if k not in head:
                out[k] = fields[k]
    return out


def status(fields, online=True):
    """Retained station status: {"v":1, "online":true, ...fields}."""
    return _with(fields, {"v": API_VERSION, "online": online})


def will(reason="connection lost"):
    """The retained last will the broker publishes when the connection dies."""
    return {"v": API_VERSION, "online": False, "reason": reason}


def telemetry(fields):
    return _with(fields, {"v": API_VERSION})


def event(kind, fields=None, time=None):
    """An event: {"v":1, "type": kind, "time": UTC seconds or null, ...fields}."""
    return _with(fields, {"v": API_VERSION, "type": kind, "time": time})


def record(kind, seq, record_id, data):
    """An outbox record. `seq` orders them per station; `id` is what the backend acks and
    de-duplicates on (a resend carries the same id and seq)."""
    return {"v": API_VERSION, "kind": kind, "seq": seq, "id": record_id, "data": data}


def record_parts(kind, seq, record_id, data_json):
    """The encoded record message around data that is already JSON (as the outbox stores
    it), as pieces to write one after the other: no decoding into a dict, and no copy of
    the data (a record is up to a kilobyte; on a fragmented heap a second block of that
    size may not exist)."""
    head = json.dumps({"v": API_VERSION, "kind": kind, "seq": seq, "id": record_id})
    return (head[:-1].encode() + b', "data": ', data_json, b"}")


def record_bytes(kind, seq, record_id, data_json):
    """record_parts() joined into one message."""
    head, data, tail = record_parts(kind, seq, record_id, data_json)
    return head + bytes(data) + tail


def reply(corr_id, cmd, reason=None, data=None, code=None, time=None):
    """A command reply: ok, or error with a reason and its stable code (firmware/commands.py
    ERROR_CODES; GenericError when none is given). `time`: UTC seconds, or None when the
    station's clock is not set (the reply says so with "time": null)."""
    out = {"v": API_VERSION, "id": corr_id, "cmd": cmd, "ok": reason is None, "time": time}
    if reason is not None:
        out["code"] = code or "GenericError"
        out["error"] = reason
    if data is not None:
        out["data"] = data
    return out


def parse_ack(payload):
    """The record ids in an ack payload {"v":1, "ids":[...]}; MessageError if malformed."""
    if len(payload) > MAX_ACK_BYTES:
        raise MessageError("ack: payload over %d bytes" % MAX_ACK_BYTES)
    try:
        strictjson.validate(payload)        # MicroPython's json.loads alone is lenient
        msg = json.loads(strictjson.join_surrogates(payload))
    except (ValueError, UnicodeError):
        raise MessageError("ack: not valid JSON")
    if not isinstance(msg, dict):
        raise MessageError("ack: expected an object")
    v = msg.get("v", API_VERSION)
    if v != API_VERSION or v is True:
        raise MessageError("ack: unsupported version")
    ids = msg.get("ids")
    if not isinstance(ids, list) or not ids:
        raise MessageError("ack: ids must be a non-empty list")
    if len(ids) > MAX_ACK_IDS:
        raise MessageError("ack: at most %d ids" % MAX_ACK_IDS)
    for i in ids:
        if i is True or i is False or not isinstance(i, (str, int)):
            raise MessageError("ack: ids must be strings or integers")
    return ids

"""GetConfiguration (OCPP 1.6 5.8): the keys of firmware/ocpp16/keys.py with their values.

The answer (about 2 KB for every key) is given in pieces, one key at a time, that the
backend writes into the WebSocket's send queue (WsClient.send_pieces): no list of 29
dicts, no 2 KB string and its bytes copy beside the frame."""
import json

from firmware.ocpp16 import keys
from firmware.ocpp16.rpc import PROPERTY, CallError, field


def handle(b, p, now):
    names = field(p, "key", list, False)
    if names is not None:
        if len(names) > keys.MAX_KEYS:
            raise CallError(PROPERTY, "more than %d keys" % keys.MAX_KEYS)
        for n in names:
            if not isinstance(n, str) or len(n) > 50:
                raise CallError(PROPERTY, "key: a string of up to 50 characters")
    cfg = b.cfg
    return lambda: pieces(cfg, names)


def pieces(cfg, names):
    """The answer's payload as JSON text in pieces: {"configurationKey": [...],
    "unknownKey": [...]} (unknownKey only when a key is unknown)."""
    yield '{"configurationKey":['
    sep = ""
    for name, ro, value in keys.entries(cfg, names):
        if ro is not None:
            yield '%s{"key":%s,"readonly":%s,"value":%s}' % (
                sep, json.dumps(name), "true" if ro else "false", json.dumps(value))
            sep = ","
    yield "]"
    sep = ',"unknownKey":['
    for name, ro, _value in keys.entries(cfg, names):
        if ro is None:
            yield sep + json.dumps(name)
            sep = ","
    if sep == ",":
        yield "]"
    yield "}"

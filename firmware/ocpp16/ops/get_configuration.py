"""GetConfiguration (OCPP 1.6 5.8): the keys of firmware/ocpp16/keys.py with their values."""
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
    known, unknown = keys.get(b.cfg, names)
    out = {"configurationKey": known}
    if unknown:
        out["unknownKey"] = unknown
    return out

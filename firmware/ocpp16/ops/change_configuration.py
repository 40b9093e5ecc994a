"""ChangeConfiguration (OCPP 1.6 5.3): a key of firmware/ocpp16/keys.py, validated and
persisted as a station setting."""
from firmware.backend.api import OK, SCHEDULED
from firmware.ocpp16 import keys
from firmware.ocpp16.rpc import field


def handle(b, p, now):
    name = field(p, "key", str, max_len=50)
    value = field(p, "value", str, max_len=500)
    target = keys.setting_for(name, value)
    if isinstance(target, str):
        return {"status": target}
    code = b.ops.set_config({target[0]: target[1]})
    if code == OK:
        return {"status": "Accepted"}
    if code == SCHEDULED:
        return {"status": "RebootRequired"}
    return {"status": "Rejected"}

"""Reset (OCPP 1.6 5.14): the running transaction ends (SoftReset / HardReset), then a clean
restart once the reply has gone out (the station's reboot pauses a charging EV first)."""
from firmware.backend.api import BUSY
from firmware.ocpp16.rpc import choice


def handle(b, p, now):
    kind = choice(p, "type", ("Hard", "Soft"))
    if b.ops.reset(kind == "Hard", now) == BUSY:
        return {"status": "Rejected"}
    b.stop_tx(kind + "Reset", "reboot", now)
    return {"status": "Accepted"}

"""ChangeAvailability (OCPP 1.6 5.2): operative / inoperative, kept across resets; scheduled
until the running transaction ends."""
from firmware.backend.api import OK
from firmware.ocpp16.rpc import choice, field


def handle(b, p, now):
    conn = field(p, "connectorId", int)
    operative = choice(p, "type", ("Inoperative", "Operative")) == "Operative"
    if conn not in (0, 1):
        return {"status": "Rejected"}
    if b.in_transaction() and not operative:
        b.tx.pending_available = False
        return {"status": "Scheduled"}
    b.tx.pending_available = None
    return {"status": "Accepted" if b.ops.set_availability(operative, now) == OK
            else "Rejected"}

"""RemoteStartTransaction (OCPP 1.6 5.11): authorize an idTag from the central system."""
from firmware.backend.api import OK
from firmware.ocpp16.rpc import field


def handle(b, p, now):
    tag = field(p, "idTag", str, max_len=20)
    conn = field(p, "connectorId", int, False)
    field(p, "chargingProfile", dict, False)
    if conn is not None and conn != 1 or b.in_transaction():
        return {"status": "Rejected"}
    return {"status": "Accepted" if b.ops.start(tag, now) == OK else "Rejected"}

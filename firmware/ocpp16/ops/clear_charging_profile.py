"""ClearChargingProfile (OCPP 1.6 5.5): the profile with the id given, else every profile
that matches all the criteria given (connectorId, purpose, stackLevel); Unknown when none
matched."""
from firmware.ocpp16 import smart as _smart
from firmware.ocpp16.rpc import choice, field


def handle(b, p, now):
    pid = field(p, "id", int, False)
    conn = field(p, "connectorId", int, False)
    purpose = choice(p, "chargingProfilePurpose", _smart.PURPOSES, False)
    stack = field(p, "stackLevel", int, False)
    sc = b.smart
    if sc is None:
        return {"status": "Unknown"}
    n = sc.clear(pid, conn, None if purpose is None else _smart.PURPOSES.index(purpose), stack)
    return {"status": "Accepted" if n else "Unknown"}

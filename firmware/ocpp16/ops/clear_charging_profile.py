"""ClearChargingProfile (OCPP 1.6 5.5): the profile with the id given, else every profile
that matches all the criteria given (connectorId, purpose, stackLevel); Unknown when none
matched. Without a profile the Smart Charging module is not even loaded."""
from firmware.ocpp16.rpc import choice, field

# The order of firmware/ocpp16/smart.py PURPOSES (the code is the index).
_PURPOSES = ("ChargePointMaxProfile", "TxDefaultProfile", "TxProfile")


def handle(b, p, now):
    pid = field(p, "id", int, False)
    conn = field(p, "connectorId", int, False)
    purpose = choice(p, "chargingProfilePurpose", _PURPOSES, False)
    stack = field(p, "stackLevel", int, False)
    if b.smart is None or not b.smart.clear(
            pid, conn, None if purpose is None else _PURPOSES.index(purpose), stack):
        return {"status": "Unknown"}
    return {"status": "Accepted"}

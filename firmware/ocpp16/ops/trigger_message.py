"""TriggerMessage (OCPP 1.6 Remote Trigger profile): the requested message is sent as the
next CALL of ours."""
from firmware.ocpp16.rpc import choice, field

_SUPPORTED = ("BootNotification", "Heartbeat", "MeterValues", "StatusNotification")


def handle(b, p, now):
    what = choice(p, "requestedMessage", ("BootNotification", "DiagnosticsStatusNotification",
                                          "FirmwareStatusNotification", "Heartbeat",
                                          "MeterValues", "StatusNotification"))
    conn = field(p, "connectorId", int, False)
    if what not in _SUPPORTED:
        return {"status": "NotImplemented"}
    if conn is not None and conn not in (0, 1):
        return {"status": "Rejected"}
    if what == "MeterValues" and b.ops.meter is None:
        return {"status": "Rejected"}
    b._trigger = (what, conn)
    return {"status": "Accepted"}

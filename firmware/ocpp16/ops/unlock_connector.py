"""UnlockConnector (OCPP 1.6 5.18): a running transaction ends (UnlockCommand), then the lock
is released; NotSupported on a station without a lock (a tethered cable or a plain socket)."""
from firmware.backend.api import OK, UNSUPPORTED
from firmware.ocpp16.rpc import field


def handle(b, p, now):
    conn = field(p, "connectorId", int)
    if conn != 1 or not b.cfg["lock_enabled"]:
        return {"status": "NotSupported"}
    b.stop_tx("UnlockCommand", "unlock", now)
    code = b.ops.unlock(now)
    if code == UNSUPPORTED:
        return {"status": "NotSupported"}
    return {"status": "Unlocked" if code == OK else "UnlockFailed"}

"""RemoteStopTransaction (OCPP 1.6 5.12): end the running transaction with reason Remote."""
from firmware.ocpp16.rpc import field


def handle(b, p, now):
    tx_id = field(p, "transactionId", int)
    if b.in_transaction() and b.log.running_tx_id() == tx_id:
        if b.stop_tx("Remote", "remote_stop", now):
            return {"status": "Accepted"}
    return {"status": "Rejected"}

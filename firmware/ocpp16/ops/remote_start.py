"""RemoteStartTransaction (OCPP 1.6 5.11): authorize an idTag from the central system. A
`chargingProfile` (a TxProfile without transactionId) is installed for the transaction
this starts (firmware/ocpp16/smart.py)."""
from firmware.backend.api import OK
from firmware.ocpp16.rpc import field


def handle(b, p, now):
    tag = field(p, "idTag", str, max_len=20)
    conn = field(p, "connectorId", int, False)
    prof = field(p, "chargingProfile", dict, False)
    if conn is not None and conn != 1 or b.in_transaction():
        return {"status": "Rejected"}
    if prof is not None:
        prof = _tx_profile(b, prof, now)
        if prof is None:
            return {"status": "Rejected"}
    if b.ops.start(tag, now) != OK:
        return {"status": "Rejected"}
    if prof is not None:
        b.smart_charging().install(prof)
    return {"status": "Accepted"}


def _tx_profile(b, p, now):
    # The parser of SetChargingProfile, loaded for this once (it is a rare operation).
    from firmware.ocpp16 import router
    try:
        from firmware.ocpp16.ops.set_charging_profile import tx_profile_for_start
        return tx_profile_for_start(b, p, now)
    finally:
        router.drop("set_charging_profile")

"""DataTransfer (OCPP 1.6 5.6): no vendor extensions here, so every vendorId is unknown."""
from firmware.ocpp16.rpc import field


def handle(b, p, now):
    field(p, "vendorId", str, max_len=255)
    field(p, "messageId", str, False, max_len=50)
    return {"status": "UnknownVendorId"}

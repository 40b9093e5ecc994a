"""The messages the charge point sends, rendered from the station's state or from an entry
of the transaction log at send time (so that a transaction started offline goes out with
the transactionId the central system gave its StartTransaction): BootNotification,
StartTransaction, MeterValues (periodic, clock-aligned, triggered), StopTransaction."""
from firmware.ocpp16 import clock

VENDOR = "OpenChargePoint"
MODEL = "AC-ESP32"
FIRMWARE = "1.0"


def boot(cfg):
    """BootNotification's payload."""
    return {"chargePointVendor": VENDOR, "chargePointModel": MODEL,
            "chargePointSerialNumber": cfg["station_id"][:25], "firmwareVersion": FIRMWARE}


def render(b, e):
    """(action, payload) of the transaction log's entry `e`, or None when its transaction
    is unknown to the central system (its Start was given up)."""
    kind = e[0]
    nr = e[1]
    if kind == "S":
        return "StartTransaction", {"connectorId": 1, "idTag": e[2], "meterStart": e[3],
                                    "timestamp": clock.iso(e[4])}
    tx_id = b.log.tx_id(nr)
    if tx_id is None:
        return None       # its Start was given up: the central system knows no such id
    if kind == "M":
        return "MeterValues", meter_values(b, tx_id, e)
    p = {"transactionId": tx_id, "idTag": e[2], "meterStop": e[3],
         "timestamp": clock.iso(e[4]), "reason": e[5]}
    return "StopTransaction", p


def meter_values(b, tx_id, e=None):
    """MeterValues' payload: of the log's entry `e` (transaction `tx_id`, or None: on
    connector 0), or of the meter now (TriggerMessage) when `e` is None."""
    if e is None:
        # TriggerMessage: the reading now.
        m = b.ops.meter
        now = b.ops.ticks_ms()
        if m is None:
            e = ("M", 0, b.time(now), None, None, None, None)
        else:
            e = ("M", 0, b.time(now), m.import_wh, m.power_w, list(m.current_ma),
                 list(m.voltage_dv))
    ctx = "Sample.Periodic" if tx_id is not None else "Trigger"
    want = None
    if len(e) > 7 and e[7] == "C":
        ctx = "Sample.Clock"
        want = b.cfg["ocpp_aligned_data"]       # MeterValuesAlignedData
    sv = []
    if e[3] is not None and (want is None or "Energy.Active.Import.Register" in want):
        sv.append({"value": "%d" % e[3], "context": ctx,
                   "measurand": "Energy.Active.Import.Register", "unit": "Wh"})
    if e[4] is not None and (want is None or "Power.Active.Import" in want):
        sv.append({"value": "%d" % e[4], "context": ctx,
                   "measurand": "Power.Active.Import", "unit": "W"})
    phases = b.cfg["phases"]
    for i in range(phases):
        if e[5] is not None and e[5][i] is not None and (want is None
                                                         or "Current.Import" in want):
            ma = e[5][i]
            sv.append({"value": "%d.%03d" % (ma // 1000, ma % 1000), "context": ctx,
                       "measurand": "Current.Import", "phase": "L%d" % (i + 1),
                       "unit": "A"})
    for i in range(phases):
        if e[6] is not None and e[6][i] is not None and (want is None or "Voltage" in want):
            dv = e[6][i]
            sv.append({"value": "%d.%d" % (dv // 10, dv % 10), "context": ctx,
                       "measurand": "Voltage", "phase": "L%d-N" % (i + 1), "unit": "V"})
    p = {"connectorId": 1 if tx_id is not None else 0,
         "meterValue": [{"timestamp": clock.iso(e[2]), "sampledValue": sv}]}
    if tx_id is not None:
        p["transactionId"] = tx_id
    return p

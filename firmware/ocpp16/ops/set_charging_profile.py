"""SetChargingProfile (OCPP 1.6 5.16): a charging profile checked, stored on flash and
applied (firmware/ocpp16/smart.py). Rejected: a profile this station cannot keep (a
TxProfile without its transaction, a connector it does not have, a stackLevel, period count
or unit beyond its keys, MaxChargingProfilesInstalled reached)."""
from firmware.ocpp16 import clock
from firmware.ocpp16 import smart as _smart
from firmware.ocpp16.rpc import PROPERTY, CallError, choice, field

_REJECTED = {"status": "Rejected"}


def _time(p, key):
    v = field(p, key, str, False)
    if v is None:
        return None
    try:
        return clock.parse(v) - _smart.EPOCH_2020
    except ValueError:
        raise CallError(PROPERTY, "%s: not a date-time" % key)


def _tenths(v, key):
    # Decimal with one fraction digit (multipleOf 0.1) as an int of tenths.
    if v is True or v is False or not isinstance(v, (int, float)) or v < 0 or v > 1000000:
        raise CallError(PROPERTY, "%s: a number from 0" % key)
    return int(v * 10 + 0.5)


def profile(p, now_s):
    """The profile tuple of a csChargingProfiles object (`now_s`: seconds since 2020, the
    start of an Absolute schedule that names none), or None when this station cannot
    keep it."""
    pid = field(p, "chargingProfileId", int)
    tx_id = field(p, "transactionId", int, False)
    stack = field(p, "stackLevel", int)
    purpose = _smart.PURPOSES.index(choice(p, "chargingProfilePurpose", _smart.PURPOSES))
    kind = _smart.KINDS.index(choice(p, "chargingProfileKind", _smart.KINDS))
    recur = choice(p, "recurrencyKind", ("Daily", "Weekly"), False)
    valid_from = _time(p, "validFrom")
    valid_to = _time(p, "validTo")
    s = field(p, "chargingSchedule", dict)
    duration = field(s, "duration", int, False)
    start = _time(s, "startSchedule")
    unit = _smart.UNITS.index(choice(s, "chargingRateUnit", _smart.UNITS))
    rate = field(s, "minChargingRate", float, False)
    rate = None if rate is None else _tenths(rate, "minChargingRate")
    periods = field(s, "chargingSchedulePeriod", list)
    if not 0 <= stack <= _smart.MAX_STACK or not periods or len(periods) > _smart.MAX_PERIODS:
        return None
    if duration is not None and duration <= 0:
        return None
    flat = []
    last = -1
    for q in periods:
        if not isinstance(q, dict):
            raise CallError(PROPERTY, "chargingSchedulePeriod: objects")
        sp = field(q, "startPeriod", int)
        lim = _tenths(field(q, "limit", float), "limit")
        ph = field(q, "numberPhases", int, False)
        if sp <= last or (last < 0 and sp != 0) or ph is not None and not 1 <= ph <= 3:
            return None               # the first period starts the schedule, then ascending
        last = sp
        flat.append(sp)
        flat.append(lim)
        flat.append(ph or 0)
    if kind == _smart.RECURRING:
        if recur is None or start is None:
            return None
        per = 86400 if recur == "Daily" else 604800
        if duration is not None and duration > per:
            duration = per
    else:
        per = 0
        if kind == _smart.ABSOLUTE and start is None:
            start = now_s             # no startSchedule: from its arrival
    if valid_from is not None and valid_to is not None and valid_to <= valid_from:
        return None
    return (pid, 0, stack, purpose, kind, per, tx_id, valid_from, valid_to, start, duration,
            unit, rate, tuple(flat))


def tx_profile_for_start(b, p, now):
    """RemoteStartTransaction's chargingProfile: a TxProfile without transactionId, for the
    transaction about to start on connector 1; None when it is not one."""
    prof = profile(p, b.time(now) - _smart.EPOCH_2020)
    if prof is None or prof[3] != _smart.TX or prof[6] is not None:
        return None
    return prof[:1] + (1,) + prof[2:]


def handle(b, p, now):
    conn = field(p, "connectorId", int)
    prof = profile(field(p, "csChargingProfiles", dict), b.time(now) - _smart.EPOCH_2020)
    if prof is None or conn not in (0, 1):
        return _REJECTED
    purpose = prof[3]
    if purpose == _smart.CP_MAX and conn != 0:
        return _REJECTED
    if purpose == _smart.TX:
        # Only for the running transaction (OCPP 1.6 3.13.3), on the connector.
        running = b.log.running_tx_id()
        if conn != 1 or running is None or prof[6] is not None and prof[6] != running:
            return _REJECTED
        prof = prof[:6] + (running,) + prof[7:]
    prof = prof[:1] + (conn,) + prof[2:]
    sc = b.smart_charging()
    if not sc.install(prof):
        return _REJECTED
    return {"status": "Accepted"}

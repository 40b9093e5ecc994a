"""GetCompositeSchedule (OCPP 1.6 5.7): the limits the station will apply from now on for
`duration` seconds: the installed profiles (firmware/ocpp16/smart.py) and the local limits
(max_current_ma, the board's rating), in A or W (230 V per phase, over the phases each
period charges on: its numberPhases, else 3, at most the configured phases).
Rejected for a connector the station does not have, or while it does not know the time."""
from firmware.ocpp16 import clock
from firmware.ocpp16.rpc import PROPERTY, CallError, choice, field

_MAX_DURATION = 7 * 86400
_MAX_PERIODS = 24
_NOMINAL_V = 230                 # firmware/ocpp16/smart.py NOMINAL_V


def handle(b, p, now):
    conn = field(p, "connectorId", int)
    duration = field(p, "duration", int)
    unit = choice(p, "chargingRateUnit", ("A", "W"), False) or "A"
    if duration < 0:
        raise CallError(PROPERTY, "duration: from 0")
    wall = b.time(now)
    if conn not in (0, 1) or wall == 0:
        return {"status": "Rejected"}
    if duration > _MAX_DURATION:
        duration = _MAX_DURATION
    local = min(b.cfg["max_current_ma"], b.ops.charger.ceiling_ma())
    phases = b.cfg["phases"]
    sc = b.smart
    if sc is not None:
        from firmware.ocpp16.smart import EPOCH_2020, composite
        r = b.log.running
        tx_start = None if r is None else r[3] - EPOCH_2020
        tx_id = b.log.running_tx_id()
        t0 = wall - EPOCH_2020
    else:
        t0 = 0                 # no profile: the local limit throughout
    end = t0 + duration
    t = t0
    periods = []
    last = None
    while len(periods) < _MAX_PERIODS:
        ma = nxt = None
        ph = phases
        if sc is not None:
            ma, nxt, ph = composite(sc.profiles, t, tx_start, tx_id, phases, conn, True)
        if ma is None or ma > local:
            ma = local
            ph = phases
        if (ma, ph) != last:
            last = (ma, ph)
            if unit == "A":
                v = ma // 100 / 10
            else:
                v = ma * _NOMINAL_V * ph // 100 / 10
            periods.append({"startPeriod": t - t0, "limit": v})
        if nxt is None or nxt >= end:
            break
        t = nxt
    start = clock.iso(wall)
    return {"status": "Accepted", "connectorId": conn, "scheduleStart": start,
            "chargingSchedule": {"duration": duration, "startSchedule": start,
                                 "chargingRateUnit": unit,
                                 "chargingSchedulePeriod": periods}}

"""Connector status for StatusNotification (OCPP 1.6 section 4.9, 7.7 and 7.8), from the
charger's state and the fault table's `ocpp` column (firmware/faults.py)."""
from firmware import faults as _faults
from firmware.compat import const
from firmware.states import STATE_UNAVAILABLE, ev_connected

AVAILABLE = const(0)
PREPARING = const(1)
CHARGING = const(2)
SUSPENDED_EVSE = const(3)
SUSPENDED_EV = const(4)
FINISHING = const(5)
UNAVAILABLE = const(6)
FAULTED = const(7)
NAMES = ("Available", "Preparing", "Charging", "SuspendedEVSE", "SuspendedEV", "Finishing",
         "Unavailable", "Faulted")

NO_ERROR = "NoError"


def connector(c, fault_set, in_tx, finishing):
    """The status of connector 1. `in_tx`: a transaction runs; `finishing`: one ended and
    its EV is still plugged in."""
    if fault_set.blocking():
        return FAULTED
    if not c.available or c.state == STATE_UNAVAILABLE:
        return UNAVAILABLE
    if in_tx:
        if c.contactor:
            return CHARGING
        if c.offered_ma == 0:
            return SUSPENDED_EVSE       # paused, limited below 6 A, not yet offered
        return SUSPENDED_EV             # offered, the EV does not draw
    if ev_connected(c.state):
        return FINISHING if finishing else PREPARING
    if c.authorized:
        return PREPARING                # authorized, waiting for the plug (ConnectionTimeOut)
    return AVAILABLE


def station(c, fault_set):
    """The status of connector 0, the charge point as a whole."""
    if fault_set.blocking():
        return FAULTED
    if not c.available:
        return UNAVAILABLE
    return AVAILABLE


def error(fault_set):
    """(errorCode, fault name or None): the first active stopping fault, else the first
    active warning. BACKEND_OFFLINE is not reported: the central system sees it by itself."""
    active = fault_set.active
    warn = None
    for code in range(1, _faults.MAX_CODE + 1):
        if active & (1 << code) and code != _faults.BACKEND_OFFLINE:
            f = _faults.by_code(code)
            if f.blocking:
                return f.ocpp, f.name
            if warn is None:
                warn = f
    if warn is not None:
        return warn.ocpp, warn.name
    return NO_ERROR, None

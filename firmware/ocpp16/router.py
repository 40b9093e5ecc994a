"""The central system's CALLs: one module per operation in firmware/ocpp16/ops/, found in a
constant table and imported when first needed (as MicroOcpp registers one class per
operation with its message router).

Every module there has `handle(backend, payload, now) -> reply payload` and raises
rpc.CallError for a request it cannot take. Modules marked rare are dropped from
sys.modules after each use: a resident module costs its globals dict on the heap for as
long as the station runs, and Reset or ChangeConfiguration come seldom.
"""
import sys

from firmware.compat import const, unload
from firmware.ocpp16 import rpc

_HOT = const(0)
_RARE = const(1)

# (Action, module in firmware/ocpp16/ops, residency)
OPERATIONS = (
    ("RemoteStartTransaction", "remote_start", _HOT),
    ("RemoteStopTransaction", "remote_stop", _HOT),
    ("TriggerMessage", "trigger_message", _HOT),
    ("ChangeAvailability", "change_availability", _RARE),
    ("ChangeConfiguration", "change_configuration", _RARE),
    ("ClearCache", "clear_cache", _RARE),
    ("ClearChargingProfile", "clear_charging_profile", _RARE),
    ("DataTransfer", "data_transfer", _RARE),
    ("GetCompositeSchedule", "get_composite_schedule", _RARE),
    ("GetConfiguration", "get_configuration", _RARE),
    ("GetLocalListVersion", "get_local_list_version", _RARE),
    ("Reset", "reset", _RARE),
    ("SendLocalList", "send_local_list", _RARE),
    ("SetChargingProfile", "set_charging_profile", _RARE),
    ("UnlockConnector", "unlock_connector", _RARE),
)

# Known OCPP 1.6 actions this station does not support (NotSupported, not NotImplemented).
UNSUPPORTED = ("CancelReservation", "GetDiagnostics", "ReserveNow", "UpdateFirmware")

_PACKAGE = "firmware.ocpp16.ops"
# Modules of firmware.ocpp16 that only rare operations import (the configuration keys: 0.6 KB
# of heap): they leave with the operation.
_RARE_HELPERS = ("keys",)


def _load(name):
    full = _PACKAGE + "." + name
    mod = sys.modules.get(full)
    if mod is None:
        __import__(full)
        mod = sys.modules[full]
    return mod


def drop(name):
    """Let the operation module `name` go (one operation may borrow another's parser)."""
    _drop(name)


def _drop(name, package=_PACKAGE):
    unload(package + "." + name)    # sys.modules and the package both let it go


def dispatch(backend, action, payload, now):
    for op, name, residency in OPERATIONS:
        if op == action:
            try:
                return _load(name).handle(backend, payload, now)
            finally:
                if residency == _RARE:
                    _drop(name)
                    for helper in _RARE_HELPERS:
                        _drop(helper, "firmware.ocpp16")
    if action in UNSUPPORTED:
        raise rpc.CallError(rpc.NOT_SUPPORTED, action)
    raise rpc.CallError(rpc.NOT_IMPLEMENTED, action)


def resident():
    """The operation modules in sys.modules now (for the heap tests)."""
    return [name for _op, name, _r in OPERATIONS if _PACKAGE + "." + name in sys.modules]

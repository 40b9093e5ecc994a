"""The OCPP 1.6 configuration keys (OCPP 1.6 section 9) and the station settings behind them.

A key that maps to a station setting (firmware/config.py) is read from and written to it,
so ChangeConfiguration is validated and persisted like every other change; the rest report
what this station does and cannot be changed (ChangeConfiguration answers Rejected). A key
not in the table is unknown (GetConfiguration's unknownKey, ChangeConfiguration's
NotSupported). Constant tuples: nothing here takes heap until it is read.
"""
from firmware.compat import const

_RO = const(0)     # read-only
_RW = const(1)     # read-write, a station setting
_WO = const(2)     # write-only (secret): never shown
_RWB = const(3)    # read-write, a boolean station setting ("true" / "false")
_RWM = const(4)    # read-write, a list of measurands this station samples

PROFILES = "Core,LocalAuthListManagement,RemoteTrigger,SmartCharging"

METER_MEASURANDS = "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Voltage"

# (key, access, station setting or None, fixed value)
KEYS = (
    ("AllowOfflineTxForUnknownId", _RO, None, None),
    ("AuthorizationCacheEnabled", _RWB, "ocpp_auth_cache", None),
    ("AuthorizationKey", _WO, "ocpp_password", None),
    ("AuthorizeRemoteTxRequests", _RO, None, "false"),
    ("ChargeProfileMaxStackLevel", _RO, None, "8"),
    ("ChargingScheduleAllowedChargingRateUnit", _RO, None, "Current,Power"),
    ("ChargingScheduleMaxPeriods", _RO, None, "24"),
    ("ClockAlignedDataInterval", _RW, "ocpp_aligned_interval_s", None),
    ("ConnectionTimeOut", _RW, "ocpp_connection_timeout_s", None),
    ("ConnectorPhaseRotation", _RO, None, "NotApplicable"),
    ("GetConfigurationMaxKeys", _RO, None, "40"),
    ("HeartbeatInterval", _RW, "ocpp_heartbeat_s", None),
    ("LocalAuthListEnabled", _RWB, "ocpp_local_list", None),
    ("LocalAuthListMaxLength", _RO, "auth_list_max", None),
    ("LocalAuthorizeOffline", _RO, None, None),
    ("LocalPreAuthorize", _RWB, "ocpp_local_pre_authorize", None),
    ("MaxChargingProfilesInstalled", _RO, None, "8"),
    ("MeterValuesAlignedData", _RWM, "ocpp_aligned_data", None),
    ("MeterValuesSampledData", _RO, None, METER_MEASURANDS),
    ("MeterValueSampleInterval", _RW, "ocpp_meter_interval_s", None),
    ("NumberOfConnectors", _RO, None, "1"),
    ("ResetRetries", _RO, None, "1"),
    ("SendLocalListMaxLength", _RO, None, "32"),
    ("StopTransactionOnEVSideDisconnect", _RO, None, "true"),
    ("StopTransactionOnInvalidId", _RO, None, "true"),
    ("StopTxnAlignedData", _RO, None, ""),
    ("StopTxnSampledData", _RO, None, ""),
    ("SupportedFeatureProfiles", _RO, None, PROFILES),
    ("TransactionMessageAttempts", _RW, "ocpp_tx_attempts", None),
    ("TransactionMessageRetryInterval", _RW, "ocpp_tx_retry_s", None),
    ("UnlockConnectorOnEVSideDisconnect", _RO, None, "true"),
    ("WebSocketPingInterval", _RW, "ocpp_ping_s", None),
)

MAX_KEYS = const(40)


def _find(name):
    for row in KEYS:
        if row[0] == name:
            return row
    return None


def _value(row, cfg):
    name, access, setting, fixed = row
    if setting is not None:
        v = cfg[setting]
        if v is True or v is False:
            return "true" if v else "false"
        return "%s" % v
    if name == "AllowOfflineTxForUnknownId":
        return "true" if cfg["offline_policy"] == "allow_all" else "false"
    if name == "LocalAuthorizeOffline":
        return "true" if cfg["offline_policy"] == "local_list" else "false"
    return fixed


def entries(cfg, names):
    """(key, readonly, value) of each key asked for, in order (names None or [] = every key
    that may be read); readonly None: an unknown key. A generator: GetConfiguration writes
    its answer entry by entry and never holds them all."""
    if not names:
        for row in KEYS:
            if row[1] != _WO:
                yield row[0], row[1] == _RO, _value(row, cfg)
        return
    for name in names:
        row = _find(name)
        if row is None or row[1] == _WO:
            yield name, None, None
        else:
            yield name, row[1] == _RO, _value(row, cfg)


def get(cfg, names):
    """(configurationKey, unknownKey) for GetConfiguration; names None or [] = all."""
    known = []
    unknown = []
    for name, ro, value in entries(cfg, names):
        if ro is None:
            unknown.append(name)
        else:
            known.append({"key": name, "readonly": ro, "value": value})
    return known, unknown


def setting_for(name, value):
    """(setting, typed value) for ChangeConfiguration, or a status string: "NotSupported"
    (unknown key), "Rejected" (read-only, or a value of the wrong form)."""
    row = _find(name)
    if row is None:
        return "NotSupported"
    if row[1] == _RO:
        return "Rejected"
    setting = row[2]
    if row[1] == _WO:
        return setting, value
    if row[1] == _RWB:
        v = value.strip().lower()
        if v != "true" and v != "false":
            return "Rejected"
        return setting, v == "true"
    if row[1] == _RWM:
        return measurands(value, setting)
    try:
        n = int(value)
    except ValueError:
        return "Rejected"
    if "%d" % n != value.strip():
        return "Rejected"
    return setting, n


def measurands(value, setting=None):
    """A comma-separated measurand list checked against what the meter gives: (setting,
    the list normalised) or "Rejected" (OCPP 1.6 9.1.14: unsupported measurands refused)."""
    out = []
    for m in value.split(","):
        m = m.strip()
        if not m:
            continue
        if m not in METER_MEASURANDS.split(","):
            return "Rejected"
        out.append(m)
    return setting, ",".join(out)

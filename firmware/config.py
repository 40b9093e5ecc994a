"""Station configuration: one schema, validated on every change.

Every key has a default, a type (taken from the default), a range (ints), a length or a list
of allowed values (strings), and flags. A change is validated in full before anything is
applied, so a bad value changes nothing. Secrets are never echoed: `public()` masks them.

Numbers are integers in the units their names say (_ma milliamps, _ms milliseconds,
_dc tenths of a degree Celsius, _minor minor currency units), because floats on the ESP32
are 32-bit and allocate.

Modules that own a group of keys document them beside the code that uses them; the schema
lives here so that the MQTT `set_config` command, the REPL `set()` and boot all validate
alike.
"""
import json

from firmware.compat import const, small_int

# (const: a _TABLE line with flags is then a constant tuple, in flash when frozen)
SECRET = const(1)   # never published or printed
REBOOT = const(2)   # takes effect after a reboot
HARDWARE = const(4)  # says what the hardware is: refused while the contactor is closed

_MASK = "***"

# key, (default, low, high, flags): pairs in one constant tuple, in flash when frozen (as a
# dict, the schema took 816 B of the ESP32's heap); read with spec(), default() and keys().
#   int:  low/high are the inclusive range
#   bool: low/high unused (None)
#   str:  a tuple in `low` lists the allowed values; otherwise low/high bound the length
_TABLE = (
    # -- station identity -------------------------------------------------------------
    "station_id", ("cp-0001", 1, 64, REBOOT),
    "connector_id", (1, 1, 8, REBOOT),

    # -- charge controller (firmware/charger.py) ---------------------------------------
    # Site/installation limit; the effective limit is the minimum of this, the cable
    # rating, the backend limit, thermal derating and the comms-loss fallback.
    "max_current_ma", (32000, 6000, 80000, 0),
    "phases", (3, 1, 3, HARDWARE),
    "ventilation_supported", (False, None, None, 0),   # state D allowed only when True
    "wake_up_enabled", (True, None, None, 0),
    "wake_up_after_ms", (30000, 5000, 600000, 0),
    # Over-current: stop when the EV draws more than offered + margin for longer than grace.
    "overcurrent_margin_ma", (5000, 500, 20000, 0),
    "overcurrent_grace_ms", (5000, 1000, 60000, 0),
    # Over-temperature (tenths of a degree C): halve / restore / quarter / stop.
    "temp_derate_dc", (650, 300, 1200, 0),
    "temp_restore_dc", (620, 300, 1200, 0),
    "temp_quarter_dc", (680, 300, 1200, 0),
    "temp_stop_dc", (710, 300, 1200, 0),
    "rcd_selftest", (True, None, None, 0),
    # Timing ranges keep IEC 61851-1 Annex A whatever the values within them (checked by
    # tests/unit/test_annexa_ranges.py): a close waits for the longest of the debounce,
    # welded_check_ms since the last opening, a self-test (drive + release) and the lock,
    # and must come within 3 s of C; F lasts >= 300 ms (Table A.5); PWM off -> open <= 6 s.
    "rcd_selftest_timeout_ms", (500, 100, 1000, 0),
    "welded_check_ms", (1000, 200, 2000, 0),
    "contactor_close_timeout_ms", (1000, 100, 5000, 0),
    "b_to_c_debounce_ms", (500, 0, 2000, 0),
    "fault_hold_ms", (300, 300, 10000, 0),
    "pwm_off_open_ms", (6000, 3000, 6000, 0),
    "lock_enabled", (False, None, None, 0),
    "lock_timeout_ms", (1000, 200, 2000, 0),          # lock feedback must confirm within
    "pilot_confirm_n", (2, 1, 5, 0),                  # equal CP readings to accept a level
    "duty_update_interval_ms", (5000, 0, 60000, 0),   # min time between current increases
    "socket_outlet", (True, None, None, HARDWARE),    # True: PP codes the cable rating
    "temp_sensor_required", (False, None, None, 0),   # True: no reading blocks charging
    "wake_up_pilot", ("x1", ("x1", "F"), None, 0),    # wake-up: steady +12 V or -12 V
    "wake_up_hold_ms", (3000, 1000, 10000, 0),        # how long the wake-up level is held
    "rcd_selftest_period_ms", (86400000, 3600000, 86400000, 0),  # re-test when idle this long

    # -- energy meter (firmware/meter_service.py) --------------------------------------
    "meter_map", ("sdm630", ("sdm630", "sdm120", "sdm230", "abb_b23", "em340", "eem350", "orno_we516", "custom"), None, 0),
    "meter_custom_map", ("", 0, 1024, 0),
    "meter_addr", (1, 1, 247, 0),
    "meter_baud", (9600, 1200, 115200, REBOOT),
    "meter_parity", ("N", ("N", "E", "O"), None, REBOOT),
    "meter_poll_ms", (1000, 200, 60000, 0),
    "meter_timeout_ms", (300, 50, 2000, 0),
    "meter_retries", (1, 0, 5, 0),
    "meter_stale_after", (3, 1, 20, 0),
    "meter_max_power_w", (50000, 1000, 200000, 0),

    # -- backend link (firmware/mqtt_link.py) ------------------------------------------
    "mqtt_host", ("", 0, 128, REBOOT),
    "mqtt_port", (1883, 1, 65535, REBOOT),
    "mqtt_prefix", ("cp", 1, 32, REBOOT),
    "mqtt_user", ("", 0, 64, REBOOT),
    "mqtt_password", ("", 0, 128, SECRET | REBOOT),
    "mqtt_tls", (False, None, None, REBOOT),
    "mqtt_ca_file", ("", 0, 64, REBOOT),
    "mqtt_cert_file", ("", 0, 64, REBOOT),
    "mqtt_key_file", ("", 0, 64, SECRET | REBOOT),
    "mqtt_keepalive_s", (60, 10, 1200, REBOOT),
    "telemetry_interval_s", (60, 5, 3600, 0),
    "telemetry_deadband_w", (500, 0, 50000, 0),
    "telemetry_idle_interval_s", (900, 60, 86400, 0),  # without a session: status says it all
    "comms_loss_timeout_s", (300, 10, 86400, 0),
    "comms_fallback_ma", (0, 0, 80000, 0),    # 0 = pause while the backend is unreachable
    "mqtt_connect_timeout_ms", (10000, 500, 60000, 0),  # TCP + TLS + CONNACK, across steps
    "mqtt_io_timeout_ms", (20, 1, 1000, 0),   # longest wait inside one step (rest of a packet)
    "mqtt_backoff_min_ms", (1000, 100, 60000, 0),
    "mqtt_backoff_max_s", (300, 1, 3600, 0),
    # First connect after boot anywhere in 0..this (stations boot together after a power
    # cut; docs/mqtt.md "Reconnect storms"); 0 = at once.
    "mqtt_boot_spread_s", (8, 0, 300, REBOOT),
    "outbox_capacity", (64, 4, 1000, REBOOT),  # records held until the backend acks them
    "outbox_window", (4, 1, 32, 0),           # records in flight (sent, not yet acked)
    "outbox_resend_s", (60, 5, 3600, 0),      # resend an unacked record after this
    "outbox_flush_per_s", (5, 1, 100, 0),     # records sent per second at most (a backlog flush)
    "ha_discovery", (False, None, None, 0),   # Home Assistant discovery (firmware/ha_discovery.py)
    # The owner's command key (64 hex digits, provisioned at commissioning; "" = none):
    # trust settings change by MQTT only in a command signed with it (firmware/owner.py).
    "owner_key", ("", 0, 64, SECRET),
    # Credentials over a connection without TLS: refused unless this local setting allows.
    "mqtt_plain_credentials", (False, None, None, REBOOT),

    # -- backend choice and OCPP 1.6J (firmware/backend, firmware/ocpp16, docs/ocpp.md) -----
    "backend", ("mqtt", ("mqtt", "ocpp16"), None, REBOOT),
    "ocpp_url", ("", 0, 200, REBOOT),            # ws://host:port/path or wss://...
    "ocpp_id", ("", 0, 48, REBOOT),              # charge point identity; "" = station_id
    "ocpp_password", ("", 0, 64, SECRET | REBOOT),  # Basic auth (Security Profiles 1, 2)
    "ocpp_ca_file", ("", 0, 64, REBOOT),         # wss://: the CA (DER) the server must chain to
    "ocpp_heartbeat_s", (300, 0, 86400, 0),      # HeartbeatInterval (the server's, once booted)
    "ocpp_meter_interval_s", (60, 0, 3600, 0),   # MeterValueSampleInterval; 0 = none
    "ocpp_connection_timeout_s", (60, 10, 600, 0),  # ConnectionTimeOut: plug-in after authorize
    "ocpp_ping_s", (60, 0, 3600, 0),             # WebSocketPingInterval; 0 = no pings
    "ocpp_call_timeout_s", (30, 5, 300, 0),      # a CALL unanswered this long has failed
    "ocpp_tx_attempts", (5, 1, 20, 0),           # TransactionMessageAttempts
    "ocpp_tx_retry_s", (30, 1, 3600, 0),         # TransactionMessageRetryInterval
    "ocpp_backoff_max_s", (120, 5, 3600, 0),     # longest wait between connection attempts
    "ocpp_local_list", (True, None, None, 0),     # LocalAuthListEnabled
    "ocpp_local_pre_authorize", (False, None, None, 0),  # LocalPreAuthorize
    "ocpp_auth_cache", (True, None, None, 0),     # AuthorizationCacheEnabled
    "ocpp_aligned_interval_s", (0, 0, 86400, 0),  # ClockAlignedDataInterval; 0 = none
    "ocpp_aligned_data", ("Energy.Active.Import.Register", 0, 120, 0),  # MeterValuesAlignedData

    # -- network (drivers) ------------------------------------------------------------
    "wifi_ssid", ("", 0, 32, REBOOT),
    "wifi_password", ("", 0, 64, SECRET | REBOOT),
    "ntp_server", ("pool.ntp.org", 0, 64, REBOOT),   # "" = no network time; name or IP

    # -- authorization and tariff (firmware/auth.py, firmware/tariff.py) -------------------
    "auth_mode", ("free", ("free", "backend", "local"), None, 0),
    "offline_policy", ("local_list", ("local_list", "allow_all", "deny"), None, 0),
    "tariff_id", ("default", 1, 32, 0),
    "currency", ("EUR", 3, 3, 0),
    "price_per_kwh_minor", (0, 0, 100000, 0),
    "price_per_min_charging_minor", (0, 0, 100000, 0),
    "price_per_min_idle_minor", (0, 0, 100000, 0),
    "idle_grace_min", (0, 0, 1440, 0),
    "session_fee_minor", (0, 0, 100000, 0),
    "auth_list_max", (250, 1, 2000, 0),                # local allow-list entries (RAM, flash)
    "session_checkpoint_s", (10, 10, 3600, 0),         # small live checkpoint this often (docs/sessions.md: wear)
    "session_checkpoint_wh", (100, 10, 10000, 0),      # ... or after this much energy (>= 10 s apart)
    "counters_save_s", (60, 60, 86400, 0),             # lifetime counters to flash at most this often
    "contactor_load_threshold_w", (100, 0, 10000, 0),  # opening above this counts as under load
)


def spec(key):
    """(default, low, high, flags) of the config key `key`, or None when it is none. A scan
    of the constant table in C (some 100 keys): no allocation, no dict in RAM."""
    if type(key) is str and key in _TABLE:      # the table's other items are tuples
        return _TABLE[_TABLE.index(key) + 1]
    return None


def default(key):
    """The default of the config key `key` (KeyError when it is none)."""
    s = spec(key)
    if s is None:
        raise KeyError(key)
    return s[0]


def keys():
    """Every config key, in the table's order."""
    for i in range(0, len(_TABLE), 2):
        yield _TABLE[i]


# The safety-relevant keys whose default may exceed what a site allows, and the value
# they take when no valid stored configuration exists (firmware/config_store.py): the
# least current a pilot can offer (IEC 61851-1: 6 A), one phase, a pause while the backend
# is unreachable, no ventilated charging (state D). A higher default is never a fallback.
SAFE_FALLBACK = {
    "max_current_ma": 6000,
    "phases": 1,
    "comms_fallback_ma": 0,
    "ventilation_supported": False,
}


# Settings that decide whom the station trusts: changed only in service mode (the serial
# port) or by a command signed by the owner (docs/mqtt.md, "Settings only the owner may
# change"). No update source exists yet; when one comes it belongs here.
TRUST_KEYS = ("mqtt_host", "mqtt_port", "mqtt_prefix", "station_id", "mqtt_tls",
              "mqtt_ca_file", "mqtt_cert_file", "mqtt_key_file", "mqtt_user", "mqtt_password",
              "owner_key", "mqtt_plain_credentials")
# Secrets that must not travel over a connection without TLS.
CREDENTIAL_KEYS = ("mqtt_user", "mqtt_password", "owner_key", "wifi_password")


class ConfigError(ValueError):
    pass


# Keys that hold a host name or an IP address: letters, digits, '-', '.', ':' (IPv6) and
# '_' only. A space or a scheme ("mqtt://") would fail every DNS lookup after the reboot.
_HOST_KEYS = ("mqtt_host", "ntp_server")
_HOST_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.:_"
_HEX = "0123456789abcdefABCDEF"

# Keys that become MQTT topic levels (firmware/messages.py Topics): the characters here, and
# control characters, would stop the link from being built at boot (MQTT 3.1.1 4.7).
_TOPIC_FORBIDDEN = {"station_id": "+#/", "mqtt_prefix": "+#"}


def validate(key, value):
    """Return `value` normalised for `key`, or raise ConfigError with the reason."""
    s = spec(key)
    if s is None:
        raise ConfigError(unknown_key(key))
    dflt, low, high, _flags = s
    if isinstance(dflt, bool):
        if value is True or value is False:
            return value
        raise ConfigError("%s: expected true or false" % key)
    if isinstance(dflt, int):
        # bool is not an int here: `true` for a current is a mistake, not 1 mA.
        if value is True or value is False or not isinstance(value, int):
            raise ConfigError("%s: expected an integer" % key)
        if value < low or value > high:
            raise ConfigError("%s: %d out of range %d..%d" % (key, value, low, high))
        return value
    if not isinstance(value, str):
        raise ConfigError("%s: expected a string" % key)
    if isinstance(low, tuple):
        if value not in low:
            raise ConfigError("%s: must be one of %s" % (key, ", ".join(low)))
        return value
    if len(value) < low or len(value) > high:
        raise ConfigError("%s: length must be %d..%d" % (key, low, high))
    if key in _HOST_KEYS:
        for ch in value:
            if ch not in _HOST_CHARS:
                raise ConfigError("%s: %r is not a host name or IP address (bad character %r)"
                                  % (key, value, ch))
    if key == "wifi_password" and value and not _wpa2_passphrase(value):
        # IEEE 802.11i: a WPA2 passphrase is 8..63 characters, or the key as 64 hex digits;
        # the radio would refuse anything else after the reboot and the station go offline.
        raise ConfigError("wifi_password: WPA2 needs 8..63 characters or 64 hex digits"
                          " (empty for an open network)")
    forbidden = _TOPIC_FORBIDDEN.get(key)
    if forbidden is not None:
        for ch in value:
            if ch in forbidden or ch < " " or ch == "\x7f":
                raise ConfigError("%s: no control characters and none of %s (MQTT topic)"
                                  % (key, " ".join(forbidden)))
    return value


def _wpa2_passphrase(value):
    if len(value) == 64:
        for ch in value:
            if ch not in _HEX:
                return False
        return True
    return 8 <= len(value) <= 63


def is_secret(key):
    s = spec(key)
    return s is not None and bool(s[3] & SECRET)


def is_trust(key):
    return key in TRUST_KEYS


def is_credential(key):
    return key in CREDENTIAL_KEYS


def needs_reboot(key):
    s = spec(key)
    return s is not None and bool(s[3] & REBOOT)


def is_hardware(key):
    s = spec(key)
    return s is not None and bool(s[3] & HARDWARE)


def warnings(cfg):
    """Settings that are valid one by one but will not work together (said before the
    reboot that makes them real): a list of texts, empty when none."""
    out = []
    if cfg["mqtt_tls"] and not cfg["mqtt_ca_file"]:
        out.append("mqtt_tls is on without mqtt_ca_file: the link refuses to connect"
                   " (it never connects unverified)")
    if bool(cfg["mqtt_cert_file"]) != bool(cfg["mqtt_key_file"]):
        out.append("mqtt_cert_file and mqtt_key_file go together: set both or neither")
    if cfg["wifi_password"] and not cfg["wifi_ssid"]:
        out.append("wifi_password is set but wifi_ssid is empty")
    return out


def suggest(word, choices):
    """The entry of `choices` (any iterable, read once) closest to `word` (a typo), or None
    when none is close: the nearest within an edit distance of 3, else the first that
    contains the word or is contained in it."""
    best = None
    best_d = 4
    part = None
    for c in choices:
        d = _distance(word, c)
        if d < best_d:
            best = c
            best_d = d
        if part is None and len(word) >= 4 and (word in c or c in word):
            part = c
    return best if best is not None else part


def _distance(a, b):
    # Levenshtein distance, one row at a time (small lists, diagnostics only).
    prev = list(range(len(b) + 1))
    for i in range(len(a)):
        cur = [i + 1]
        for j in range(len(b)):
            same = 0 if a[i] == b[j] else 1
            cur.append(min(prev[j + 1] + 1, cur[j] + 1, prev[j] + same))
        prev = cur
    return prev[-1]


def unknown_key(key):
    """The reason text for an unknown key, with the closest known key."""
    near = suggest(key, keys()) if isinstance(key, str) else None
    if near is not None:
        return "%s: unknown key (did you mean %s?)" % (key, near)
    return "%s: unknown key (diag.config() lists them)" % (key,)


def _check_relations(values):
    # Cross-key rules that single-key ranges cannot express.
    if not (values["temp_restore_dc"] < values["temp_derate_dc"]
            <= values["temp_quarter_dc"] <= values["temp_stop_dc"]):
        raise ConfigError("temperatures: need restore < derate <= quarter <= stop")
    url = values["ocpp_url"]
    if url and not (url.startswith("ws://") or url.startswith("wss://")):
        raise ConfigError("ocpp_url: ws://... or wss://...")
    if values["comms_fallback_ma"] and values["comms_fallback_ma"] < 6000:
        raise ConfigError("comms_fallback_ma: 0 (pause) or 6000..80000")
    key = values["owner_key"]
    if key and (len(key) != 64 or [c for c in key if c not in "0123456789abcdefABCDEF"]):
        raise ConfigError("owner_key: 64 hex digits (32 bytes) or empty")


def _big(default):
    # Frozen, an int default over 8191 is a long int in flash: arithmetic on it in the
    # safety tick would allocate (compat.small_int), so a Config keeps it as a small int.
    return type(default) is int and not -8192 <= default <= 8191


class Config:
    """The values of every config key. Only what differs from the defaults is stored (plus
    the big int defaults, as small ints): a key not stored reads as its default."""

    def __init__(self, values=None):
        self._values = {}
        for i in range(0, len(_TABLE), 2):
            dflt = _TABLE[i + 1][0]
            if _big(dflt):
                self._values[_TABLE[i]] = small_int(dflt)
        if values is not None:
            self.update(values)     # not an object ([] too): ConfigError

    def __getitem__(self, key):
        values = self._values
        if key in values:
            return values[key]
        return default(key)

    def get(self, key, default=None):
        values = self._values
        if key in values:
            return values[key]
        s = spec(key)
        return default if s is None else s[0]

    def update(self, changes):
        """Validate every change, then apply all or none. Returns the keys that changed."""
        if not isinstance(changes, dict):
            raise ConfigError("config: expected an object")
        candidate = Config()
        stored = candidate._values = dict(self._values)
        for key in changes:
            value = validate(key, changes[key])
            dflt = default(key)
            if value == dflt and not _big(dflt):
                if key in stored:
                    del stored[key]
            else:
                stored[key] = value
        _check_relations(candidate)
        changed = [k for k in changes if self[k] != candidate[k]]
        self._values = stored
        return changed

    def set(self, key, value):
        return self.update({key: value})

    def public(self, names=None):
        """The values safe to show an operator: secrets masked (or empty when unset)."""
        out = {}
        for key in names or keys():
            if spec(key) is None:
                raise ConfigError("%s: unknown key" % key)
            value = self[key]
            out[key] = (_MASK if value else "") if is_secret(key) else value
        return out

    def changed_from_defaults(self):
        return {k: v for k, v in self._values.items() if v != default(k)}

    def to_json(self):
        # Only what differs from the defaults is stored, so new firmware defaults apply.
        return json.dumps(self.changed_from_defaults())

    @classmethod
    def from_json(cls, text):
        try:
            values = json.loads(text)
        except ValueError:
            raise ConfigError("config: stored file is not valid JSON")
        if not isinstance(values, dict):
            raise ConfigError("config: expected an object")
        return cls(values)

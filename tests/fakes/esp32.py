"""A fake ESP32 `esp32` module: NVS with commit semantics (see tests/fakes/machine.py).

Values set through an NVS handle are visible to that namespace at once, but only committed
values survive `machine.sim.power_cycle()`: on the device an uncommitted write may be lost
at a reset, and code must not rely on it.

Errors are the port's (ports/esp32/esp32_nvs.c): every ESP-IDF failure goes through
check_esp_err(), which raises OSError(-code, name) with the *negative* ESP-IDF code as
errno (only ESP_ERR_NO_MEM, _TIMEOUT and _NOT_SUPPORTED map to POSIX numbers). A missing
key is therefore errno -0x1102, not ENOENT. set_i32() converts with mp_obj_get_int(): a
value beyond the 32-bit machine word raises OverflowError, a non-str key TypeError.
"""
_KEY_MAX = 15

# ESP-IDF nvs.h error codes (ESP_ERR_NVS_BASE 0x1100).
ESP_ERR_NVS_NOT_FOUND = 0x1102
ESP_ERR_NVS_TYPE_MISMATCH = 0x1103
ESP_ERR_NVS_KEY_TOO_LONG = 0x1109
ESP_ERR_NVS_INVALID_LENGTH = 0x110C
_NAMES = {
    ESP_ERR_NVS_NOT_FOUND: "ESP_ERR_NVS_NOT_FOUND",
    ESP_ERR_NVS_TYPE_MISMATCH: "ESP_ERR_NVS_TYPE_MISMATCH",
    ESP_ERR_NVS_KEY_TOO_LONG: "ESP_ERR_NVS_KEY_TOO_LONG",
    ESP_ERR_NVS_INVALID_LENGTH: "ESP_ERR_NVS_INVALID_LENGTH",
}


def _esp_err(code):
    """The OSError check_esp_err() raises for an ESP-IDF error code."""
    return OSError(-code, _NAMES[code])


def _name(name):
    if not isinstance(name, str):
        raise TypeError("can't convert to str implicitly")
    if len(name) > _KEY_MAX:
        raise _esp_err(ESP_ERR_NVS_KEY_TOO_LONG)
    return name
_committed = {}   # namespace -> {key: value}
_pending = {}     # namespace -> {key: value or None (erased)}


def _power_cycle():
    _pending.clear()


def _reset_all():
    """Test hook: erase the whole NVS partition."""
    _committed.clear()
    _pending.clear()


# ports/esp32/esp32_nvs.c: esp32_nvs_make_new (nvs_open, NVS_READWRITE); the methods are
# get_i32/set_i32, get_blob/set_blob, erase_key and commit (esp32_nvs_locals_dict_table)
class NVS:
    def __init__(self, namespace):
        self._ns = _name(namespace)
        _committed.setdefault(namespace, {})
        _pending.setdefault(namespace, {})

    def _key(self, key):
        return _name(key)

    def _get(self, key):
        pend = _pending.get(self._ns, {})
        if key in pend:
            value = pend[key]
        else:
            value = _committed[self._ns].get(key)
        if value is None:
            raise _esp_err(ESP_ERR_NVS_NOT_FOUND)
        return value

    # ports/esp32/esp32_nvs.c: esp32_nvs_set_i32 (nvs_set_i32)
    def set_i32(self, key, value):
        if not isinstance(value, int):
            raise TypeError("can't convert to int")
        if not -(1 << 31) <= value < (1 << 31):
            raise OverflowError("overflow converting long int to machine word")
        _pending.setdefault(self._ns, {})[self._key(key)] = value

    # ports/esp32/esp32_nvs.c: esp32_nvs_get_i32 (nvs_get_i32)
    def get_i32(self, key):
        value = self._get(self._key(key))
        if not isinstance(value, int):
            raise _esp_err(ESP_ERR_NVS_TYPE_MISMATCH)
        return value

    # ports/esp32/esp32_nvs.c: esp32_nvs_set_blob (nvs_set_blob)
    def set_blob(self, key, value):
        _pending.setdefault(self._ns, {})[self._key(key)] = bytes(value)

    # ports/esp32/esp32_nvs.c: esp32_nvs_get_blob: returns the length; a buffer too small
    # is ESP_ERR_NVS_INVALID_LENGTH
    def get_blob(self, key, buffer):
        value = self._get(self._key(key))
        if isinstance(value, int):
            raise _esp_err(ESP_ERR_NVS_TYPE_MISMATCH)
        if len(buffer) < len(value):
            raise _esp_err(ESP_ERR_NVS_INVALID_LENGTH)
        buffer[:len(value)] = value
        return len(value)

    # ports/esp32/esp32_nvs.c: esp32_nvs_erase_key (nvs_erase_key)
    def erase_key(self, key):
        self._get(self._key(key))
        _pending.setdefault(self._ns, {})[key] = None

    # ports/esp32/esp32_nvs.c: esp32_nvs_commit (nvs_commit)
    def commit(self):
        pend = _pending.get(self._ns, {})
        store = _committed[self._ns]
        for key in pend:
            if pend[key] is None:
                store.pop(key, None)
            else:
                store[key] = pend[key]
        pend.clear()

"""A fake ESP32 `esp32` module: NVS with commit semantics (see tests/fakes/machine.py).

Values set through an NVS handle are visible to that namespace at once, but only committed
values survive `machine.sim.power_cycle()`: on the device an uncommitted write may be lost
at a reset, and code must not rely on it.
"""
import errno

_KEY_MAX = 15
_committed = {}   # namespace -> {key: value}
_pending = {}     # namespace -> {key: value or None (erased)}


def _power_cycle():
    _pending.clear()


def _reset_all():
    """Test hook: erase the whole NVS partition."""
    _committed.clear()
    _pending.clear()


class NVS:
    def __init__(self, namespace):
        if not isinstance(namespace, str) or not 0 < len(namespace) <= _KEY_MAX:
            raise ValueError("invalid namespace")
        self._ns = namespace
        _committed.setdefault(namespace, {})
        _pending.setdefault(namespace, {})

    def _key(self, key):
        if not isinstance(key, str) or not 0 < len(key) <= _KEY_MAX:
            raise ValueError("invalid key")
        return key

    def _get(self, key):
        pend = _pending.get(self._ns, {})
        if key in pend:
            value = pend[key]
        else:
            value = _committed[self._ns].get(key)
        if value is None:
            raise OSError(errno.ENOENT)
        return value

    def set_i32(self, key, value):
        if not isinstance(value, int) or not -(1 << 31) <= value < (1 << 31):
            raise ValueError("value out of range")
        _pending.setdefault(self._ns, {})[self._key(key)] = value

    def get_i32(self, key):
        value = self._get(self._key(key))
        if not isinstance(value, int):
            raise OSError(errno.EINVAL)
        return value

    def set_blob(self, key, value):
        _pending.setdefault(self._ns, {})[self._key(key)] = bytes(value)

    def get_blob(self, key, buffer):
        value = self._get(self._key(key))
        if isinstance(value, int):
            raise OSError(errno.EINVAL)
        if len(buffer) < len(value):
            raise OSError(errno.ENOMEM)
        buffer[:len(value)] = value
        return len(value)

    def erase_key(self, key):
        self._get(self._key(key))
        _pending.setdefault(self._ns, {})[key] = None

    def commit(self):
        pend = _pending.get(self._ns, {})
        store = _committed[self._ns]
        for key in pend:
            if pend[key] is None:
                store.pop(key, None)
            else:
                store[key] = pend[key]
        pend.clear()

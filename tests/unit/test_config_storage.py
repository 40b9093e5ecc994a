# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
# A Config stores only what differs from the defaults (plus the big int defaults as small
# ints): every key still reads as before, and the safety tick's reads allocate nothing.
import unittest

from firmware.config import Config, ConfigError, default, keys

try:
    import micropython
    HEAP_LOCK = hasattr(micropython, "heap_lock")
except ImportError:
    HEAP_LOCK = False


class SparseStorage(unittest.TestCase):
    def test_every_key_reads_its_default(self):
        cfg = Config()
        for key in keys():
            self.assertEqual(cfg[key], default(key), key)
            self.assertEqual(cfg.get(key), default(key), key)
        self.assertEqual(cfg.changed_from_defaults(), {})
        self.assertEqual(cfg.get("no_such_key", 5), 5)
        self.assertRaises(KeyError, lambda: cfg["no_such_key"])
        # Stored: the big int defaults only (a handful, not the whole schema).
        big = [k for k in keys() if type(default(k)) is int and default(k) > 8191]
        self.assertEqual(sorted(cfg._values), sorted(big))

    def test_a_change_is_stored_and_a_return_to_the_default_is_dropped(self):
        cfg = Config({"phases": 1, "station_id": "cp-9"})
        self.assertEqual((cfg["phases"], cfg["station_id"]), (1, "cp-9"))
        self.assertEqual(cfg.changed_from_defaults(), {"phases": 1, "station_id": "cp-9"})
        self.assertEqual(cfg.update({"phases": default("phases"), "station_id": "cp-9"}),
                         ["phases"])
        self.assertFalse("phases" in cfg._values)
        self.assertEqual(cfg["phases"], default("phases"))
        self.assertEqual(cfg.changed_from_defaults(), {"station_id": "cp-9"})
        self.assertEqual(Config.from_json(cfg.to_json()).changed_from_defaults(),
                         {"station_id": "cp-9"})

    def test_a_big_int_key_set_to_its_default_stays_readable(self):
        cfg = Config({"max_current_ma": 16000})
        self.assertEqual(cfg.update({"max_current_ma": default("max_current_ma")}),
                         ["max_current_ma"])
        self.assertEqual(cfg["max_current_ma"], default("max_current_ma"))
        self.assertEqual(cfg.changed_from_defaults(), {})

    def test_a_refused_update_changes_nothing(self):
        cfg = Config({"phases": 1})
        before = dict(cfg._values)
        # valid one by one, refused together (restore must stay below derate)
        self.assertRaises(ConfigError, cfg.update, {"phases": 3, "temp_restore_dc": 700})
        self.assertRaises(ConfigError, cfg.update, {"phases": 3, "no_such_key": 1})
        self.assertEqual(cfg._values, before)
        self.assertEqual(cfg["phases"], 1)

    def test_reads_allocate_nothing(self):
        if not HEAP_LOCK:
            raise unittest.SkipTest("needs micropython.heap_lock (unix port)")
        cfg = Config({"phases": 1})
        micropython.heap_lock()
        try:
            # a big int default read and computed with, a stored value, a default
            total = cfg["max_current_ma"] - 1000 + cfg["phases"] + cfg["pilot_confirm_n"]
        finally:
            micropython.heap_unlock()
        self.assertEqual(total, default("max_current_ma") - 1000 + 1
                         + default("pilot_confirm_n"))


if __name__ == "__main__":
    unittest.main()

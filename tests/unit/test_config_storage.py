# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
# A Config stores only what differs from the defaults (plus the big int defaults as small
# ints): every key still reads as before, and the safety tick's reads allocate nothing.
import unittest

from firmware.config import SCHEMA, Config, ConfigError

try:
    import micropython
    HEAP_LOCK = hasattr(micropython, "heap_lock")
except ImportError:
    HEAP_LOCK = False


class SparseStorage(unittest.TestCase):
    def test_every_key_reads_its_default(self):
        cfg = Config()
        for key in SCHEMA:
            self.assertEqual(cfg[key], SCHEMA[key][0], key)
            self.assertEqual(cfg.get(key), SCHEMA[key][0], key)
        self.assertEqual(cfg.changed_from_defaults(), {})
        self.assertEqual(cfg.get("no_such_key", 5), 5)
        self.assertRaises(KeyError, lambda: cfg["no_such_key"])
        # Stored: the big int defaults only (a handful, not the whole schema).
        big = [k for k in SCHEMA if type(SCHEMA[k][0]) is int and SCHEMA[k][0] > 8191]
        self.assertEqual(sorted(cfg._values), sorted(big))

    def test_a_change_is_stored_and_a_return_to_the_default_is_dropped(self):
        cfg = Config({"phases": 1, "station_id": "cp-9"})
        self.assertEqual((cfg["phases"], cfg["station_id"]), (1, "cp-9"))
        self.assertEqual(cfg.changed_from_defaults(), {"phases": 1, "station_id": "cp-9"})
        self.assertEqual(cfg.update({"phases": SCHEMA["phases"][0], "station_id": "cp-9"}),
                         ["phases"])
        self.assertFalse("phases" in cfg._values)
        self.assertEqual(cfg["phases"], SCHEMA["phases"][0])
        self.assertEqual(cfg.changed_from_defaults(), {"station_id": "cp-9"})
        self.assertEqual(Config.from_json(cfg.to_json()).changed_from_defaults(),
                         {"station_id": "cp-9"})

    def test_a_big_int_key_set_to_its_default_stays_readable(self):
        cfg = Config({"max_current_ma": 16000})
        self.assertEqual(cfg.update({"max_current_ma": SCHEMA["max_current_ma"][0]}),
                         ["max_current_ma"])
        self.assertEqual(cfg["max_current_ma"], SCHEMA["max_current_ma"][0])
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
        self.assertEqual(total, SCHEMA["max_current_ma"][0] - 1000 + 1
                         + SCHEMA["pilot_confirm_n"][0])


if __name__ == "__main__":
    unittest.main()

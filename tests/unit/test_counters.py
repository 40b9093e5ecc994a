# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
import unittest

from firmware.compat import TICKS_MAX, ticks_add
from firmware.config import Config
from firmware.counters import FILE, RETRY_MAX_MS, RETRY_MIN_MS, Counters
from firmware.storage import StorageError, Store
from tools.powercut_fs import PowerCut, PowerCutFs

ROOT = "/data"


def _writes(fs):
    # one atomic replacement = one rename onto the counters file
    return sum(1 for op in fs.log if op.startswith("rename") and op.endswith("/" + FILE))


class Persistence(unittest.TestCase):
    def test_boot_is_written_at_once_and_counts_up(self):
        fs = PowerCutFs()
        for n in (1, 2, 3):
            c = Counters(Store(ROOT, fs))
            self.assertEqual(c.boot(0), n)
        self.assertEqual(_writes(fs), 3)

    def test_everything_survives_a_reset(self):
        fs = PowerCutFs()
        c = Counters(Store(ROOT, fs), save_interval_s=60, load_threshold_w=100)
        c.boot(0)
        c.contactor_opened(7000)
        c.contactor_opened(20)
        c.contactor_opened(None)
        c.fault("rcd_trip")
        c.fault("rcd_trip")
        c.fault("diode")
        c.session_ended("1-1", 1234, 1000)
        c.session_ended("1-2", None, 2000)
        self.assertFalse(c.tick(70000))     # the session end wrote everything
        c.fault("diode")
        self.assertFalse(c.tick(61999))
        self.assertTrue(c.tick(62000))
        again = Counters(Store(ROOT, fs.restart()))
        self.assertEqual(again.values(), {
            "boots": 1, "sessions": 2, "energy_wh": 1234, "contactor_cycles": 3,
            "contactor_cycles_under_load": 1, "faults": {"rcd_trip": 2, "diode": 2},
            "last_session": "1-2", "unbilled_wh": 0, "ledger_wh": None,
            "ledger_serial": None})

    def test_a_session_is_counted_once(self):
        c = Counters(Store(ROOT, PowerCutFs()))
        self.assertTrue(c.session_ended("4-1", 500))
        self.assertFalse(c.session_ended("4-1", 500))
        self.assertEqual((c.sessions, c.energy_wh), (1, 500))

    def test_damaged_file_restarts_from_zero_and_says_why(self):
        fs = PowerCutFs()
        c = Counters(Store(ROOT, fs))
        c.boot(0)
        c.session_ended("1-1", 500)
        fs.medium[ROOT + "/" + FILE] = b"garbage"
        c = Counters(Store(ROOT, fs))
        self.assertEqual((c.sessions, c.energy_wh), (0, 0))
        self.assertIn("damaged", c.error)
        # The boot number is never reused: session ids ("<boot>-<seq>") are what the
        # backend de-duplicates on, so a repeated "1-1" would be thrown away as a copy.
        self.assertEqual(c.boots, 1)
        self.assertEqual(c.boot(0), 2)

    def test_boot_numbers_only_go_up_across_damage_and_power_cuts(self):
        fs = PowerCutFs()
        for _ in range(3):
            Counters(Store(ROOT, fs)).boot(0)
        fs.medium[ROOT + "/" + FILE] = b"garbage"
        self.assertEqual(Counters(Store(ROOT, fs)).boot(0), 4)
        # A power cut at any step of boot(): the next boot gets a number never used.
        k = 1
        while True:
            probe = fs.restart()
            probe.cut_at = k
            try:
                got = Counters(Store(ROOT, probe)).boot(0)
                finished = True
            except PowerCut:
                finished = False
            after = Counters(Store(ROOT, probe.restart())).boot(0)
            self.assertTrue(after >= 6 if finished else after >= 5, (k, after))
            if finished:
                self.assertEqual(got, 5)
                break
            k += 1

    def test_stored_booleans_are_not_counts_on_either_runtime(self):
        # isinstance(True, int) holds on CPython, not on MicroPython: a true in the file must
        # read the same on both (not a count).
        fs = PowerCutFs()
        Store(ROOT, fs).write_atomic(FILE, b'{"boots": 5, "sessions": true, "energy_wh": 7,'
                                           b' "faults": {"A": true, "B": 2}}')
        c = Counters(Store(ROOT, fs))
        self.assertEqual((c.boots, c.sessions, c.energy_wh), (5, 0, 7))
        self.assertEqual(c.faults, {"B": 2})

    def test_fault_names_are_bounded(self):
        c = Counters(Store(ROOT, PowerCutFs()))
        for i in range(40):
            c.fault("f%d" % i)
        self.assertEqual(len(c.faults), 33)
        self.assertEqual(c.faults["other"], 8)

    def test_config_keys(self):
        cfg = Config({"counters_save_s": 120, "contactor_load_threshold_w": 500})
        c = Counters.from_config(cfg, Store(ROOT, PowerCutFs()))
        self.assertEqual((c.save_interval_ms, c.load_threshold_w), (120000, 500))


class WearLimits(unittest.TestCase):
    def test_at_most_one_write_a_minute_while_events_pour_in(self):
        fs = PowerCutFs()
        c = Counters(Store(ROOT, fs), save_interval_s=60)
        c.boot(0)
        start = _writes(fs)
        now = 0
        for step in range(6000):          # 10 minutes of 100 ms control ticks
            now = step * 100
            if step % 7 == 0:
                c.contactor_opened(3000)
            if step % 50 == 0:
                c.fault("overcurrent")
            c.tick(now)
        self.assertEqual(_writes(fs) - start, 9)   # at 60 s, 120 s, ... 540 s
        self.assertEqual(c.writes, 10)

    def test_nothing_changed_nothing_written(self):
        fs = PowerCutFs()
        c = Counters(Store(ROOT, fs))
        c.boot(0)
        before = len(fs.log)
        for t in range(0, 3600000, 1000):
            c.tick(t)
        self.assertEqual(len(fs.log), before)

    def test_interval_holds_across_the_ticks_wrap(self):
        fs = PowerCutFs()
        c = Counters(Store(ROOT, fs), save_interval_s=60)
        t0 = ticks_add(TICKS_MAX, -20000)
        c.boot(t0)
        c.fault("x")
        self.assertFalse(c.tick(ticks_add(t0, 59999)))
        self.assertTrue(c.tick(ticks_add(t0, 60000)))


class FailedWritesBackOff(unittest.TestCase):
    """A write that fails (flash full) is retried after 1, 2, 4 ... s up to 10 min, never at
    every tick: each failure also became a fault record, over a thousand writes in 12 s."""

    def failing_counters(self):
        from tools.powercut_fs import FailingFs
        fs = FailingFs(paths=("/" + FILE,))
        c = Counters(Store(ROOT, fs), save_interval_s=60)
        self.assertRaises(StorageError, c.boot, 0)
        return fs, c

    def attempts_until(self, fs, c, end_ms, step_ms=10, start_ms=0):
        """Tick every step_ms up to end_ms (as the loop does); the times of write attempts."""
        times = []
        t = start_ms
        while t <= end_ms:
            before = fs.refused + _writes(fs)
            try:
                c.tick(t)
            except StorageError:
                pass
            if fs.refused + _writes(fs) != before:
                times.append(t)
            t += step_ms
        return times

    def test_retries_double_from_one_second_to_ten_minutes(self):
        fs, c = self.failing_counters()
        self.assertEqual(c.failures, 1)
        times = self.attempts_until(fs, c, 3600000, step_ms=10)
        expected = []
        t, wait = 0, RETRY_MIN_MS
        while True:
            t += wait
            if t > 3600000:
                break
            expected.append(t)
            wait = min(wait * 2, RETRY_MAX_MS)
        self.assertEqual(times, expected)
        self.assertEqual(expected[:5], [1000, 3000, 7000, 15000, 31000])
        # 10 + 4 retries in the first hour instead of 360000.
        self.assertEqual(len(times), 14)

    def test_twelve_seconds_of_a_full_flash_make_four_attempts(self):
        fs, c = self.failing_counters()
        c.fault("STORAGE_ERROR")
        self.assertEqual(self.attempts_until(fs, c, 12000), [1000, 3000, 7000])

    def test_a_failure_without_a_time_waits_from_the_next_tick(self):
        from tools.powercut_fs import FailingFs
        fs = FailingFs(paths=("/" + FILE,))
        c = Counters(Store(ROOT, fs))
        self.assertRaises(StorageError, c.session_ended, "1-1", 100, None)
        self.assertEqual(self.attempts_until(fs, c, 2500, start_ms=500), [1500])

    def test_the_write_succeeds_once_the_flash_works_and_the_interval_applies_again(self):
        fs, c = self.failing_counters()
        self.attempts_until(fs, c, 8000)               # failures at 0, 1, 3, 7 s
        self.assertEqual(c.failures, 4)
        fs.failing = False
        self.assertEqual(self.attempts_until(fs, c, 60000, start_ms=8010), [15000])
        self.assertEqual(c.failures, 0)
        self.assertEqual(Counters(Store(ROOT, fs)).boots, 1)
        c.contactor_opened(10)                         # normal again: one write a minute
        self.assertEqual(self.attempts_until(fs, c, 80000, start_ms=60010), [75000])

# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
import unittest

from firmware.compat import TICKS_MAX, TICKS_PERIOD, ticks_add, ticks_diff, ticks_ms


class TicksWrapLikeTheESP32(unittest.TestCase):
    def test_period_is_2_to_30(self):
        self.assertEqual(TICKS_PERIOD, 1 << 30)
        self.assertEqual(ticks_add(TICKS_MAX, 1), 0)

    def test_diff_across_the_wrap(self):
        before = ticks_add(0, -5)
        self.assertEqual(before, TICKS_MAX - 4)
        self.assertEqual(ticks_diff(ticks_add(before, 10), before), 10)
        self.assertEqual(ticks_diff(before, ticks_add(before, 10)), -10)

    def test_half_period_is_the_signed_limit(self):
        self.assertEqual(ticks_diff(TICKS_PERIOD // 2 - 1, 0), TICKS_PERIOD // 2 - 1)
        self.assertEqual(ticks_diff(TICKS_PERIOD // 2, 0), -(TICKS_PERIOD // 2))

    def test_now_is_in_range(self):
        now = ticks_ms()
        self.assertTrue(0 <= now <= TICKS_MAX)

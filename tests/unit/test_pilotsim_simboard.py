"""SimBoard: the board contract in simulated time, contactor and fault behaviour, and that
its safety-tick methods allocate nothing (micropython.heap_lock on the unix port)."""
import sys
import unittest

from firmware import board as fw_board
from firmware import pilot
from firmware.compat import TICKS_MAX, ticks_diff
from tools.pilotsim.model import S2_C
from tools.pilotsim.simboard import SimBoard, SimReset

try:
    import micropython
except ImportError:
    micropython = None


def _plugged(s2=S2_C):
    b = SimBoard()
    b.model.plugged = True
    b.model.s2 = s2
    b.model.update()
    return b


class Clock(unittest.TestCase):
    def test_sleep_advances_simulated_time(self):
        b = SimBoard(start_ms=1000)
        self.assertEqual(b.ticks_ms(), 1000)
        b.sleep_ms(10)
        self.assertEqual(b.ticks_ms(), 1010)

    def test_ticks_wrap_at_2_30(self):
        b = SimBoard(start_ms=TICKS_MAX - 4)
        t0 = b.ticks_ms()
        b.sleep_ms(10)
        self.assertEqual(b.ticks_ms(), 5)
        self.assertEqual(ticks_diff(b.ticks_ms(), t0), 10)

    def test_pacer_sees_every_sleep(self):
        b = SimBoard()
        seen = []
        b.pacer = seen.append
        b.sleep_ms(10)
        b.sleep_ms(20)
        self.assertEqual(seen, [10, 20])


class Pilot(unittest.TestCase):
    def test_pwm_shows_both_plateaus(self):
        b = _plugged()
        b.set_pilot(267)
        b.sample_pilot()
        self.assertEqual(pilot.classify(b.cp_high_mv, b.cp_low_mv, True), pilot.PILOT_C)
        self.assertTrue(b.cp_low_mv < -11500)

    def test_steady_high_and_steady_low(self):
        b = _plugged()
        b.set_pilot(fw_board.PILOT_STEADY_HIGH)
        b.sample_pilot()
        self.assertTrue(5800 < b.cp_low_mv < 6200)
        b.set_pilot(fw_board.PILOT_STEADY_LOW)
        b.sample_pilot()
        self.assertTrue(b.cp_high_mv < -11500 and b.cp_low_mv < -11500)

    def test_pp_reads_the_cable(self):
        b = _plugged()
        self.assertEqual(pilot.pp_rating_ma(b.read_pp_ohms()), 32000)
        self.assertTrue(SimBoard().read_pp_ohms() >= fw_board.PP_OPEN_OHMS)


class Contactor(unittest.TestCase):
    def test_mirror_follows_after_the_armature_delay(self):
        b = SimBoard(contactor_delay_ms=30)
        b.set_contactor(True)
        self.assertFalse(b.contactor_mirror_closed())
        b.sleep_ms(30)
        self.assertTrue(b.contactor_mirror_closed())
        b.set_contactor(False)
        b.sleep_ms(30)
        self.assertFalse(b.contactor_mirror_closed())

    def test_welded_stays_closed(self):
        b = SimBoard(contactor_delay_ms=0)
        b.set_contactor(True)
        self.assertTrue(b.contactor_mirror_closed())
        b.contactor_welded = True
        b.set_contactor(False)
        b.sleep_ms(1000)
        self.assertTrue(b.contactor_mirror_closed())

    def test_stuck_open_never_closes(self):
        b = SimBoard(contactor_delay_ms=0)
        b.contactor_stuck_open = True
        b.set_contactor(True)
        b.sleep_ms(1000)
        self.assertFalse(b.contactor_mirror_closed())


class Supervision(unittest.TestCase):
    def test_rcd_selftest_and_trip(self):
        b = SimBoard()
        self.assertFalse(b.rcd_tripped())
        b.set_rcd_test(True)
        self.assertTrue(b.rcd_tripped())
        b.rcd_selftest_ok = False
        self.assertFalse(b.rcd_tripped())
        b.set_rcd_test(False)
        b.rcd_fault = True
        self.assertTrue(b.rcd_tripped())

    def test_temperature_ramp_in_simulated_time(self):
        b = SimBoard(temperature_dc=250)
        b.ramp_temperature(750, 10000)
        self.assertEqual(b.temperature_dc(), 250)
        b.sleep_ms(5000)
        self.assertEqual(b.temperature_dc(), 500)
        b.sleep_ms(6000)
        self.assertEqual(b.temperature_dc(), 750)

    def test_no_sensor(self):
        self.assertIsNone(SimBoard(temperature_dc=None).temperature_dc())

    def test_reset_raises(self):
        b = SimBoard()
        self.assertRaises(SimReset, b.reset)
        self.assertEqual(b.reset_cause(), "soft")

    def test_is_a_board(self):
        self.assertTrue(isinstance(SimBoard(), fw_board.Board))


class TickAllocatesNothing(unittest.TestCase):
    def test_tick_methods_under_heap_lock(self):
        if micropython is None or not hasattr(micropython, "heap_lock"):
            raise unittest.SkipTest("needs the MicroPython unix port")
        b = _plugged()
        b.ramp_temperature(700, 5000)
        b.set_pilot(267)
        results = [0, 0, 0]
        micropython.heap_lock()
        try:
            for i in range(200):
                b.set_pilot(267 if i & 1 else fw_board.PILOT_STEADY_HIGH)
                b.sample_pilot()
                results[0] = b.read_pp_ohms()
                b.set_contactor(i > 50)
                results[1] = b.contactor_mirror_closed()
                results[2] = b.rcd_tripped()
                b.set_rcd_test(False)
                b.temperature_dc()
                b.set_led(fw_board.LED_CHARGING)
                b.feed_watchdog()
                b.ticks_ms()
                b.now_ms += 10
        finally:
            micropython.heap_unlock()
        self.assertEqual(pilot.pp_rating_ma(results[0]), 32000)
        self.assertTrue(results[1])
        self.assertFalse(results[2])

    def test_heap_lock_catches_an_allocation(self):
        # The check above would be worthless if heap_lock did not stop allocation here.
        if micropython is None or not hasattr(micropython, "heap_lock"):
            raise unittest.SkipTest("needs the MicroPython unix port")
        caught = [False]
        micropython.heap_lock()
        try:
            try:
                [1, 2, 3]
            except MemoryError:
                caught[0] = True
        finally:
            micropython.heap_unlock()
        self.assertTrue(caught[0] or sys.implementation.name != "micropython")


class StationTickOnSimBoard(unittest.TestCase):
    """The real safety tick (Station.safety_tick) on this board, through a whole charge
    cycle, allocates nothing: the board is fit to stand in for the ESP32's."""

    def test_station_safety_tick_under_heap_lock(self):
        if micropython is None or not hasattr(micropython, "heap_lock"):
            raise unittest.SkipTest("needs the MicroPython unix port")
        import os
        from firmware.station import Station
        root = "build/pilotsim-unit-%d" % id(self)
        for d in ("build", root):
            try:
                os.mkdir(d)
            except OSError:
                pass
        b = SimBoard(storage=root)
        st = Station(b, {"max_current_ma": 16000})
        m = b.model
        seen = []
        # plug at 100 ms, request at 300 ms, unplug at 2000 ms (10 ms ticks)
        for i in range(300):
            if i == 10:
                m.plugged = True
                m.update()
            elif i == 30:
                m.s2 = S2_C
                m.update()
            elif i == 200:
                m.plugged = False
                m.update()
            micropython.heap_lock()
            try:
                st.safety_tick(b.ticks_ms())
            finally:
                micropython.heap_unlock()
            if b.contactor_cmd and "closed" not in seen:
                seen.append("closed")
            if seen and not b.contactor_cmd and "opened" not in seen:
                seen.append("opened")
            b.now_ms += 10
        self.assertEqual(seen, ["closed", "opened"])
        for name in os.listdir(root):
            os.remove(root + "/" + name)
        os.rmdir(root)

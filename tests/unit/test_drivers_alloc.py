# The safety-tick methods of Esp32Board allocate nothing: each runs under
# micropython.heap_lock() on the unix port with the fake machine (whose own hot paths are
# preallocated, so a MemoryError here names the driver). CPython has no heap lock: skipped.
import json
import unittest

import machine
from drivers.boardfile import validate
from drivers.esp32_board import Esp32Board
from firmware import board as B

try:
    import micropython
    _heap_lock = micropython.heap_lock
    _heap_unlock = micropython.heap_unlock
except (ImportError, AttributeError):
    _heap_lock = None

sim = machine.sim


def _root():
    parts = __file__.split("/")
    return "." if len(parts) <= 3 else "/".join(parts[:-3])


def _board():
    sim.reset()
    with open(_root() + "/boards/reference.json") as f:
        cfg = validate(json.load(f))
    b = Esp32Board(cfg, clock=sim.clock)

    def cp(t):
        return 2200 if sim.pwm_output_high(25, t) else 100
    sim.set_adc(36, cp)
    sim.set_adc(39, 600)
    sim.set_adc(34, 1650)
    b.start_watchdog()
    # Warm up once outside the lock (first calls may intern attributes).
    b.set_pilot(500)
    b.sample_pilot()
    b.set_led(B.LED_CHARGING)
    return b


class TickMethodsAllocateNothing(unittest.TestCase):
    def setUp(self):
        if _heap_lock is None:
            raise unittest.SkipTest("needs micropython.heap_lock (unix port)")
        self.b = _board()

    def locked(self, fn, arg=None):
        # No *args here: unpacking a call's arguments would allocate in the test itself.
        result = None
        _heap_lock()
        try:
            for _ in range(3):
                result = fn() if arg is None else fn(arg)
        finally:
            _heap_unlock()
        return result

    def test_sample_pilot_pwm_and_steady(self):
        b = self.b
        self.locked(b.sample_pilot)
        self.assertEqual((b.cp_high_mv, b.cp_low_mv), (9000, -12000))
        b.set_pilot(1000)
        self.locked(b.sample_pilot)
        self.assertEqual(b.cp_high_mv, 9000)

    def test_set_pilot(self):
        _heap_lock()
        try:
            for duty in (100, 267, 1000, 0, 960):
                self.b.set_pilot(duty)
        finally:
            _heap_unlock()
        self.assertEqual(sim.pwm(25).duty_u16(), 960 * 65535 // 1000)

    def test_read_pp_ohms(self):
        self.assertEqual(self.locked(self.b.read_pp_ohms), 1000 * 600 // 2700)

    def test_contactor(self):
        b = self.b
        self.locked(b.set_contactor, True)
        self.assertEqual(sim.level(26), 1)
        self.locked(b.set_contactor, False)
        self.assertEqual(sim.level(26), 0)
        self.assertIs(self.locked(b.contactor_mirror_closed), True)

    def test_rcd(self):
        sim.set_input(27, 0)
        self.assertIs(self.locked(self.b.rcd_tripped), True)
        self.locked(self.b.set_rcd_test, True)
        self.assertEqual(sim.level(14), 1)

    def test_temperature(self):
        self.assertEqual(self.locked(self.b.temperature_dc), 250)

    def test_lock_with_a_repeated_command(self):
        b = self.b
        b.set_lock(False)            # a new command arms the pulse timer (may allocate)
        sim.advance_ms(1000)         # pulse over, feedback (pulled up) says unlocked
        self.locked(b.set_lock, False)
        self.assertIs(self.locked(b.lock_confirmed), False)
        self.assertEqual(sim.level(33), 0)

    def test_led_watchdog_ticks(self):
        self.locked(self.b.set_led, B.LED_FAULT)
        self.locked(self.b.set_led, B.LED_CHARGING)
        self.locked(self.b.feed_watchdog)
        self.locked(self.b.ticks_ms)

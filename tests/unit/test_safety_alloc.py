# The safety tick allocates nothing: every state and fault path runs under
# micropython.heap_lock() on the unix port, where any allocation raises MemoryError.
# On CPython there is no heap lock: the tests skip (the unix-port run is what counts).
import unittest

from tools.charger_rig import Rig
from firmware import faults as F
from firmware.charger import Charger
from firmware.compat import TICKS_MAX
from firmware.states import (
    STATE_A, STATE_B1, STATE_B2, STATE_C1, STATE_C2, STATE_D2, STATE_E, STATE_F,
    STATE_UNAVAILABLE)

try:
    import micropython
    HEAP_LOCK = hasattr(micropython, "heap_lock")
except ImportError:
    HEAP_LOCK = False


class AllocatingCharger(Charger):
    # Stands in for a tick that allocates, to prove the harness catches it.
    def tick(self, now_ms):
        Charger.tick(self, now_ms)
        self.scratch = [now_ms]


class Locked(unittest.TestCase):
    def setUp(self):
        if not HEAP_LOCK:
            raise unittest.SkipTest("needs micropython.heap_lock (unix port)")
        self.seen = set()

    def rig(self, **cfg):
        return Rig(heap_locked=True, **cfg)

    def see(self, r, ms=0):
        if ms:
            r.run_ms(ms)
        self.seen.add(r.ch.state)

    def test_harness_catches_an_allocating_tick(self):
        r = self.rig()
        r.ch = AllocatingCharger(r.cfg)
        self.assertRaises(MemoryError, r.step, 1)

    def test_a_whole_session_with_every_limit(self):
        r = self.rig(rcd_selftest=True, lock_enabled=True, start_ms=TICKS_MAX - 20000)
        r.temp_dc = 250
        self.see(r, 100)
        r.ev = "B"
        self.see(r, 100)
        r.ch.authorize(True)
        self.see(r, 100)
        r.ev = "C"
        self.see(r, 1500)
        self.assertTrue(r.ch.contactor)
        r.ch.set_backend_limit(10000)
        self.see(r, 3500)
        r.ch.clear_backend_limit()
        r.ch.set_comms_fallback(8000)
        self.see(r, 6000)
        r.ch.clear_comms_fallback()
        r.temp_dc = 660
        self.see(r, 6000)
        r.temp_dc = 690
        self.see(r, 6000)
        r.temp_dc = 250
        self.see(r, 6000)
        r.ch.pause()
        self.see(r, 7000)                      # PWM off, EV stays in C: cut at 6 s
        self.assertFalse(r.ch.contactor)
        r.ch.resume()
        self.see(r, 6000)
        self.assertTrue(r.ch.contactor)
        self.assertTrue(r.now < 100000)        # the clock wrapped during the session
        r.ev = "B"
        self.see(r, 100)
        r.ev = "C"
        self.see(r, 2000)
        r.ev = "A"
        self.see(r, 100)
        self.assertFalse(r.ch.contactor)
        for s in (STATE_A, STATE_B1, STATE_B2, STATE_C1, STATE_C2):
            self.assertIn(s, self.seen)

    def test_wake_up_both_modes_and_unavailable(self):
        for mode in ("x1", "F"):
            r = self.rig(wake_up_pilot=mode)
            r.ev = "B"
            r.ch.authorize(True)
            self.see(r, 40000)
            r.ch.set_available(False)
            self.see(r, 1000)
            self.assertEqual(r.ch.state, STATE_B1)     # x1 until the EV leaves
            r.ev = "A"
            self.see(r, 1000)
            self.assertEqual(r.ch.state, STATE_UNAVAILABLE)
            r.ch.set_available(True)
            r.ch.authorize(True)
            r.ev = "C"
            self.see(r, 2000)
            r.ch.set_available(False)
            r.ev = "B"
            self.see(r, 1000)
        r = self.rig(ventilation_supported=True)
        r.ev = "D"
        r.ch.authorize(True)
        self.see(r, 2000)
        self.assertEqual(r.ch.state, STATE_D2)

    def test_pilot_faults(self):
        for ev, code in (("E", F.CP_SHORT), ("X", F.PILOT_FAULT), ("D", F.VENTILATION_UNSUPPORTED)):
            r = self.rig()
            r.charging()
            r.ev = ev
            self.see(r, 1000)
            self.assertTrue(r.ch.faults.is_active(code), ev)
            r.ev = "A"
            self.see(r, 8000)
            self.assertEqual(r.ch.faults.active, 0, ev)
        r = self.rig()
        r.charging()
        r.diode = False
        self.see(r, 1000)
        self.assertTrue(r.ch.faults.is_active(F.DIODE_FAULT))
        self.assertIn(STATE_E, self.seen)
        self.assertIn(STATE_F, self.seen)

    def test_residual_current_and_self_test(self):
        r = self.rig(rcd_selftest=True)
        r.charging()
        r.leak = True
        self.see(r, 500)
        r.leak = False
        r.ev = "A"
        self.see(r, 500)
        r.monitor_ok = False
        r.ev = "B"
        self.see(r, 2000)
        self.assertTrue(r.ch.faults.is_active(F.RCD_SELFTEST_FAILED))
        r.monitor_ok = True
        r.ch.clear_fault(F.RCD_SELFTEST_FAILED, True)
        r.monitor_stuck = True
        self.see(r, 2000)
        r.monitor_stuck = False
        r.ch.request_selftest()
        self.see(r, 2000)

    def test_contactor_faults(self):
        r = self.rig()
        r.charging()
        r.welded = True
        r.ev = "B"
        self.see(r, 2000)
        self.assertTrue(r.ch.faults.is_active(F.CONTACTOR_WELDED))
        r = self.rig()
        r.stuck_open = True
        r.ch.authorize(True)
        r.ev = "C"
        self.see(r, 3000)
        self.assertTrue(r.ch.faults.is_active(F.CONTACTOR_NOT_CLOSING))

    def test_overcurrent_temperature_pp_and_lock(self):
        r = self.rig(max_current_ma=16000)
        r.charging()
        r.draw_ma = 30000
        self.see(r, 6000)
        self.assertTrue(r.ch.faults.is_active(F.OVERCURRENT))
        r = self.rig()
        r.temp_dc = 250
        r.charging()
        r.temp_dc = 720
        self.see(r, 1000)
        self.assertTrue(r.ch.faults.is_active(F.OVERTEMP))
        r.temp_dc = 5000
        self.see(r, 1000)
        self.assertTrue(r.ch.faults.is_active(F.TEMP_SENSOR_FAILED))
        r = self.rig()
        r.pp_ohms = 10
        r.ev = "B"
        self.see(r, 1000)
        self.assertTrue(r.ch.faults.is_active(F.PP_INVALID))
        r = self.rig(lock_enabled=True)
        r.lock_works = False
        r.ch.authorize(True)
        r.ev = "C"
        self.see(r, 3000)
        self.assertTrue(r.ch.faults.is_active(F.LOCK_FAILED))

    def test_event_ring_overflow_does_not_allocate(self):
        r = self.rig()
        r.ch.authorize(True)
        for _ in range(40):                    # far more events than the ring holds
            r.ev = "B"
            self.see(r, 100)
            r.ev = "A"
            self.see(r, 100)
            r.ch.authorize(True)
        self.assertTrue(r.ch.events.dropped > 0)

# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
import unittest

from firmware import faults
from firmware.compat import TICKS_MAX, ticks_add
from firmware.events import EV_FAULT_CLEARED, EV_FAULT_RAISED, EventRing
from firmware.faults import (
    AUTO, BACKEND_OFFLINE, CONTACTOR_WELDED, CP_SHORT, DIODE_FAULT, INTERNAL_ERROR,
    MANUAL, OVERCURRENT, PILOT_FAULT, RCD_TRIPPED, UNPLUG, FaultError, FaultSet, all_faults,
    by_code, by_name)

OCPP_1_6_ERROR_CODES = (
    "ConnectorLockFailure", "EVCommunicationError", "GroundFailure", "HighTemperature",
    "InternalError", "LocalListConflict", "NoError", "OtherError", "OverCurrentFailure",
    "OverVoltage", "PowerMeterFailure", "PowerSwitchFailure", "ReaderFailure", "ResetFailure",
    "UnderVoltage", "WeakSignal")

REQUIRED = ("CP_SHORT", "PILOT_FAULT", "DIODE_FAULT", "RCD_TRIPPED", "RCD_SELFTEST_FAILED",
            "CONTACTOR_WELDED", "CONTACTOR_NOT_CLOSING", "OVERCURRENT", "OVERTEMP",
            "TEMP_SENSOR_FAILED", "PP_INVALID", "VENTILATION_UNSUPPORTED", "LOCK_FAILED",
            "METER_STALE", "METER_IMPLAUSIBLE", "BACKEND_OFFLINE", "STORAGE_ERROR",
            "OUTBOX_OVERFLOW", "INTERNAL_ERROR")


class TheTable(unittest.TestCase):
    def test_every_required_fault_has_a_constant_and_a_row(self):
        for name in REQUIRED:
            code = getattr(faults, name)
            self.assertEqual(by_name(name).code, code)
            self.assertEqual(by_code(code).name, name)

    def test_codes_are_unique_and_fit_a_small_int_mask(self):
        codes = [f.code for f in all_faults()]
        self.assertEqual(len(codes), len(set(codes)))
        for c in codes:
            self.assertTrue(0 < c < 30, c)

    def test_rows_are_complete(self):
        for f in all_faults():
            self.assertIn(f.ocpp, OCPP_1_6_ERROR_CODES)
            self.assertNotEqual(f.ocpp, "NoError")
            self.assertIn(f.clearing, (AUTO, UNPLUG, MANUAL))
            self.assertTrue(len(f.text) > 40, f.name)
            self.assertTrue(f.blocking is True or f.blocking is False)
            self.assertTrue(f.remote_clear is True or f.remote_clear is False)
            self.assertTrue(f.auto_clear_ms >= 0)

    def test_masks_follow_the_rows(self):
        blocking = latched = 0
        for f in all_faults():
            self.assertEqual(by_code(f.code).name, f.name)
            self.assertEqual(by_name(f.name).code, f.code)
            if f.blocking:
                blocking |= 1 << f.code
            if f.clearing != AUTO:
                latched |= 1 << f.code
        self.assertEqual(faults.BLOCKING_MASK, blocking)
        self.assertEqual(faults.LATCHED_MASK, latched)
        self.assertEqual(faults.names(latched)[:2], ["DIODE_FAULT", "RCD_TRIPPED"])
        self.assertEqual(len(all_faults()), len(REQUIRED))

    def test_safety_faults_follow_the_standard(self):
        # Residual current and diode faults latch until unplug; a welded contactor needs a
        # technician on site; all three stop charging.
        self.assertEqual(by_code(RCD_TRIPPED).clearing, UNPLUG)
        self.assertEqual(by_code(RCD_TRIPPED).ocpp, "GroundFailure")
        self.assertEqual(by_code(DIODE_FAULT).clearing, UNPLUG)
        self.assertEqual(by_code(CONTACTOR_WELDED).clearing, MANUAL)
        self.assertFalse(by_code(CONTACTOR_WELDED).remote_clear)
        for code in (RCD_TRIPPED, DIODE_FAULT, CONTACTOR_WELDED, CP_SHORT, OVERCURRENT):
            self.assertTrue(by_code(code).blocking)
        self.assertFalse(by_code(BACKEND_OFFLINE).blocking)

    def test_unknown_lookups_are_errors(self):
        self.assertRaises(FaultError, by_name, "NO_SUCH")
        self.assertRaises(FaultError, by_code, 0)
        self.assertRaises(FaultError, by_code, 20)
        self.assertRaises(FaultError, by_code, 29)
        self.assertRaises(FaultError, by_code, "1")
        self.assertRaises(FaultError, by_code, 99)
        self.assertTrue(issubclass(FaultError, ValueError))


class RaiseAndClear(unittest.TestCase):
    def setUp(self):
        self.ev = EventRing(16)
        self.fs = FaultSet(self.ev)

    def test_raise_sets_the_bit_counts_and_pushes_one_event(self):
        self.assertTrue(self.fs.raise_(RCD_TRIPPED, 100))
        self.assertFalse(self.fs.raise_(RCD_TRIPPED, 110))   # already active
        self.assertEqual(self.fs.active, 1 << RCD_TRIPPED)
        self.assertTrue(self.fs.is_active(RCD_TRIPPED))
        self.assertEqual(self.fs.counts[RCD_TRIPPED], 1)
        self.assertEqual(self.ev.pop(), (100, EV_FAULT_RAISED, RCD_TRIPPED, 0))
        self.assertIsNone(self.ev.pop())

    def test_blocking_only_counts_faults_that_stop_charging(self):
        self.fs.raise_(BACKEND_OFFLINE, 0)
        self.assertEqual(self.fs.blocking(), 0)
        self.fs.raise_(CP_SHORT, 0)
        self.assertEqual(self.fs.blocking(), 1 << CP_SHORT)

    def test_auto_fault_with_no_delay_clears_with_its_cause(self):
        self.fs.raise_(BACKEND_OFFLINE, 0)
        self.fs.clear(BACKEND_OFFLINE, 50)
        self.assertFalse(self.fs.is_active(BACKEND_OFFLINE))
        self.ev.pop()
        self.assertEqual(self.ev.pop(), (50, EV_FAULT_CLEARED, BACKEND_OFFLINE, 0))

    def test_auto_fault_clears_after_its_delay(self):
        delay = by_code(PILOT_FAULT).auto_clear_ms
        self.assertTrue(delay > 0)
        self.fs.raise_(PILOT_FAULT, 0)
        self.fs.clear(PILOT_FAULT, 1000)
        self.fs.update(1000 + delay - 1)
        self.assertTrue(self.fs.is_active(PILOT_FAULT))
        self.fs.update(1000 + delay)
        self.assertFalse(self.fs.is_active(PILOT_FAULT))

    def test_cause_returning_restarts_the_auto_clear_delay(self):
        delay = by_code(PILOT_FAULT).auto_clear_ms
        self.fs.raise_(PILOT_FAULT, 0)
        self.fs.clear(PILOT_FAULT, 10)
        self.fs.raise_(PILOT_FAULT, 20)
        self.fs.update(10 + delay + 100)
        self.assertTrue(self.fs.is_active(PILOT_FAULT))
        self.fs.clear(PILOT_FAULT, 30 + delay)
        self.fs.update(30 + 2 * delay)
        self.assertFalse(self.fs.is_active(PILOT_FAULT))

    def test_auto_clear_delay_across_the_tick_wrap(self):
        delay = by_code(PILOT_FAULT).auto_clear_ms
        start = TICKS_MAX - 100
        self.fs.raise_(PILOT_FAULT, start)
        self.fs.clear(PILOT_FAULT, start)
        self.fs.update(ticks_add(start, delay - 1))
        self.assertTrue(self.fs.is_active(PILOT_FAULT))
        self.fs.update(ticks_add(start, delay))
        self.assertFalse(self.fs.is_active(PILOT_FAULT))

    def test_unplug_latched_fault_stays_after_its_cause_until_unplug(self):
        self.fs.raise_(RCD_TRIPPED, 0)
        self.fs.clear(RCD_TRIPPED, 10)
        self.fs.update(100000)
        self.assertTrue(self.fs.is_active(RCD_TRIPPED))
        self.fs.unplugged(100010)
        self.assertFalse(self.fs.is_active(RCD_TRIPPED))

    def test_unplug_does_not_clear_a_fault_whose_cause_is_present(self):
        self.fs.raise_(RCD_TRIPPED, 0)
        self.fs.unplugged(10)
        self.assertTrue(self.fs.is_active(RCD_TRIPPED))

    def test_unplug_does_not_clear_manual_faults(self):
        self.fs.raise_(CONTACTOR_WELDED, 0)
        self.fs.clear(CONTACTOR_WELDED, 10)
        self.fs.unplugged(20)
        self.assertTrue(self.fs.is_active(CONTACTOR_WELDED))


class ClearRequests(unittest.TestCase):
    def setUp(self):
        self.ev = EventRing(16)
        self.fs = FaultSet(self.ev)

    def test_refused_while_the_cause_is_present(self):
        self.fs.raise_(OVERCURRENT, 0)
        reason = self.fs.clear_request(OVERCURRENT, False, 10)
        self.assertIn("cause", reason)
        self.assertTrue(self.fs.is_active(OVERCURRENT))

    def test_welded_contactor_is_never_cleared_remotely(self):
        self.fs.raise_(CONTACTOR_WELDED, 0)
        self.fs.clear(CONTACTOR_WELDED, 10)
        reason = self.fs.clear_request(CONTACTOR_WELDED, True, 20)
        self.assertIn("on site", reason)
        self.assertTrue(self.fs.is_active(CONTACTOR_WELDED))
        self.assertIsNone(self.fs.clear_request(CONTACTOR_WELDED, False, 30))
        self.assertFalse(self.fs.is_active(CONTACTOR_WELDED))
        self.assertEqual(self.ev.recent(1)[0], (30, EV_FAULT_CLEARED, CONTACTOR_WELDED, 1))

    def test_remote_clear_where_the_table_allows(self):
        self.fs.raise_(INTERNAL_ERROR, 0, False)
        self.assertIsNone(self.fs.clear_request(INTERNAL_ERROR, True, 5))
        self.assertFalse(self.fs.is_active(INTERNAL_ERROR))

    def test_inactive_and_unknown(self):
        self.assertIn("not active", self.fs.clear_request(OVERCURRENT, False, 0))
        self.assertIn("unknown", self.fs.clear_request(99, False, 0))


class HistoryAndNames(unittest.TestCase):
    def test_history_ring_keeps_the_newest(self):
        fs = FaultSet(None, history=4)
        for t in range(6):
            fs.raise_(BACKEND_OFFLINE, t * 10)
            fs.clear(BACKEND_OFFLINE, t * 10 + 5)
        h = fs.history()
        self.assertEqual(len(h), 4)
        self.assertEqual(h[-1], (55, BACKEND_OFFLINE, False))
        self.assertEqual(h[-2], (50, BACKEND_OFFLINE, True))
        self.assertEqual(fs.history(1), [(55, BACKEND_OFFLINE, False)])
        self.assertEqual(fs.counts[BACKEND_OFFLINE], 6)

    def test_active_names(self):
        fs = FaultSet()
        fs.raise_(CP_SHORT, 0)
        fs.raise_(RCD_TRIPPED, 0)
        self.assertEqual(sorted(fs.active_names()), ["CP_SHORT", "RCD_TRIPPED"])

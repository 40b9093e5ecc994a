"""Meter service: polling cadence, integer readings, stale handling, plausibility.

A simulated RTU meter (tests/unit/meter_doubles.py) answers in simulated time; the control
loop is played at 10 ms per iteration. Runs on CPython and the MicroPython unix port.
"""
import unittest

from firmware import meters
from firmware.config import Config
from firmware.meter_service import (MeterService, STALE_CHANGED, IMPLAUSIBLE_CHANGED,
                                    NEW_READING, IMPORT_BACKWARDS, IMPORT_JUMP,
                                    EXPORT_BACKWARDS, POWER_RANGE, NOT_A_NUMBER, POWER_VI,
                                    FAILED)
from meter_doubles import SimClock, SlaveStream

LOOP_MS = 10
# dV, mA, W, Wh
READING = [2301, 2315, 2288, 15999, 16012, 15987, 11034, 12345678, 4321]


class Meter:
    """A simulated meter of a given map on a SlaveStream."""

    def __init__(self, clock, name="sdm630", slave=1, values=READING):
        self.map = meters.load_map(name)
        self.stream = SlaveStream(clock, slave=slave, fcs=(self.map.fc,))
        self.values = list(values)
        self.publish()

    def publish(self, **changes):
        for k, v in changes.items():
            self.values[meters.QUANTITY_NAMES.index(k)] = v
        regs = self.map.encode(self.values)
        # Eastron-style maps let a request run through unused registers.
        if self.map.max_gap:
            lo = min(regs)
            hi = max(regs)
            for a in range(lo, hi + 1):
                regs.setdefault(a, 0)
        self.stream.regs.clear()
        self.stream.regs.update(regs)


class Base(unittest.TestCase):
    MAP = "sdm630"
    CFG = {"meter_poll_ms": 1000, "meter_timeout_ms": 100, "meter_retries": 0,
           "meter_stale_after": 3, "meter_max_power_w": 22000}

    def setUp(self):
        self.clock = SimClock(100000)
        self.meter = Meter(self.clock, self.MAP)
        cfg = dict(self.CFG)
        cfg["meter_map"] = self.MAP
        self.cfg = Config(cfg)
        self.events = []
        self.svc = MeterService(self.cfg, self.meter.stream,
                                on_change=lambda k, a, r: self.events.append((k, a, r)))

    def loop(self, ms):
        """Run the control loop for `ms`; return the OR of every poll's changes."""
        changes = 0
        end = self.clock.now + ms
        while self.clock.now < end:
            changes |= self.svc.poll(self.clock.now)
            self.clock.advance(LOOP_MS)
        return changes


class TestReadings(Base):
    def test_first_reading_within_one_cycle(self):
        self.assertIsNone(self.svc.import_wh)
        self.assertIsNone(self.svc.last_ok_ms)
        changes = self.loop(100)
        self.assertTrue(changes & NEW_READING)
        self.assertEqual(self.svc.voltage_dv, [2301, 2315, 2288])
        self.assertEqual(self.svc.current_ma, [15999, 16012, 15987])
        self.assertEqual(self.svc.power_w, 11034)
        self.assertEqual(self.svc.import_wh, 12345678)
        self.assertEqual(self.svc.export_wh, 4321)
        self.assertIsNotNone(self.svc.last_ok_ms)
        self.assertFalse(self.svc.stale)
        self.assertFalse(self.svc.implausible)

    def test_polls_at_the_configured_interval(self):
        self.loop(10000)
        # One cycle a second, each the SDM630 plan's requests.
        self.assertEqual(len(self.meter.stream.requests), 10 * len(self.svc.map.plan))
        self.assertEqual(self.svc.stats()["cycles"], 10)
        self.assertEqual(self.svc.readings, 10)

    def test_reading_lists_are_updated_in_place(self):
        currents = self.svc.current_ma
        self.loop(100)
        self.meter.publish(current_l2_ma=20000)
        self.loop(1000)
        self.assertIs(currents, self.svc.current_ma)
        self.assertEqual(currents[1], 20000)

    def test_energy_follows_the_meter(self):
        self.loop(100)
        self.meter.publish(import_wh=12345678 + 3)
        self.loop(1000)
        self.assertEqual(self.svc.import_wh, 12345681)

    def test_stats(self):
        self.loop(3000)
        s = self.svc.stats()
        for key in ("requests", "replies", "timeouts", "crc_errors", "exceptions",
                    "bad_frames", "retries", "cycles", "stale", "implausible_count",
                    "bytes_per_poll", "requests_per_poll"):
            self.assertIn(key, s)
        n = len(self.svc.map.plan)              # requests per cycle
        self.assertEqual((s["requests"], s["replies"]), (3 * n, 3 * n))
        self.assertEqual(s["bytes_per_poll"], 75)

    def test_reading_dict(self):
        self.loop(100)
        r = self.svc.reading()
        self.assertEqual(r["voltage_dv"], [2301, 2315, 2288])
        self.assertEqual(r["import_wh"], 12345678)


class TestSinglePhase(Base):
    MAP = "sdm120"

    def test_l2_l3_stay_zero(self):
        self.loop(100)
        self.assertEqual(self.svc.voltage_dv, [2301, 0, 0])
        self.assertEqual(self.svc.current_ma, [15999, 0, 0])
        self.assertEqual(self.svc.phases, 1)


class TestNoExport(Base):
    MAP = "eem350"

    def test_export_is_none(self):
        self.loop(200)
        self.assertEqual(self.svc.import_wh, 12345700)   # 0.1 kWh register
        self.assertIsNone(self.svc.export_wh)
        self.assertEqual(len(self.meter.stream.requests), 3)   # three requests per cycle


class TestStale(Base):
    def test_stale_after_n_failed_cycles_and_cleared_on_recovery(self):
        self.loop(100)
        self.meter.stream.set_fault("silent")
        self.assertEqual(self.loop(2300) & STALE_CHANGED, 0)   # two failed cycles
        self.assertFalse(self.svc.stale)
        changes = self.loop(1000)                              # third
        self.assertTrue(changes & STALE_CHANGED)
        self.assertTrue(self.svc.stale)
        self.assertEqual(self.svc.last_error, "timeout")
        self.assertEqual(self.events, [("stale", True, "timeout")])
        # The last values stay readable while stale.
        self.assertEqual(self.svc.import_wh, 12345678)
        self.meter.stream.set_fault(None)
        changes = self.loop(1000)
        self.assertTrue(changes & STALE_CHANGED)
        self.assertFalse(self.svc.stale)
        self.assertEqual(self.events[-1], ("stale", False, ""))
        self.assertEqual(self.svc.stats()["timeouts"], 3)

    def test_one_good_cycle_resets_the_count(self):
        self.meter.stream.set_fault("silent", 2)
        self.loop(3000)
        self.assertEqual(self.svc.consecutive_failures, 0)
        self.meter.stream.set_fault("silent", 2)
        self.loop(2000)
        self.assertFalse(self.svc.stale)

    def test_exception_replies_count_as_failures(self):
        self.meter.stream.set_fault("exception", None, 4)
        self.loop(3000)
        self.assertTrue(self.svc.stale)
        self.assertEqual(self.svc.last_error, "exception 4")
        self.assertEqual(self.svc.stats()["exceptions"], 3)

    def test_a_hung_meter_never_holds_up_the_loop(self):
        # Every poll returns at once; the loop runs 10 ms iterations regardless.
        self.meter.stream.set_fault("silent")
        iterations = 0
        end = self.clock.now + 5000
        while self.clock.now < end:
            self.svc.poll(self.clock.now)
            iterations += 1
            self.clock.advance(LOOP_MS)
        self.assertEqual(iterations, 500)
        self.assertTrue(self.svc.stale)


class TestPlausibility(Base):
    def test_energy_going_backwards_is_flagged_not_used(self):
        self.loop(100)
        self.meter.publish(import_wh=12345000)
        changes = self.loop(1000)
        self.assertTrue(changes & IMPLAUSIBLE_CHANGED)
        self.assertTrue(self.svc.implausible)
        self.assertEqual(self.svc.implausible_reason, IMPORT_BACKWARDS)
        self.assertEqual(self.svc.import_wh, 12345678)     # billing keeps the good value
        self.assertEqual(self.events, [("implausible", True, IMPORT_BACKWARDS)])
        # Flag stays (no new change bit) while it persists; count goes up per reading.
        # (Backwards again, and against the reading before: not a new baseline either.)
        self.meter.publish(import_wh=12344000)
        self.assertEqual(self.loop(1000) & IMPLAUSIBLE_CHANGED, 0)
        self.assertEqual(self.svc.implausible_count, 2)

    def test_recovery_clears_the_flag(self):
        self.loop(100)
        self.meter.publish(import_wh=1)
        self.loop(1000)
        self.meter.publish(import_wh=12345684)      # 6 Wh in 2 s: under 22 kW
        changes = self.loop(1000)
        self.assertTrue(changes & IMPLAUSIBLE_CHANGED)
        self.assertFalse(self.svc.implausible)
        self.assertEqual(self.svc.implausible_reason, "")
        self.assertEqual(self.svc.import_wh, 12345684)

    def test_an_exchanged_meter_starts_a_segment_at_the_first_of_two_agreeing_readings(self):
        self.loop(100)
        self.assertIsNone(self.svc.base_wh)             # the first reading starts nothing
        self.meter.publish(import_wh=100, export_wh=0)   # a new meter, nearly empty
        self.loop(1000)
        self.assertTrue(self.svc.implausible)
        self.assertEqual(self.svc.import_wh, 12345678)  # billing still keeps the old value
        self.meter.publish(import_wh=102, export_wh=0)
        self.loop(1000)
        # The second agreeing reading is taken, and the segment starts at the first one:
        # the 2 Wh between them are counted, only the interval before 100 is lost.
        self.assertFalse(self.svc.implausible)
        self.assertEqual(self.svc.import_wh, 102)
        self.assertEqual(self.svc.base_wh, 100)
        self.assertEqual(self.svc.rebased, 1)
        self.assertEqual(self.svc.stats()["rebased"], 1)
        self.meter.publish(import_wh=105, export_wh=0)
        self.loop(1000)
        self.assertEqual(self.svc.import_wh, 105)
        self.assertIsNone(self.svc.base_wh)             # reported once
        self.assertEqual(self.svc.rebased, 1)

    def test_readings_that_disagree_with_each_other_are_never_a_new_baseline(self):
        self.loop(100)
        for wh in (100, 5000000, 7, 9000000, 3):
            self.meter.publish(import_wh=wh)
            self.loop(1000)
            self.assertTrue(self.svc.implausible, wh)
        self.assertEqual(self.svc.rebased, 0)
        self.assertEqual(self.svc.import_wh, 12345678)

    def test_export_backwards(self):
        self.loop(100)
        self.meter.publish(export_wh=4000)
        self.loop(1000)
        self.assertEqual(self.svc.implausible_reason, EXPORT_BACKWARDS)

    def test_power_beyond_the_limit(self):
        self.loop(100)
        self.meter.publish(power_w=-30000)
        self.loop(1000)
        self.assertEqual(self.svc.implausible_reason, POWER_RANGE)
        self.assertEqual(self.svc.power_w, 11034)

    def test_energy_jump_faster_than_max_power(self):
        self.loop(100)
        # 22 kW for one second is 6.1 Wh; 100 Wh in a second cannot be.
        self.meter.publish(import_wh=12345678 + 100)
        self.loop(1000)
        self.assertEqual(self.svc.implausible_reason, IMPORT_JUMP)

    def test_energy_at_max_power_is_plausible(self):
        self.loop(100)
        # 22 kW for 60 s = 366 Wh: plausible after a minute (one reading per second).
        for k in range(1, 61):
            self.meter.publish(import_wh=12345678 + 22000 * k // 3600)
            self.loop(1000)
            self.assertFalse(self.svc.implausible, k)

    def test_a_long_outage_allows_a_proportional_jump(self):
        self.loop(100)
        self.meter.stream.set_fault("silent")
        self.loop(600000)
        self.assertTrue(self.svc.stale)
        self.meter.stream.set_fault(None)
        self.meter.publish(import_wh=12345678 + 3000)   # 10 minutes at 18 kW
        self.loop(1000)
        self.assertFalse(self.svc.implausible)
        self.assertFalse(self.svc.stale)
        self.assertEqual(self.svc.import_wh, 12348678)

    def test_currents_of_an_implausible_reading_still_feed_the_overcurrent_check(self):
        self.loop(100)
        self.meter.publish(import_wh=1, current_l1_ma=40000)
        self.loop(1000)
        self.assertTrue(self.svc.implausible)
        self.assertEqual(self.svc.current_ma[0], 40000)

    def test_not_a_number(self):
        self.loop(100)
        self.meter.stream.regs[0x34] = 0x7FC0      # power register := NaN
        self.meter.stream.regs[0x35] = 0x0000
        self.loop(1000)
        self.assertEqual(self.svc.implausible_reason, NOT_A_NUMBER)

    def test_rebase_after_meter_exchange(self):
        self.loop(100)
        self.meter.publish(import_wh=500, export_wh=0)
        self.loop(1000)
        self.assertTrue(self.svc.implausible)
        self.svc.rebase()
        self.loop(1000)
        self.assertFalse(self.svc.implausible)
        self.assertEqual(self.svc.import_wh, 500)
        self.assertEqual(self.svc.base_wh, 500)

    def test_power_beyond_what_voltage_and_current_allow(self):
        # 40 kW at 32 A on three phases of 230 V (22 kW at most) cannot be.
        self.cfg.set("meter_max_power_w", 50000)
        self.svc.configure(self.cfg)
        self.loop(100)
        self.meter.publish(current_l1_ma=32000, current_l2_ma=32000, current_l3_ma=32000,
                           voltage_l1_dv=2300, voltage_l2_dv=2300, voltage_l3_dv=2300,
                           power_w=40000, import_wh=12345680)
        self.loop(1000)
        # Once, it may be registers updated between our requests: the power is held back
        # (the last plausible stays), the energy is taken.
        self.assertFalse(self.svc.implausible)
        self.assertEqual(self.svc.power_w, 11034)
        self.assertEqual(self.svc.import_wh, 12345680)
        self.loop(1000)                                 # twice: the meter means it
        self.assertTrue(self.svc.implausible)
        self.assertEqual(self.svc.implausible_reason, POWER_VI)
        self.assertEqual(self.svc.power_w, 11034)
        self.meter.publish(power_w=22000)               # 22.08 kVA apparent: plausible
        self.loop(1000)
        self.assertFalse(self.svc.implausible)
        self.assertEqual(self.svc.power_w, 22000)
        self.meter.publish(power_w=-25000)              # export the same way
        self.loop(2000)
        self.assertEqual(self.svc.implausible_reason, POWER_VI)

    def test_a_step_between_the_requests_of_one_cycle_is_not_implausible(self):
        self.loop(100)
        # A contactor closes: the power register is new, the currents still the old 0.
        self.meter.publish(current_l1_ma=0, current_l2_ma=0, current_l3_ma=0, power_w=11034)
        self.loop(1000)
        self.assertFalse(self.svc.implausible)
        self.meter.publish(current_l1_ma=15999, current_l2_ma=16012, current_l3_ma=15987)
        self.loop(1000)
        self.assertFalse(self.svc.implausible)
        self.assertEqual(self.svc.power_w, 11034)
        # It opens: the currents are new (0), the power still the old one.
        self.meter.publish(current_l1_ma=0, current_l2_ma=0, current_l3_ma=0)
        self.loop(1000)
        self.assertFalse(self.svc.implausible)
        self.assertEqual(self.svc.implausible_count, 0)

    def test_every_failed_cycle_is_reported(self):
        self.loop(100)
        self.meter.stream.set_fault("silent")
        failed = 0
        for _ in range(600):
            if self.svc.poll(self.clock.now) & FAILED:
                failed += 1
            self.clock.advance(LOOP_MS)
        self.assertEqual(self.svc.cycles_failed, 5)    # cycles of 1 s .. 5 s (6 s still runs)
        self.assertEqual(failed, 5)


class TestSerialNumber(Base):
    """The SDM630's serial number (holding register 0xFC00) tells a swap from a reset."""

    def setUp(self):
        super().setUp()
        self.meter.stream.fcs = (3, 4)
        self.set_serial(1234567)

    def set_serial(self, n):
        self.meter.stream.regs.update(self.svc.map.encode_serial(n))

    def publish(self, **kw):
        regs = dict((a, v) for a, v in self.meter.stream.regs.items() if a >= 0xFC00)
        self.meter.publish(**kw)
        self.meter.stream.regs.update(regs)

    def test_read_only_when_asked_and_on_a_discontinuity(self):
        self.loop(3100)
        self.assertIsNone(self.svc.serial)
        plan = len(self.svc.map.plan)
        self.assertEqual(len(self.meter.stream.requests), 4 * plan)
        self.svc.request_serial()
        self.loop(1000)
        self.assertEqual(self.svc.serial, 1234567)
        self.assertEqual(len(self.meter.stream.requests), 5 * plan + 1)
        self.loop(1000)
        self.assertEqual(len(self.meter.stream.requests), 6 * plan + 1)
        n = self.svc.request_reading(serial=True)
        self.loop(300)
        self.assertTrue(self.svc.cycle_finished(n))
        self.assertEqual(len(self.meter.stream.requests), 7 * plan + 2)

    def test_a_swap_is_a_new_segment_at_once(self):
        self.svc.request_serial()
        self.loop(100)
        self.assertEqual(self.svc.serial, 1234567)
        self.set_serial(7654321)
        self.publish(import_wh=100, export_wh=0)         # another meter
        self.loop(1000)
        self.assertFalse(self.svc.implausible)
        self.assertEqual(self.svc.serial, 7654321)
        self.assertEqual((self.svc.import_wh, self.svc.base_wh), (100, 100))
        self.assertEqual((self.svc.rebased, self.svc.swaps), (1, 1))

    def test_a_reset_of_the_same_meter_still_waits_for_a_second_reading(self):
        self.svc.request_serial()
        self.loop(100)
        self.publish(import_wh=100, export_wh=0)         # same serial: a reset, or garbage
        self.loop(1000)
        self.assertTrue(self.svc.implausible)
        self.publish(import_wh=103, export_wh=0)
        self.loop(1000)
        self.assertEqual((self.svc.import_wh, self.svc.base_wh), (103, 100))
        self.assertEqual((self.svc.rebased, self.svc.swaps), (1, 0))

    def test_a_serial_read_that_fails_leaves_the_values_standing(self):
        self.meter.stream.fcs = (4,)
        self.svc.request_serial()
        self.loop(100)
        self.assertEqual(self.svc.readings, 1)
        self.assertFalse(self.svc.stale)
        self.assertIsNone(self.svc.serial)
        self.assertEqual(self.svc.serial_failures, 1)


class TestNoAllocation(Base):
    def test_idle_and_waiting_polls_allocate_nothing(self):
        import sys
        if sys.implementation.name != "micropython":
            raise unittest.SkipTest("heap_lock is MicroPython only")
        import micropython
        self.loop(100)                          # first reading done, next cycle in 1 s
        self.meter.stream.set_fault("silent")
        micropython.heap_lock()
        try:
            for _ in range(80):                 # idle between cycles
                self.svc.poll(self.clock.now)
                self.clock.advance(LOOP_MS)
        finally:
            micropython.heap_unlock()
        self.loop(150)                          # the next cycle's request goes out
        self.assertEqual(len(self.meter.stream.requests), len(self.svc.map.plan) + 1)
        micropython.heap_lock()
        try:
            for _ in range(30):                 # waiting for a reply, then its timeout
                self.svc.poll(self.clock.now)
                self.clock.advance(LOOP_MS)
        finally:
            micropython.heap_unlock()
        self.assertEqual(self.svc.consecutive_failures, 1)


class TestFaultHandOff(Base):
    """The integrator's side: change bits drive METER_STALE / METER_IMPLAUSIBLE."""

    def step(self, faults, ms):
        from firmware import faults as f
        end = self.clock.now + ms
        while self.clock.now < end:
            now = self.clock.now
            changes = self.svc.poll(now)
            if changes & STALE_CHANGED:
                if self.svc.stale:
                    faults.raise_(f.METER_STALE, now)
                else:
                    faults.clear(f.METER_STALE, now)
            if changes & IMPLAUSIBLE_CHANGED:
                if self.svc.implausible:
                    faults.raise_(f.METER_IMPLAUSIBLE, now)
                else:
                    faults.clear(f.METER_IMPLAUSIBLE, now)
            faults.update(now)
            self.clock.advance(LOOP_MS)

    def test_meter_faults_raise_and_clear(self):
        from firmware import faults as f
        fs = f.FaultSet()
        self.step(fs, 100)
        self.assertFalse(fs.is_active(f.METER_STALE))
        self.meter.stream.set_fault("silent")
        self.step(fs, 3200)
        self.assertTrue(fs.is_active(f.METER_STALE))
        self.meter.stream.set_fault(None)
        self.step(fs, 1000)
        self.assertFalse(fs.is_active(f.METER_STALE))
        self.meter.publish(import_wh=5)
        self.step(fs, 1000)
        self.assertTrue(fs.is_active(f.METER_IMPLAUSIBLE))
        self.meter.publish(import_wh=12345680)
        self.step(fs, 1000)
        self.assertFalse(fs.is_active(f.METER_IMPLAUSIBLE))
        self.assertEqual(fs.counts[f.METER_STALE], 1)


class TestConfigure(Base):
    def test_timing_changes_apply_at_once(self):
        self.loop(100)
        self.cfg.update({"meter_poll_ms": 500, "meter_stale_after": 1})
        self.svc.configure(self.cfg)
        self.loop(5000)
        # The cycle already scheduled (t+1000) stands; from then on every 500 ms.
        self.assertEqual(len(self.meter.stream.requests), (1 + 9) * len(self.svc.map.plan))
        self.assertEqual(self.svc.import_wh, 12345678)     # same meter: readings kept

    def test_another_map_starts_afresh(self):
        self.loop(100)
        self.meter.stream.slave = 3
        self.cfg.update({"meter_map": "sdm120", "meter_addr": 3})
        self.svc.configure(self.cfg)
        self.assertIsNone(self.svc.import_wh)
        self.assertEqual(self.svc.phases, 1)
        self.meter.publish(import_wh=10)         # lower than before: a new meter, no flag
        self.loop(1000)
        self.assertEqual(self.svc.import_wh, 10)
        self.assertFalse(self.svc.implausible)

    def test_a_bad_custom_map_changes_nothing(self):
        self.loop(100)
        self.cfg.update({"meter_map": "custom", "meter_custom_map": '{"fc": 4}'})
        self.assertRaises(ValueError, self.svc.configure, self.cfg)
        self.assertEqual(self.svc.map.name, "sdm630")
        self.assertEqual(self.svc.import_wh, 12345678)

    def test_no_stream(self):
        self.assertRaises(ValueError, MeterService, self.cfg, None)


class TestWrongAddress(Base):
    def test_meter_at_another_address_goes_stale(self):
        self.meter.stream.slave = 7
        self.loop(3000)
        self.assertTrue(self.svc.stale)
        self.assertIsNone(self.svc.import_wh)


if __name__ == "__main__":
    unittest.main()


class TestFinalReading(Base):
    def test_a_requested_cycle_starts_at_once_and_is_reported_finished(self):
        self.loop(100)                          # first cycle done; the next is due in 1 s
        before = len(self.meter.stream.requests)
        n = self.svc.request_reading()
        self.assertFalse(self.svc.cycle_finished(n))
        self.loop(20)
        self.assertTrue(len(self.meter.stream.requests) > before)
        self.loop(300)
        self.assertTrue(self.svc.cycle_finished(n))
        self.assertEqual(self.svc.readings, 2)

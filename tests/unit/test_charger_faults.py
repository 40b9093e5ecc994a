# Fault paths of the charge controller, in simulated milliseconds.
# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
import unittest

from tools.charger_rig import Rig
from firmware import faults as F
from firmware.board import LED_FAULT
from firmware.charger import CONTACTOR_FAULT, LIMIT_THERMAL
from firmware.compat import ticks_diff
from firmware.events import EV_CONTACTOR, EV_FAULT_CLEARED, EV_FAULT_RAISED, EV_LOCK
from firmware.states import STATE_A, STATE_B1, STATE_C1, STATE_C2, STATE_D2, STATE_E, STATE_F


def duty_trace(r, ms):
    """Step `ms` and return the duty after every tick."""
    out = []
    for _ in range(ms // r.tick_ms):
        r.step()
        out.append(r.ch.duty_pm)
    return out


class FaultHoldsF(unittest.TestCase):
    def test_fault_while_charging_opens_at_once_and_holds_f_for_300_ms_then_x1(self):
        r = Rig()
        r.charging()
        r.leak = True
        r.step(1)
        self.assertFalse(r.ch.contactor)       # the tick that saw the trip
        self.assertEqual(r.events_of(EV_CONTACTOR)[-1][2:], (0, CONTACTOR_FAULT))
        raised_at = r.last_tick_ms()
        trace = duty_trace(r, 600)
        zeros = trace.index(1000)
        # Held at -12 V for at least fault_hold_ms (tick granularity), then +12 V.
        self.assertTrue(zeros * r.tick_ms + r.tick_ms >= r.cfg["fault_hold_ms"])
        self.assertTrue(zeros * r.tick_ms <= r.cfg["fault_hold_ms"])
        self.assertEqual(set(trace[:zeros]), {0})
        self.assertEqual(set(trace[zeros:]), {1000})
        self.assertEqual(r.ch.led, LED_FAULT)
        self.assertTrue(ticks_diff(r.now, raised_at) > 300)

    def test_longer_configured_hold(self):
        r = Rig(fault_hold_ms=1000)
        r.charging()
        r.leak = True
        r.step(1)
        trace = duty_trace(r, 1500)
        self.assertTrue(trace.index(1000) * r.tick_ms >= 990)


class ResidualCurrent(unittest.TestCase):
    def test_trip_is_latched_until_unplug(self):
        r = Rig()
        r.charging()
        r.leak = True
        r.step(1)
        self.assertTrue(r.ch.faults.is_active(F.RCD_TRIPPED))
        r.leak = False
        r.run_ms(5000)
        self.assertTrue(r.ch.faults.is_active(F.RCD_TRIPPED))
        self.assertFalse(r.ch.contactor)
        self.assertEqual(r.ch.state, STATE_C1)
        self.assertIsNotNone(r.ch.clear_fault(F.RCD_TRIPPED, True))   # not remotely
        r.ev = "A"
        r.step(3)
        self.assertFalse(r.ch.faults.is_active(F.RCD_TRIPPED))
        r.charging()                           # a new session charges again

    def test_trip_still_present_at_unplug_stays(self):
        r = Rig()
        r.charging()
        r.leak = True
        r.step(1)
        r.ev = "A"
        r.run_ms(500)
        self.assertTrue(r.ch.faults.is_active(F.RCD_TRIPPED))


class SelfTest(unittest.TestCase):
    def test_selftest_runs_at_plug_in_before_the_contactor_may_close(self):
        r = Rig(rcd_selftest=True)
        r.ev = "B"
        r.step(2)                              # B confirmed: the test output goes on
        self.assertTrue(r.ch.rcd_test)
        r.ch.authorize(True)
        r.ev = "C"
        took = r.run_until(lambda: r.ch.contactor, 3000)
        self.assertTrue(took >= 0)
        passes = r.events_of(5)  # EV_SELFTEST
        self.assertEqual(len(passes), 1)
        self.assertEqual(passes[0][2], 1)
        self.assertFalse(r.ch.rcd_test)

    def test_monitor_that_does_not_trip_fails_and_blocks(self):
        r = Rig(rcd_selftest=True)
        r.monitor_ok = False
        r.plug("B")
        r.ch.authorize(True)
        r.ev = "C"
        r.run_ms(3000)
        self.assertTrue(r.ch.faults.is_active(F.RCD_SELFTEST_FAILED))
        self.assertFalse(r.ch.contactor)
        self.assertEqual(r.events_of(5)[-1][2], 0)
        self.assertEqual(len(r.events_of(5)), 1)   # no endless retry
        # After the repair and a (remote) clear the next test passes and charging starts.
        r.monitor_ok = True
        self.assertIsNone(r.ch.clear_fault(F.RCD_SELFTEST_FAILED, True))
        took = r.run_until(lambda: r.ch.contactor, 3000)
        self.assertTrue(took >= 0)

    def test_failed_selftest_drives_f_in_the_tick_that_raises_it(self):
        r = Rig(rcd_selftest=True)
        r.monitor_ok = False
        r.plug("B")
        r.run_until(lambda: r.ch.faults.is_active(F.RCD_SELFTEST_FAILED), 2000)
        self.assertEqual(r.ch.duty_pm, 0)
        self.assertEqual(r.ch.state, STATE_F)

    def test_trip_line_that_stays_active_fails(self):
        r = Rig(rcd_selftest=True)
        r.plug("B")
        r.monitor_stuck = True
        r.run_ms(2000)
        self.assertTrue(r.ch.faults.is_active(F.RCD_SELFTEST_FAILED))

    def test_requested_selftest_waits_for_an_open_contactor(self):
        r = Rig()
        r.charging()
        r.cfg.set("rcd_selftest", True)
        r.ch.reload_config()
        r.ch.request_selftest()
        r.run_ms(1000)
        self.assertFalse(r.ch.rcd_test)
        self.assertTrue(r.ch.contactor)
        self.assertEqual(r.events_of(5), [])   # a test takes two ticks: none ran meanwhile
        r.ev = "B"
        r.run_ms(500)
        events = r.ch.events.recent()
        opened = [i for i, e in enumerate(events) if e[1] == EV_CONTACTOR and e[2] == 0]
        tests = [i for i, e in enumerate(events) if e[1] == 5]       # EV_SELFTEST
        self.assertEqual(len(tests), 1)
        self.assertTrue(tests[0] > opened[0])
        self.assertEqual(r.events_of(5)[-1][2], 1)
        self.assertFalse(r.ch.rcd_test)

    def test_idle_station_retests_after_the_period(self):
        r = Rig(rcd_selftest=True, rcd_selftest_period_ms=3600000, tick_ms=1000)
        r.run_ms(3600000 + 5000)
        self.assertEqual(len(r.events_of(5)), 1)


class Contactor(unittest.TestCase):
    def test_welded_contactor_latches_and_never_recloses(self):
        r = Rig()
        r.charging()
        r.welded = True
        r.ev = "B"
        r.step(2)
        self.assertFalse(r.ch.contactor)
        opened_at = r.last_tick_ms()
        took = r.run_until(lambda: r.ch.faults.is_active(F.CONTACTOR_WELDED), 3000)
        self.assertTrue(took >= 0)
        self.assertTrue(ticks_diff(r.last_tick_ms(), opened_at) >= r.cfg["welded_check_ms"])
        r.ev = "C"
        r.run_ms(10000)
        self.assertFalse(r.ch.contactor)
        self.assertEqual(len([e for e in r.events_of(EV_CONTACTOR) if e[2] == 1]), 1)
        self.assertIn("on site", r.ch.clear_fault(F.CONTACTOR_WELDED, True))
        self.assertIn("cause", r.ch.clear_fault(F.CONTACTOR_WELDED, False))
        r.ev = "A"
        r.run_ms(1000)
        self.assertTrue(r.ch.faults.is_active(F.CONTACTOR_WELDED))   # unplug is no repair
        # The technician replaces the contactor and clears it on site.
        r.welded = False
        r._mirror = False
        r.step(2)
        self.assertIsNone(r.ch.clear_fault(F.CONTACTOR_WELDED, False))
        r.charging()

    def test_lock_stays_while_welded(self):
        r = Rig(lock_enabled=True)
        r.charging()
        self.assertTrue(r.ch.lock)
        r.welded = True
        r.ev = "A"
        r.run_ms(3000)
        self.assertTrue(r.ch.faults.is_active(F.CONTACTOR_WELDED))
        self.assertTrue(r.ch.lock)

    def test_contactor_that_does_not_close_is_opened_with_a_fault(self):
        r = Rig()
        r.stuck_open = True
        r.plug("B")
        r.ch.authorize(True)
        r.ev = "C"
        r.run_until(lambda: r.ch.contactor, 3000)
        closed_at = r.last_tick_ms()
        took = r.run_until(lambda: not r.ch.contactor, 3000)
        self.assertTrue(took > 0)
        self.assertTrue(r.ch.faults.is_active(F.CONTACTOR_NOT_CLOSING))
        self.assertTrue(ticks_diff(r.last_tick_ms(), closed_at)
                        >= r.cfg["contactor_close_timeout_ms"])
        r.run_ms(5000)
        self.assertFalse(r.ch.contactor)
        r.ev = "A"
        r.step(3)
        self.assertFalse(r.ch.faults.is_active(F.CONTACTOR_NOT_CLOSING))

    def test_reclose_waits_for_the_welded_check(self):
        r = Rig(b_to_c_debounce_ms=0)
        r.charging()
        r.ev = "B"
        r.step(2)
        opened_at = r.last_tick_ms()
        r.ev = "C"
        self.assertTrue(r.run_until(lambda: r.ch.contactor, 3000) >= 0)
        self.assertTrue(ticks_diff(r.last_tick_ms(), opened_at) >= r.cfg["welded_check_ms"])


class PilotFaults(unittest.TestCase):
    def test_diode_fault_latches_until_a(self):
        r = Rig()
        r.charging()
        r.diode = False
        r.step(2)
        self.assertFalse(r.ch.contactor)
        self.assertTrue(r.ch.faults.is_active(F.DIODE_FAULT))
        r.diode = True
        r.run_ms(10000)
        self.assertTrue(r.ch.faults.is_active(F.DIODE_FAULT))
        self.assertFalse(r.ch.contactor)
        self.assertEqual(r.ch.duty_pm, 1000)
        r.ev = "A"
        r.step(3)
        self.assertFalse(r.ch.faults.is_active(F.DIODE_FAULT))

    def test_cp_short_is_state_e_and_stops(self):
        r = Rig()
        r.charging()
        r.ev = "E"
        r.step(2)
        self.assertFalse(r.ch.contactor)
        self.assertTrue(r.ch.faults.is_active(F.CP_SHORT))
        r.run_ms(1000)
        self.assertEqual(r.ch.state, STATE_E)
        r.ev = "B"
        r.run_ms(2000)
        self.assertFalse(r.ch.faults.is_active(F.CP_SHORT))
        self.assertEqual(r.ch.state, STATE_B1)   # authorization kept: no unplug seen
        r.run_ms(100)

    def test_impossible_voltage_is_a_pilot_fault(self):
        r = Rig()
        r.charging()
        r.ch.cp_high_mv = 14000
        for _ in range(2):
            r.ch.tick(r.now)            # the rig's EV would overwrite the inputs
            r.now += 10
        self.assertTrue(r.ch.faults.is_active(F.PILOT_FAULT))
        self.assertFalse(r.ch.contactor)
        self.assertEqual(r.ch.state, STATE_F)


class Ventilation(unittest.TestCase):
    def test_d_without_ventilation_gets_no_power(self):
        r = Rig()
        r.plug("B")
        r.ch.authorize(True)
        r.ev = "D"
        r.run_ms(3000)
        self.assertFalse(r.ch.contactor)
        self.assertTrue(r.ch.faults.is_active(F.VENTILATION_UNSUPPORTED))
        r.ev = "B"
        r.run_ms(500)
        self.assertFalse(r.ch.faults.is_active(F.VENTILATION_UNSUPPORTED))

    def test_d_with_ventilation_charges_as_d2(self):
        r = Rig(ventilation_supported=True)
        r.plug("B")
        r.ch.authorize(True)
        r.ev = "D"
        took = r.run_until(lambda: r.ch.contactor, 3000)
        self.assertTrue(took >= 0)
        self.assertEqual(r.ch.state, STATE_D2)


class OverCurrent(unittest.TestCase):
    def test_ev_drawing_more_than_offered_plus_margin_is_stopped_after_the_grace(self):
        r = Rig(max_current_ma=16000)
        r.charging()
        r.draw_ma = 16000 + 5001
        start = r.now
        took = r.run_until(lambda: not r.ch.contactor, 10000)
        self.assertTrue(took >= r.cfg["overcurrent_grace_ms"], took)
        self.assertTrue(took <= r.cfg["overcurrent_grace_ms"] + 30, took)
        self.assertTrue(r.ch.faults.is_active(F.OVERCURRENT))
        self.assertTrue(ticks_diff(r.now, start) > 0)

    def test_draw_within_the_margin_is_fine(self):
        r = Rig(max_current_ma=16000)
        r.charging()
        r.draw_ma = 16000 + 5000
        r.run_ms(20000)
        self.assertTrue(r.ch.contactor)

    def test_stale_meter_does_not_trip(self):
        r = Rig(max_current_ma=16000)
        r.charging()
        r.draw_ma = 40000
        r.meter_valid = False
        r.run_ms(20000)
        self.assertTrue(r.ch.contactor)

    def test_lower_offer_gives_the_ev_time_to_follow(self):
        r = Rig()
        r.charging()
        r.draw_ma = 32000                      # keeps drawing the old current for 4 s
        r.ch.set_backend_limit(6000)
        r.run_ms(4000)
        r.draw_ma = 6000
        r.run_ms(10000)
        self.assertTrue(r.ch.contactor)
        self.assertFalse(r.ch.faults.is_active(F.OVERCURRENT))

    def test_overcurrent_latches_until_unplug_or_remote_clear(self):
        r = Rig(max_current_ma=16000)
        r.charging()
        r.draw_ma = 30000
        r.run_ms(6000)
        self.assertTrue(r.ch.faults.is_active(F.OVERCURRENT))
        r.run_ms(1000)
        self.assertIsNone(r.ch.clear_fault(F.OVERCURRENT, True))


class Temperature(unittest.TestCase):
    def _at(self, r, dc):
        r.temp_dc = dc
        r.run_ms(5100)                         # past the increase interval

    def test_derating_steps_and_hysteresis(self):
        r = Rig(max_current_ma=32000)
        r.temp_dc = 250
        r.charging()
        self.assertEqual(r.ch.offered_ma, 32000)
        self._at(r, 650)
        self.assertEqual(r.ch.offered_ma, 16000)
        self.assertEqual(r.ch.limit_reason, LIMIT_THERMAL)
        self._at(r, 640)                       # above restore: stays halved
        self.assertEqual(r.ch.offered_ma, 16000)
        self._at(r, 680)
        self.assertEqual(r.ch.offered_ma, 8000)
        self._at(r, 660)                       # 68.0 - 3.0 hysteresis not reached
        self.assertEqual(r.ch.offered_ma, 8000)
        self._at(r, 640)
        self.assertEqual(r.ch.offered_ma, 16000)
        self._at(r, 619)
        self.assertEqual(r.ch.offered_ma, 32000)

    def test_quarter_is_never_below_6_a(self):
        r = Rig(max_current_ma=16000)
        r.temp_dc = 690
        r.charging()
        self.assertEqual(r.ch.offered_ma, 6000)

    def test_stop_temperature_opens_and_resumes_after_cooling(self):
        r = Rig()
        r.temp_dc = 250
        r.charging()
        r.temp_dc = 710
        r.step(1)
        self.assertFalse(r.ch.contactor)
        self.assertTrue(r.ch.faults.is_active(F.OVERTEMP))
        self._at(r, 690)                       # above 71.0 - 3.0: still stopped
        self.assertTrue(r.ch.faults.is_active(F.OVERTEMP))
        self._at(r, 670)
        self.assertFalse(r.ch.faults.is_active(F.OVERTEMP))
        took = r.run_until(lambda: r.ch.contactor, 8000)
        self.assertTrue(took >= 0)

    def test_implausible_reading_is_a_sensor_fault(self):
        r = Rig()
        r.temp_dc = -900
        r.plug("B")
        r.run_ms(100)
        self.assertTrue(r.ch.faults.is_active(F.TEMP_SENSOR_FAILED))
        r.temp_dc = 200
        r.run_ms(6000)
        self.assertFalse(r.ch.faults.is_active(F.TEMP_SENSOR_FAILED))

    def test_sensor_lost_after_readings_is_a_fault_not_no_sensor(self):
        # None means "this board has no sensor"; a sensor that gave readings and then
        # stops must not reset an over-temperature stop or derating to full current.
        r = Rig()
        r.temp_dc = 250
        r.charging()
        r.temp_dc = 720
        r.step(1)
        self.assertTrue(r.ch.faults.is_active(F.OVERTEMP))
        r.temp_dc = None
        r.run_ms(10000)
        self.assertFalse(r.ch.contactor)
        self.assertTrue(r.ch.faults.is_active(F.TEMP_SENSOR_FAILED))
        r.temp_dc = 250                        # readings are back
        r.run_ms(6000)
        self.assertFalse(r.ch.faults.is_active(F.TEMP_SENSOR_FAILED))
        self.assertTrue(r.run_until(lambda: r.ch.contactor, 8000) >= 0)

    def test_sensor_lost_while_derating_keeps_the_current_down(self):
        r = Rig(max_current_ma=32000)
        r.temp_dc = 660
        r.charging()
        self.assertEqual(r.ch.offered_ma, 16000)
        r.temp_dc = None
        r.run_ms(10000)
        self.assertTrue(r.ch.offered_ma <= 16000)

    def test_missing_sensor_only_matters_when_required(self):
        r = Rig()
        r.run_ms(100)
        self.assertFalse(r.ch.faults.is_active(F.TEMP_SENSOR_FAILED))
        r = Rig(temp_sensor_required=True)
        r.run_ms(100)
        self.assertTrue(r.ch.faults.is_active(F.TEMP_SENSOR_FAILED))


class Proximity(unittest.TestCase):
    def test_no_cable_coding_while_connected_is_pp_invalid(self):
        r = Rig()
        r.pp_ohms = 100000
        r.plug("B")
        r.ch.authorize(True)
        r.ev = "C"
        r.run_ms(2000)
        self.assertTrue(r.ch.faults.is_active(F.PP_INVALID))
        self.assertFalse(r.ch.contactor)

    def test_shorted_pp_is_invalid(self):
        r = Rig()
        r.pp_ohms = 10
        r.plug("B")
        r.run_ms(500)
        self.assertTrue(r.ch.faults.is_active(F.PP_INVALID))

    def test_tethered_station_ignores_pp(self):
        r = Rig(socket_outlet=False)
        r.pp_ohms = 100000
        r.charging()
        self.assertEqual(r.ch.offered_ma, 32000)


class Lock(unittest.TestCase):
    def test_lock_confirmed_before_the_contactor_closes(self):
        r = Rig(lock_enabled=True)
        r.plug("B")
        self.assertFalse(r.ch.lock)            # nothing to lock for before authorization
        r.ch.authorize(True)
        r.step(1)
        self.assertTrue(r.ch.lock)
        r.ev = "C"
        self.assertTrue(r.run_until(lambda: r.ch.contactor, 3000) >= 0)
        self.assertTrue(r.ch.lock_ok)
        kinds = [e[1] for e in r.ch.events.recent()]
        self.assertTrue(kinds.index(EV_LOCK) < kinds.index(EV_CONTACTOR))
        r.ev = "A"
        r.step(3)
        self.assertFalse(r.ch.lock)

    def test_lock_that_never_confirms_is_a_fault(self):
        r = Rig(lock_enabled=True)
        r.lock_works = False
        r.plug("B")
        r.ch.authorize(True)
        r.ev = "C"
        r.run_ms(3000)
        self.assertFalse(r.ch.contactor)
        self.assertTrue(r.ch.faults.is_active(F.LOCK_FAILED))
        self.assertFalse(r.ch.lock)            # released so the cable can be removed


class WakeUp(unittest.TestCase):
    def test_ev_idle_in_b2_gets_one_x1_wake_up(self):
        r = Rig(wake_up_after_ms=30000, wake_up_hold_ms=3000)
        r.plug("B")
        r.ch.authorize(True)
        r.step(1)
        trace = duty_trace(r, 70000)
        steady = [i for i, d in enumerate(trace) if d == 1000]
        self.assertEqual(len(steady), 300)           # 3 s at 10 ms, once
        self.assertTrue(2990 <= steady[0] <= 3001, steady[0])
        self.assertEqual(steady[-1] - steady[0], 299)

    def test_ev_answering_the_wake_up_charges(self):
        r = Rig()
        r.plug("B")
        r.ch.authorize(True)
        r.run_ms(30100)
        self.assertEqual(r.ch.duty_pm, 1000)
        r.ev = "C"
        took = r.run_until(lambda: r.ch.contactor, 3000)
        self.assertTrue(took >= 0)
        self.assertEqual(r.ch.state, STATE_C2)

    def test_f_wake_up_mode(self):
        r = Rig(wake_up_pilot="F", wake_up_hold_ms=4000)
        r.plug("B")
        r.ch.authorize(True)
        r.step(1)
        trace = duty_trace(r, 40000)
        self.assertEqual(trace.count(0), 400)

    def test_disabled(self):
        r = Rig(wake_up_enabled=False)
        r.plug("B")
        r.ch.authorize(True)
        r.step(1)
        self.assertFalse(1000 in duty_trace(r, 40000))


class ClearingAndEvents(unittest.TestCase):
    def test_fault_events_are_pushed_by_the_tick(self):
        r = Rig()
        r.charging()
        r.leak = True
        r.step(1)
        self.assertEqual(r.events_of(EV_FAULT_RAISED)[-1][2], F.RCD_TRIPPED)
        r.leak = False
        r.ev = "A"
        r.run_ms(400)                          # F hold: the unplug is seen after it
        self.assertEqual(r.events_of(EV_FAULT_CLEARED)[-1][2], F.RCD_TRIPPED)
        self.assertEqual(r.ch.state, STATE_A)

    def test_clear_fault_reports_why_not(self):
        r = Rig()
        self.assertIn("not active", r.ch.clear_fault(F.OVERCURRENT, False))

    def test_warning_does_not_stop_charging(self):
        r = Rig()
        r.charging()
        r.ch.faults.raise_(F.BACKEND_OFFLINE, r.now)
        r.run_ms(1000)
        self.assertTrue(r.ch.contactor)
        self.assertNotEqual(r.ch.led, LED_FAULT)

    def test_fault_raised_by_another_module_stops_charging_in_the_next_tick(self):
        r = Rig()
        r.charging()
        # a blocking code the tick does not own, through the shared set
        r.ch.faults.raise_(F.RCD_SELFTEST_FAILED, r.now, False)
        r.step(1)
        self.assertFalse(r.ch.contactor)
        self.assertEqual(r.ch.state, STATE_F)

    def test_unplug_after_a_fault_returns_to_a(self):
        r = Rig()
        r.charging()
        r.leak = True
        r.step(1)
        r.leak = False
        r.ev = "A"
        r.run_ms(1000)
        self.assertEqual(r.ch.state, STATE_A)
        self.assertEqual(r.ch.faults.active, 0)

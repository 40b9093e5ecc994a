# IEC 61851-1 Annex A sequences on the charge controller, in simulated milliseconds.
# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
import unittest

from tools.charger_rig import Rig
from firmware import faults as F
from firmware.board import LED_CHARGING, LED_CONNECTED, LED_IDLE, LED_PAUSED, LED_UNAVAILABLE
from firmware.charger import (
    CONTACTOR_EV_STOPPED, CONTACTOR_PWM_OFF, CONTACTOR_UNPLUGGED, LIMIT_BACKEND, LIMIT_CABLE,
    LIMIT_COMMS, LIMIT_CONFIG, LIMIT_NONE, LIMIT_PAUSED, ChargerError)
from firmware.compat import TICKS_MAX, ticks_add, ticks_diff
from firmware.events import EV_CONTACTOR, EV_OFFER, EV_STATE
from firmware.pilot import duty_for_current
from firmware.states import (
    STATE_A, STATE_B1, STATE_B2, STATE_C1, STATE_C2, STATE_F, STATE_UNAVAILABLE)


class PlugInAndCharge(unittest.TestCase):
    def test_boot_without_ev_is_a_with_steady_plus_12(self):
        r = Rig()
        r.step(5)
        self.assertEqual(r.ch.state, STATE_A)
        self.assertEqual(r.ch.duty_pm, 1000)
        self.assertFalse(r.ch.contactor)
        self.assertEqual(r.ch.led, LED_IDLE)

    def test_unauthorized_ev_sees_b1_with_steady_plus_12(self):
        r = Rig()
        r.plug("B")
        self.assertEqual(r.ch.state, STATE_B1)
        self.assertEqual(r.ch.duty_pm, 1000)
        self.assertEqual(r.ch.offered_ma, 0)
        self.assertEqual(r.ch.led, LED_CONNECTED)

    def test_ev_requesting_without_authorization_stays_c1_and_open(self):
        r = Rig()
        r.plug("C")
        r.run_ms(5000)
        self.assertEqual(r.ch.state, STATE_C1)
        self.assertFalse(r.ch.contactor)

    def test_authorized_ev_sees_pwm_for_the_cable_and_config_limit(self):
        r = Rig(max_current_ma=16000)
        r.plug("B")
        r.ch.authorize(True)
        r.step(2)
        self.assertEqual(r.ch.state, STATE_B2)
        self.assertEqual(r.ch.offered_ma, 16000)
        self.assertEqual(r.ch.duty_pm, duty_for_current(16000))
        self.assertEqual(r.ch.limit_reason, LIMIT_CONFIG)

    def test_c2_confirmed_closes_within_3_s_after_the_debounce(self):
        r = Rig()
        r.plug("B")
        r.ch.authorize(True)
        r.step(3)
        r.ev = "C"
        r.step(2)                       # two readings confirm C
        self.assertEqual(r.ch.state, STATE_C2)
        confirmed = r.last_tick_ms()
        took = r.run_until(lambda: r.ch.contactor, 3000)
        self.assertTrue(0 <= took, "not closed within 3 s")
        closed_at = r.last_tick_ms()
        self.assertTrue(ticks_diff(closed_at, confirmed) >= r.cfg["b_to_c_debounce_ms"])
        self.assertTrue(ticks_diff(closed_at, confirmed) < 3000)
        self.assertEqual(r.ch.led, LED_CHARGING)

    def test_short_c_glitch_below_the_debounce_does_not_close(self):
        r = Rig()
        r.plug("B")
        r.ch.authorize(True)
        r.step(3)
        r.ev = "C"
        r.run_ms(300)
        r.ev = "B"
        r.run_ms(2000)
        self.assertEqual([e for e in r.events_of(EV_CONTACTOR)], [])

    def test_authorization_after_c_closes_at_once(self):
        r = Rig()
        r.plug("C")
        r.run_ms(2000)
        r.ch.authorize(True)
        r.step(1)
        self.assertEqual(r.ch.state, STATE_C2)
        took = r.run_until(lambda: r.ch.contactor, 3000)
        self.assertTrue(0 <= took <= 100)

    def test_close_waits_for_c_read_with_pwm_on(self):
        # C2 is C read while the PWM runs, and only then is the EV's diode checked: the
        # tick that starts the PWM has not seen the EV answer it and must not close.
        r = Rig()
        r.plug("C")
        r.run_ms(2000)                  # C1, the debounce long over
        r.ch.authorize(True)
        r.step(1)
        self.assertEqual(r.ch.state, STATE_C2)
        self.assertFalse(r.ch.contactor)
        took = r.run_until(lambda: r.ch.contactor, 3000)
        self.assertEqual(took, r.cfg["pilot_confirm_n"] * r.tick_ms)

    def test_missing_diode_found_under_pwm_before_the_first_close(self):
        r = Rig()
        r.plug("C")
        r.run_ms(2000)
        r.diode = False
        r.ch.authorize(True)
        r.run_ms(1000)
        self.assertEqual([e for e in r.events_of(EV_CONTACTOR) if e[2] == 1], [])
        self.assertTrue(r.ch.faults.is_active(F.DIODE_FAULT))

    def test_resume_after_pause_closes_after_reading_c_with_pwm(self):
        r = Rig()
        r.charging()
        r.ch.pause()
        r.step(1)
        r.run_until(lambda: not r.ch.contactor, 7000)      # EV stayed in C: cut at 6 s
        r.run_ms(5000)
        r.ch.resume()
        self.assertTrue(r.run_until(lambda: 0 < r.ch.duty_pm < 1000, 6000) >= 0)
        self.assertFalse(r.ch.contactor)            # the tick that turned the PWM on
        took = r.run_until(lambda: r.ch.contactor, 3000)
        self.assertEqual(took, r.cfg["pilot_confirm_n"] * r.tick_ms)


class LeavingCharge(unittest.TestCase):
    def test_ev_unplugs_while_charging_opens_in_the_tick_that_confirms_a(self):
        r = Rig()
        r.charging()
        r.ev = "A"
        r.step(1)
        self.assertTrue(r.ch.contactor)        # one reading is not yet a state
        r.step(1)
        self.assertFalse(r.ch.contactor)
        self.assertEqual(r.ch.state, STATE_A)
        self.assertEqual(r.events_of(EV_CONTACTOR)[-1][2:], (0, CONTACTOR_UNPLUGGED))

    def test_ev_opens_s2_c_to_b_opens_in_the_same_tick(self):
        r = Rig()
        r.charging()
        r.ev = "B"
        r.step(2)
        self.assertFalse(r.ch.contactor)
        self.assertEqual(r.ch.state, STATE_B2)
        self.assertEqual(r.events_of(EV_CONTACTOR)[-1][2:], (0, CONTACTOR_EV_STOPPED))

    def test_a_10_ms_tick_opens_well_inside_100_ms(self):
        for leave in ("A", "B"):
            r = Rig(tick_ms=10)
            r.charging()
            left_at = r.now
            r.ev = leave
            took = r.run_until(lambda: not r.ch.contactor, 100)
            self.assertTrue(0 <= took < 100, (leave, took))
            # Worst case: confirm_n readings, each one tick apart.
            self.assertTrue(took <= r.cfg["pilot_confirm_n"] * r.tick_ms, took)
            self.assertEqual(r.now, ticks_add(left_at, took))

    def test_unplug_ends_the_authorization(self):
        r = Rig()
        r.charging()
        r.ev = "A"
        r.step(3)
        self.assertFalse(r.ch.authorized)
        r.plug("B")
        self.assertEqual(r.ch.state, STATE_B1)

    def test_free_mode_authorizes_every_session(self):
        r = Rig(auth_mode="free")
        r.plug("B")
        self.assertEqual(r.ch.state, STATE_B2)
        r.ev = "A"
        r.step(3)
        r.plug("B")
        self.assertEqual(r.ch.state, STATE_B2)

    def test_authorization_before_plug_in_is_kept(self):
        r = Rig()
        r.ch.authorize(True)
        r.step(3)
        r.plug("B")
        self.assertEqual(r.ch.state, STATE_B2)


class PauseAndPwmOff(unittest.TestCase):
    def test_pause_turns_pwm_off_and_opens_when_the_ev_stops(self):
        r = Rig()
        r.charging()
        r.ch.pause()
        r.step(1)
        self.assertEqual(r.ch.duty_pm, 1000)
        self.assertEqual(r.ch.offered_ma, 0)
        self.assertEqual(r.ch.state, STATE_C1)
        self.assertTrue(r.ch.contactor)         # the EV gets time to reduce its current
        self.assertEqual(r.ch.limit_reason, LIMIT_PAUSED)
        self.assertEqual(r.ch.led, LED_CHARGING)
        r.run_ms(2000)
        r.ev = "B"
        r.step(2)
        self.assertFalse(r.ch.contactor)
        self.assertEqual(r.ch.state, STATE_B1)
        self.assertEqual(r.ch.led, LED_PAUSED)

    def test_ev_staying_in_c_after_pwm_off_is_cut_at_6_s(self):
        r = Rig()
        r.charging()
        r.ch.pause()
        r.step(1)
        off_at = r.last_tick_ms()
        took = r.run_until(lambda: not r.ch.contactor, 7000)
        opened_at = r.last_tick_ms()
        self.assertTrue(took > 0)
        self.assertEqual(ticks_diff(opened_at, off_at), r.cfg["pwm_off_open_ms"])
        self.assertEqual(r.events_of(EV_CONTACTOR)[-1][2:], (0, CONTACTOR_PWM_OFF))

    def test_resume_offers_again_but_not_faster_than_the_update_interval(self):
        r = Rig()
        r.charging()
        r.ch.pause()
        r.step(1)
        paused_at = r.last_tick_ms()
        r.ev = "B"
        r.step(2)
        r.ch.resume()
        took = r.run_until(lambda: r.ch.offered_ma > 0, 10000)
        self.assertTrue(took >= 0)
        self.assertEqual(ticks_diff(r.last_tick_ms(), paused_at),
                         r.cfg["duty_update_interval_ms"])

    def test_deauthorize_while_charging_stops_like_pause(self):
        r = Rig()
        r.charging()
        r.ch.authorize(False)
        r.step(1)
        self.assertEqual(r.ch.duty_pm, 1000)
        r.ev = "B"
        r.step(2)
        self.assertFalse(r.ch.contactor)


class Limits(unittest.TestCase):
    def test_cable_rating_bounds_the_current(self):
        r = Rig(max_current_ma=32000)
        r.pp_ohms = 1500                 # 13 A cable
        r.plug("B")
        r.ch.authorize(True)
        r.step(2)
        self.assertEqual(r.ch.offered_ma, 13000)
        self.assertEqual(r.ch.limit_reason, LIMIT_CABLE)

    def test_backend_limit_lowers_at_once_and_raises_after_the_interval(self):
        r = Rig()
        r.charging()
        start_offer = r.ch.offered_ma
        r.ch.set_backend_limit(10000)
        r.step(1)
        self.assertEqual(r.ch.offered_ma, 10000)
        self.assertEqual(r.ch.duty_pm, 166)
        self.assertEqual(r.ch.limit_reason, LIMIT_BACKEND)
        lowered_at = r.last_tick_ms()
        r.ch.set_backend_limit(20000)
        took = r.run_until(lambda: r.ch.offered_ma == 20000, 10000)
        self.assertTrue(took > 0)
        self.assertEqual(ticks_diff(r.last_tick_ms(), lowered_at), 5000)
        self.assertTrue(start_offer > 20000)

    def test_backend_limit_below_6_a_pauses_never_a_duty_under_10_percent(self):
        r = Rig()
        r.charging()
        r.ch.set_backend_limit(5000)
        r.step(1)
        self.assertEqual(r.ch.duty_pm, 1000)
        self.assertEqual(r.ch.offered_ma, 0)
        self.assertEqual(r.ch.effective_limit_ma(), 5000)

    def test_backend_limit_stays_until_cleared(self):
        # Expiry is counted by the station (tests/unit/test_station.py).
        r = Rig()
        r.charging()
        r.ch.set_backend_limit(8000)
        r.step(1)
        self.assertEqual(r.ch.offered_ma, 8000)
        r.run_ms(60000)
        self.assertEqual(r.ch.offered_ma, 8000)
        r.ch.clear_backend_limit()
        r.run_ms(6000)
        self.assertEqual(r.ch.limit_why(), LIMIT_CONFIG)
        self.assertEqual(r.ch.offered_ma, 32000)

    def test_comms_fallback_and_its_end(self):
        r = Rig()
        r.charging()
        r.ch.set_comms_fallback(6000)
        r.step(1)
        self.assertEqual(r.ch.offered_ma, 6000)
        self.assertEqual(r.ch.limit_reason, LIMIT_COMMS)
        r.ch.clear_comms_fallback()
        r.run_ms(5100)
        self.assertEqual(r.ch.offered_ma, 32000)

    def test_comms_fallback_zero_pauses(self):
        r = Rig()
        r.charging()
        r.ch.set_comms_fallback(0)
        r.step(1)
        self.assertEqual(r.ch.duty_pm, 1000)

    def test_offer_events_name_the_binding_limit(self):
        r = Rig()
        r.charging()
        r.ch.set_backend_limit(10000)
        r.step(1)
        self.assertEqual(r.events_of(EV_OFFER)[-1][2:], (10000, LIMIT_BACKEND))

    def test_bad_commands_change_nothing(self):
        r = Rig()
        for bad in (-1, 80001, True, "16"):
            self.assertRaises(ChargerError, r.ch.set_backend_limit, bad)
            self.assertRaises(ChargerError, r.ch.set_comms_fallback, bad)
        self.assertRaises(ChargerError, r.ch.authorize, 1)
        self.assertRaises(ChargerError, r.ch.set_available, None)
        self.assertEqual(r.ch.effective_limit_ma(), 32000)
        self.assertTrue(issubclass(ChargerError, ValueError))

    def test_limit_is_none_without_an_ev(self):
        r = Rig()
        r.step(3)
        self.assertEqual(r.ch.limit_reason, LIMIT_NONE)


class Availability(unittest.TestCase):
    def test_inoperative_idle_station_drives_f(self):
        r = Rig()
        r.step(2)
        r.ch.set_available(False)
        r.step(1)
        self.assertEqual(r.ch.duty_pm, 0)
        self.assertEqual(r.ch.state, STATE_UNAVAILABLE)
        self.assertEqual(r.ch.led, LED_UNAVAILABLE)
        r.ch.set_available(True)
        r.step(3)
        self.assertEqual(r.ch.state, STATE_A)
        self.assertEqual(r.ch.duty_pm, 1000)

    def test_inoperative_while_charging_stops_safely_first(self):
        r = Rig()
        r.charging()
        r.ch.set_available(False)
        r.step(1)
        self.assertTrue(r.ch.contactor)
        self.assertEqual(r.ch.duty_pm, 1000)
        r.ev = "B"
        r.step(2)
        self.assertFalse(r.ch.contactor)
        r.run_ms(1000)
        # The EV is still there: x1 (no current offered) so that its unplug is seen.
        self.assertEqual(r.ch.duty_pm, 1000)
        self.assertEqual(r.ch.state, STATE_B1)
        self.assertEqual(r.ch.led, LED_UNAVAILABLE)
        r.ev = "A"
        r.step(2)
        self.assertEqual(r.ch.state, STATE_A)
        r.step(1)
        self.assertEqual(r.ch.duty_pm, 0)
        self.assertEqual(r.ch.state, STATE_UNAVAILABLE)

    def test_unplug_while_unavailable_ends_the_authorization(self):
        r = Rig()
        r.plug("B")
        r.ch.authorize(True)
        r.ch.set_available(False)
        r.step(2)
        r.ev = "A"
        r.run_ms(1000)
        self.assertEqual(r.ch.state, STATE_UNAVAILABLE)
        self.assertFalse(r.ch.authorized)       # seen while inoperative, not afterwards
        r.ch.set_available(True)
        r.step(4)
        self.assertEqual(r.ch.state, STATE_A)
        self.assertFalse(r.ch.authorized)

    def test_ev_swapped_while_inoperative_does_not_inherit_the_authorization(self):
        # While -12 V is driven the EV is invisible: the unplug of the first EV must be
        # seen (and reported, so its session ends) before the pilot goes to F, or the next
        # EV would charge on the first one's authorization.
        r = Rig()
        r.charging()
        r.ch.set_available(False)
        r.ev = "B"
        r.run_ms(500)
        r.ev = "A"
        r.run_ms(500)
        self.assertEqual(r.ch.state, STATE_UNAVAILABLE)
        self.assertIn((STATE_A, STATE_B1), [e[2:] for e in r.events_of(EV_STATE)])
        r.ev = "B"                       # another EV, plugged while inoperative
        r.run_ms(500)
        r.ch.set_available(True)
        r.run_ms(1000)
        self.assertEqual(r.ch.state, STATE_B1)
        self.assertFalse(r.ch.authorized)
        self.assertEqual(r.ch.offered_ma, 0)


class AcrossTheTickWrap(unittest.TestCase):
    def test_a_whole_session_across_2_to_30(self):
        r = Rig(start_ms=TICKS_MAX - 300)
        r.plug("B")
        r.ch.authorize(True)
        r.step(2)
        r.ev = "C"
        took = r.run_until(lambda: r.ch.contactor, 3000)
        self.assertTrue(500 <= took < 3000, took)
        self.assertTrue(r.now < 10000)          # the clock wrapped meanwhile
        r.ch.pause()
        r.step(1)
        off_at = r.last_tick_ms()
        r.run_until(lambda: not r.ch.contactor, 7000)
        self.assertEqual(ticks_diff(r.last_tick_ms(), off_at), r.cfg["pwm_off_open_ms"])

    def test_pwm_off_timeout_straddling_the_wrap(self):
        r = Rig(start_ms=TICKS_MAX - 5000)
        r.charging()
        r.ch.pause()
        r.step(1)
        off_at = r.last_tick_ms()
        r.run_until(lambda: not r.ch.contactor, 7000)
        self.assertTrue(r.last_tick_ms() < off_at)   # opened after the wrap
        self.assertEqual(ticks_diff(r.last_tick_ms(), off_at), 6000)

    def test_long_idle_wait_then_charge(self):
        # Timers latch while they run, so a long wait (longer than half the tick period)
        # between the EV's request and the authorization cannot block the close.
        r = Rig(tick_ms=1000)
        r.plug("C")
        r.run_ms(1000)
        # Longer than half the period: two steps (ticks_add refuses a delta that long).
        r.now = ticks_add(ticks_add(r.now, 1 << 28), (1 << 28) + 12345)
        r.step(2)
        r.ch.authorize(True)
        r.tick_ms = 10
        took = r.run_until(lambda: r.ch.contactor, 3000)
        self.assertTrue(0 <= took < 3000)


class StateEvents(unittest.TestCase):
    def test_state_events_record_new_and_old(self):
        r = Rig()
        r.plug("B")
        self.assertEqual(r.events_of(EV_STATE)[-1][2:], (STATE_B1, STATE_A))
        r.ch.authorize(True)
        r.step(1)
        self.assertEqual(r.events_of(EV_STATE)[-1][2:], (STATE_B2, STATE_B1))

    def test_fault_state_f_reported(self):
        r = Rig()
        r.charging()
        r.leak = True
        r.step(1)
        self.assertEqual(r.ch.state, STATE_F)
        self.assertEqual(r.ch.duty_pm, 0)


class UnplugOrder(unittest.TestCase):
    def test_plug_leaving_the_socket_first_does_not_flip_the_offer(self):
        # The PP contact opens a moment before the pilot reads A: C2 goes straight to A.
        r = Rig()
        r.charging()
        r.pp_ohms = 100000
        r.step(1)
        self.assertEqual(r.ch.state, STATE_C2)
        self.assertTrue(r.ch.offered_ma > 0)
        r.ev = "A"
        r.step(2)
        self.assertEqual(r.events_of(EV_STATE)[-1][2:], (STATE_A, STATE_C2))

    def test_a_new_plug_does_not_inherit_the_last_cable_rating(self):
        r = Rig()
        r.charging()
        r.ev = "A"
        r.step(3)
        r.pp_ohms = 100000               # a cable without coding
        r.ev = "B"
        r.ch.authorize(True)
        r.step(3)
        self.assertEqual(r.ch.offered_ma, 0)


class ConfigChangeWhileCharging(unittest.TestCase):
    def test_new_pilot_confirm_n_keeps_the_confirmed_state_and_the_contactor(self):
        # A config change is not a pilot change: the EV stays in C2 and the contactor
        # must not open under load while the new filter re-reads the level.
        r = Rig()
        r.charging()
        r.cfg.set("pilot_confirm_n", 3)
        r.ch.reload_config()
        r.run_ms(2000)
        self.assertTrue(r.ch.contactor)
        self.assertEqual(r.ch.state, STATE_C2)
        self.assertEqual(len(r.events_of(EV_CONTACTOR)), 1)
        # ...and the new count applies: an unplug now takes three readings.
        r.ev = "A"
        r.step(2)
        self.assertTrue(r.ch.contactor)
        r.step(1)
        self.assertFalse(r.ch.contactor)

# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
import unittest

from firmware import pilot
from firmware.pilot import (
    CURRENT_DIGITAL, DIODE_FAULT, PILOT_A, PILOT_B, PILOT_C, PILOT_D, PILOT_E, PILOT_F,
    PILOT_FAULT, PILOT_HOLD, PP_ERROR, PP_NO_CABLE, DutyError, PilotFilter, classify,
    current_for_duty, duty_for_current, pp_rating_ma)


class ClassifyTheStandardStates(unittest.TestCase):
    # Ideal levels from the Annex A circuit (R1 1k, R2 2.74k, R3 1.3k / 270 ohm, 0.7 V diode).
    def test_steady_output_reads_a_b_c_d(self):
        self.assertEqual(classify(12000, 12000, False), PILOT_A)
        self.assertEqual(classify(8980, 8980, False), PILOT_B)
        self.assertEqual(classify(6000, 6000, False), PILOT_C)
        self.assertEqual(classify(2930, 2930, False), PILOT_D)

    def test_pwm_with_diode_reads_a_b_c_d(self):
        self.assertEqual(classify(12000, -12000, True), PILOT_A)
        self.assertEqual(classify(8980, -12000, True), PILOT_B)
        self.assertEqual(classify(6000, -12000, True), PILOT_C)
        self.assertEqual(classify(2930, -12000, True), PILOT_D)

    def test_evse_driving_minus_12_reads_f(self):
        self.assertEqual(classify(-12000, -12000, False), PILOT_F)
        self.assertEqual(classify(-11000, -11000, False), PILOT_F)
        self.assertEqual(classify(-13000, -13000, False), PILOT_F)

    def test_band_edges(self):
        self.assertEqual(classify(13000, 13000, False), PILOT_A)
        self.assertEqual(classify(11000, 11000, False), PILOT_A)
        self.assertEqual(classify(10000, 10000, False), PILOT_B)
        self.assertEqual(classify(8000, 8000, False), PILOT_B)
        self.assertEqual(classify(7000, 7000, False), PILOT_C)
        self.assertEqual(classify(5000, 5000, False), PILOT_C)
        self.assertEqual(classify(4000, 4000, False), PILOT_D)
        self.assertEqual(classify(2000, 2000, False), PILOT_D)
        self.assertEqual(classify(1999, 1999, False), PILOT_E)

    def test_gaps_hold_the_previous_state(self):
        for mv in (10001, 10500, 10999, 7001, 7500, 7999, 4001, 4500, 4999):
            self.assertEqual(classify(mv, mv, False), PILOT_HOLD, mv)
            self.assertEqual(classify(mv, -12000, True), PILOT_HOLD, mv)

    def test_over_13_volts_is_a_pilot_fault(self):
        self.assertEqual(classify(13001, 13001, False), PILOT_FAULT)
        self.assertEqual(classify(14000, -12000, True), PILOT_FAULT)

    def test_negative_half_between_minus_10_and_minus_2_is_a_pilot_fault(self):
        self.assertEqual(classify(9000, -6000, True), PILOT_FAULT)
        self.assertEqual(classify(6000, -10000, True), PILOT_FAULT)
        self.assertEqual(classify(6000, -2000, True), PILOT_FAULT)
        self.assertEqual(classify(-5000, -5000, False), PILOT_FAULT)

    def test_below_minus_13_volts_is_a_pilot_fault(self):
        self.assertEqual(classify(-14000, -14000, False), PILOT_FAULT)


class ShortAndDiode(unittest.TestCase):
    def test_cp_shorted_to_pe_reads_e(self):
        self.assertEqual(classify(0, 0, False), PILOT_E)
        self.assertEqual(classify(0, 0, True), PILOT_E)
        self.assertEqual(classify(1500, -9000, True), PILOT_E)
        self.assertEqual(classify(-1000, -1000, False), PILOT_E)

    def test_low_near_zero_with_clean_negative_half_is_not_e(self):
        self.assertEqual(classify(0, -12000, True), PILOT_FAULT)

    def test_missing_diode_with_pwm_is_a_diode_fault(self):
        # Without the diode the negative half is mirrored: +9 / -9 V.
        self.assertEqual(classify(9000, -9000, True), DIODE_FAULT)
        self.assertEqual(classify(6000, -6000, True), DIODE_FAULT)
        self.assertEqual(classify(6000, -4800, True), DIODE_FAULT)   # |sum| = 1.2 V
        self.assertEqual(classify(3000, -3000, True), DIODE_FAULT)

    def test_diode_check_needs_pwm(self):
        # Steady +12 V: low equals high, which says nothing about the diode.
        self.assertEqual(classify(9000, 9000, False), PILOT_B)
        self.assertEqual(classify(6000, -6000, False), PILOT_FAULT)

    def test_asymmetry_above_1_2_volts_is_no_diode_fault(self):
        self.assertEqual(classify(6000, -4700, True), PILOT_FAULT)   # and -4.7 V is a fault
        self.assertEqual(classify(9000, -11000, True), PILOT_B)


class FilterConfirmsLevels(unittest.TestCase):
    def test_nothing_confirmed_at_start(self):
        f = PilotFilter(2)
        self.assertEqual(f.level, PILOT_HOLD)
        self.assertEqual(f.update(PILOT_A), PILOT_HOLD)
        self.assertEqual(f.update(PILOT_A), PILOT_A)

    def test_two_equal_readings_accept_a_new_level(self):
        f = PilotFilter(2)
        f.update(PILOT_B)
        f.update(PILOT_B)
        self.assertEqual(f.update(PILOT_C), PILOT_B)
        self.assertEqual(f.update(PILOT_C), PILOT_C)

    def test_alternating_readings_never_confirm(self):
        f = PilotFilter(2)
        f.update(PILOT_B)
        f.update(PILOT_B)
        for _ in range(5):
            self.assertEqual(f.update(PILOT_C), PILOT_B)
            self.assertEqual(f.update(PILOT_A), PILOT_B)

    def test_gap_reading_breaks_a_run_but_keeps_the_level(self):
        f = PilotFilter(2)
        f.update(PILOT_B)
        f.update(PILOT_B)
        f.update(PILOT_C)
        self.assertEqual(f.update(PILOT_HOLD), PILOT_B)
        self.assertEqual(f.update(PILOT_C), PILOT_B)
        self.assertEqual(f.update(PILOT_C), PILOT_C)

    def test_confirm_n_is_configurable(self):
        f = PilotFilter(3)
        f.update(PILOT_A)
        f.update(PILOT_A)
        self.assertEqual(f.level, PILOT_HOLD)
        self.assertEqual(f.update(PILOT_A), PILOT_A)
        f1 = PilotFilter(1)
        self.assertEqual(f1.update(PILOT_C), PILOT_C)

    def test_reset_forgets(self):
        f = PilotFilter(2)
        f.update(PILOT_C)
        f.update(PILOT_C)
        f.reset()
        self.assertEqual(f.level, PILOT_HOLD)

    def test_bad_confirm_n(self):
        self.assertRaises(ValueError, PilotFilter, 0)


class DutyForCurrent(unittest.TestCase):
    def test_examples_of_the_standard(self):
        # 6 A 10 %, 10 A 16.7 %, 16 A 26.7 %, 32 A 53.3 %, 51 A 85 %, 63 A 89.2 %, 80 A 96 %
        self.assertEqual(duty_for_current(6000), 100)
        self.assertEqual(duty_for_current(10000), 166)
        self.assertEqual(duty_for_current(16000), 266)
        self.assertEqual(duty_for_current(32000), 533)
        self.assertEqual(duty_for_current(51000), 850)
        self.assertEqual(duty_for_current(63000), 892)
        self.assertEqual(duty_for_current(80000), 960)

    def test_rounds_down_never_offering_more(self):
        for ma in (6059, 13337, 25000, 50999, 52000, 52749, 52750, 70123, 79999):
            self.assertTrue(current_for_duty(duty_for_current(ma)) <= ma, ma)

    def test_the_gap_between_the_two_formulas_offers_51_amps(self):
        self.assertEqual(duty_for_current(51100), 850)
        self.assertEqual(duty_for_current(52749), 850)
        self.assertEqual(duty_for_current(52750), 851)

    def test_below_6_amps_or_above_80_is_refused(self):
        self.assertRaises(DutyError, duty_for_current, 5999)
        self.assertRaises(DutyError, duty_for_current, 0)
        self.assertRaises(DutyError, duty_for_current, 80001)
        self.assertTrue(issubclass(DutyError, ValueError))


class CurrentForDuty(unittest.TestCase):
    def test_table(self):
        self.assertEqual(current_for_duty(80), 6000)    # 8 %
        self.assertEqual(current_for_duty(100), 6000)   # 10 %
        self.assertEqual(current_for_duty(267), 16020)
        self.assertEqual(current_for_duty(533), 31980)
        self.assertEqual(current_for_duty(850), 51000)
        self.assertEqual(current_for_duty(851), 52750)
        self.assertEqual(current_for_duty(892), 63000)
        self.assertEqual(current_for_duty(960), 80000)

    def test_steady_levels_offer_nothing(self):
        self.assertEqual(current_for_duty(1000), 0)
        self.assertEqual(current_for_duty(0), 0)

    def test_5_percent_asks_for_digital_communication(self):
        for d in (30, 50, 70):
            self.assertEqual(current_for_duty(d), CURRENT_DIGITAL)

    def test_error_duties(self):
        for d in (1, 29, 71, 79, 961, 999, -1, 1001):
            self.assertRaises(DutyError, current_for_duty, d)

    def test_round_trip_on_every_charging_duty(self):
        for d in range(100, 961):
            self.assertEqual(duty_for_current(current_for_duty(d)), d)


class ProximityCableRating(unittest.TestCase):
    def test_type_2_coding(self):
        self.assertEqual(pp_rating_ma(100), 63000)
        self.assertEqual(pp_rating_ma(220), 32000)
        self.assertEqual(pp_rating_ma(680), 20000)
        self.assertEqual(pp_rating_ma(1500), 13000)

    def test_edges(self):
        self.assertEqual(pp_rating_ma(74), PP_ERROR)
        self.assertEqual(pp_rating_ma(75), 63000)
        self.assertEqual(pp_rating_ma(149), 63000)
        self.assertEqual(pp_rating_ma(150), 32000)
        self.assertEqual(pp_rating_ma(330), 20000)
        self.assertEqual(pp_rating_ma(1000), 13000)
        self.assertEqual(pp_rating_ma(2200), 13000)
        self.assertEqual(pp_rating_ma(2201), PP_NO_CABLE)
        self.assertEqual(pp_rating_ma(100000), PP_NO_CABLE)

    def test_short_is_an_error(self):
        self.assertEqual(pp_rating_ma(0), PP_ERROR)
        self.assertTrue(PP_ERROR < 0 and PP_NO_CABLE == 0)


class NamesAreComplete(unittest.TestCase):
    def test_level_names(self):
        self.assertEqual(len(pilot.LEVEL_NAMES), PILOT_HOLD + 1)
        self.assertEqual(pilot.LEVEL_NAMES[PILOT_E], "E")
        self.assertEqual(pilot.LEVEL_NAMES[PILOT_F], "F")


class FilterPending(unittest.TestCase):
    def test_pending_until_the_confirming_reading(self):
        from firmware.pilot import PILOT_A, PILOT_B, PilotFilter
        f = PilotFilter(2)
        f.update(PILOT_A)
        f.update(PILOT_A)
        self.assertFalse(f.pending())
        f.update(PILOT_B)
        self.assertTrue(f.pending())
        self.assertEqual(f.update(PILOT_B), PILOT_B)
        self.assertFalse(f.pending())

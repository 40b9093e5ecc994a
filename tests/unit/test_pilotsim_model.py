"""The simulator's CP/PP circuit: levels per state and per fault (IEC 61851-1 Annex A),
front-end quantisation and noise, the EV as a load. Runs on CPython and the unix port."""
import unittest

from firmware import pilot
from tools.pilotsim import model
from tools.pilotsim.model import (CABLE_OHMS, EVLoad, EnergyCounter, FrontEnd, MeterRefresh,
                                  PilotModel, S2_C, S2_D, S2_OPEN, levels, offered_ma)


def _ev(s2=S2_OPEN, **faults):
    m = PilotModel()
    m.plugged = True
    m.s2 = s2
    for k in faults:
        setattr(m, k, faults[k])
    m.update()
    return m


class IdealLevels(unittest.TestCase):
    # Ideal high levels with a 0.7 V diode: A 12 V, B 8.98 V, C 6.00 V, D 2.93 V.
    def test_state_a_no_ev(self):
        m = PilotModel()
        self.assertEqual(m.high_mv, 12000)
        self.assertEqual(m.low_mv, -12000)
        self.assertEqual(m.ev_state(), "A")

    def test_state_b(self):
        m = _ev()
        self.assertTrue(8970 <= m.high_mv <= 8990)
        self.assertEqual(m.low_mv, -12000)

    def test_state_c(self):
        m = _ev(S2_C)
        self.assertTrue(5990 <= m.high_mv <= 6010)
        self.assertEqual(m.low_mv, -12000)

    def test_state_d(self):
        m = _ev(S2_D)
        self.assertTrue(2920 <= m.high_mv <= 2940)

    def test_load_ohms(self):
        self.assertEqual(model.ev_load_ohms(S2_OPEN), 2740)
        self.assertEqual(model.ev_load_ohms(S2_C), 882)
        self.assertEqual(model.ev_load_ohms(S2_D), 246)

    def test_steady_output_holds_one_level(self):
        m = _ev(S2_C)
        self.assertEqual(levels(1000, m), (m.high_mv, m.high_mv))
        self.assertEqual(levels(0, m), (-12000, -12000))
        self.assertEqual(levels(267, m), (m.high_mv, -12000))


class FaultLevels(unittest.TestCase):
    def test_diode_short_mirrors_the_negative_half(self):
        m = _ev(diode_short=True)
        self.assertTrue(8700 <= m.high_mv <= 8850)
        self.assertEqual(m.low_mv, -m.high_mv)
        self.assertEqual(pilot.classify(m.high_mv, m.low_mv, True), pilot.DIODE_FAULT)

    def test_cp_short_to_pe_is_state_e(self):
        m = _ev(S2_C, cp_short_pe=True)
        self.assertEqual((m.high_mv, m.low_mv), (0, 0))
        self.assertEqual(pilot.classify(0, 0, True), pilot.PILOT_E)

    def test_open_cp_looks_like_no_ev(self):
        m = _ev(S2_C, cp_open=True)
        self.assertEqual((m.high_mv, m.low_mv), (12000, -12000))
        self.assertEqual(m.pp_ohms, CABLE_OHMS[32])  # the cable is still in

    def test_pe_loss_floats_cp_and_pp(self):
        m = _ev(S2_C, pe_loss=True)
        self.assertEqual((m.high_mv, m.low_mv), (12000, -12000))
        self.assertEqual(m.pp_ohms, model.PP_OPEN)

    def test_unplugged_pp_open_plugged_pp_cable(self):
        m = PilotModel()
        self.assertEqual(m.pp_ohms, model.PP_OPEN)
        m.plugged = True
        m.cable_ohms = CABLE_OHMS[20]
        m.update()
        self.assertEqual(m.pp_ohms, 680)


class FrontEndReadings(unittest.TestCase):
    def test_every_state_classifies_through_the_front_end(self):
        fe = FrontEnd(seed=7, noise_mv=5)
        cases = ((PilotModel(), pilot.PILOT_A), (_ev(), pilot.PILOT_B),
                 (_ev(S2_C), pilot.PILOT_C), (_ev(S2_D), pilot.PILOT_D),
                 (_ev(cp_short_pe=True), pilot.PILOT_E))
        for m, want in cases:
            for _ in range(200):
                hi = fe.measure_cp(m.high_mv)
                lo = fe.measure_cp(m.low_mv)
                self.assertEqual(pilot.classify(hi, lo, True), want)

    def test_steady_minus_12_reads_as_f(self):
        fe = FrontEnd(seed=3)
        for _ in range(100):
            v = fe.measure_cp(-12000)
            self.assertEqual(pilot.classify(v, v, False), pilot.PILOT_F)

    def test_quantisation_and_noise_bounds(self):
        fe = FrontEnd(seed=1, noise_mv=0)
        self.assertTrue(abs(fe.measure_cp(12000) - 12000) <= 12)
        self.assertTrue(abs(fe.measure_cp(-12000) + 12000) <= 12)
        noisy = FrontEnd(seed=1, noise_mv=5)
        seen = set()
        for _ in range(300):
            v = noisy.measure_cp(6000)
            seen.add(v)
            self.assertTrue(abs(v - 6000) <= 5 * 11 + 12)
        self.assertTrue(len(seen) > 3)   # noise is there

    def test_seeded_noise_repeats(self):
        a = FrontEnd(seed=42, noise_mv=4)
        b = FrontEnd(seed=42, noise_mv=4)
        self.assertEqual([a.measure_cp(9000) for _ in range(50)],
                         [b.measure_cp(9000) for _ in range(50)])

    def test_clamps_outside_the_linear_range(self):
        fe = FrontEnd(noise_mv=0)
        self.assertEqual(fe.adc(3000), 2450)
        self.assertEqual(fe.adc(50), 150)

    def test_below_the_adc_floor_reads_as_the_nominal_negative_level(self):
        # A front end like the reference board's (0 V -> 1300 mV, +12 V -> 2500 mV) puts
        # -12 V at 100 mV, under the ESP32's 150 mV floor: the board driver can only say
        # "below -6 V" and reports the nominal -12 V (drivers/pilot.py), not the floor.
        fe = FrontEnd(noise_mv=0, gain_num=1, gain_den=10)
        self.assertEqual(fe.measure_cp(-12000), -12000)
        self.assertEqual(fe.measure_cp(-11800), -12000)
        lo = fe.measure_cp(-8790)         # a shorted diode's negative half is above it
        self.assertTrue(abs(lo + 8790) <= 20)
        self.assertEqual(pilot.classify(fe.measure_cp(8790), lo, True), pilot.DIODE_FAULT)
        # The default front end keeps -12 V inside the linear range.
        self.assertTrue(abs(FrontEnd(noise_mv=0).measure_cp(-12000) + 12000) <= 12)

    def test_pp_ratings_survive_the_front_end(self):
        fe = FrontEnd(seed=5, noise_mv=3)
        for amps in CABLE_OHMS:
            for _ in range(50):
                self.assertEqual(pilot.pp_rating_ma(fe.measure_pp(CABLE_OHMS[amps])),
                                 amps * 1000)
        self.assertEqual(fe.measure_pp(model.PP_OPEN), model.PP_OPEN)

    def test_bad_arguments(self):
        self.assertRaises(ValueError, FrontEnd, noise_mv=-1)
        self.assertRaises(ValueError, FrontEnd, gain_den=0)
        self.assertRaises(ValueError, FrontEnd, adc_bits=20)


class EVAsLoad(unittest.TestCase):
    def test_offered_current_as_the_ev_reads_it(self):
        self.assertEqual(offered_ma(1000), 0)
        self.assertEqual(offered_ma(0), 0)
        self.assertEqual(offered_ma(50), 0)      # digital communication
        self.assertEqual(offered_ma(100), 6000)
        self.assertEqual(offered_ma(266), 15960)
        self.assertEqual(offered_ma(900), 65000)

    def test_draws_min_of_wanted_and_offered_only_when_closed(self):
        ev = EVLoad(phases=3, wanted_ma=32000)
        self.assertEqual(ev.update(0, True, 266, False), 0)
        self.assertEqual(ev.update(10, True, 266, True), 15960)
        self.assertEqual(ev.update(20, False, 266, True), 0)
        ev.wanted_ma = 10000
        self.assertEqual(ev.update(30, True, 266, True), 10000)

    def test_keeps_drawing_for_stop_ms_after_pwm_off(self):
        ev = EVLoad(wanted_ma=16000, stop_ms=1000)
        ev.update(0, True, 266, True)
        self.assertEqual(ev.update(500, True, 1000, True), 15960)
        self.assertEqual(ev.update(1000, True, 1000, True), 0)

    def test_overdraw_ignores_the_offer(self):
        ev = EVLoad(wanted_ma=20000)
        ev.overdraw = True
        self.assertEqual(ev.update(0, True, 166, True), 20000)

    def test_energy_keeps_the_remainder(self):
        e = EnergyCounter()
        for _ in range(3600):
            e.add(11000, 1000)           # 11 kW for an hour, in 1 s steps
        self.assertEqual(e.wh, 11000)
        e2 = EnergyCounter()
        for _ in range(36000):
            e2.add(100, 100)             # 100 W for an hour in 100 ms steps
        self.assertEqual(e2.wh, 100)


class MeterRegistersFollowTheEV(unittest.TestCase):
    def test_current_changes_at_once_energy_at_most_every_period(self):
        r = MeterRefresh(period_ms=500)
        self.assertTrue(r.due(0, (0, 100)))          # nothing written yet
        r.written(0, (0, 100))
        self.assertFalse(r.due(10, (0, 100)))        # unchanged
        self.assertTrue(r.due(20, (16000, 100)))     # the current changed: at once
        r.written(20, (16000, 100))
        self.assertFalse(r.due(300, (16000, 101)))   # only the energy moved, too soon
        self.assertTrue(r.due(520, (16000, 101)))
        r.written(520, (16000, 101))
        self.assertFalse(r.due(530, (16000, 101)))

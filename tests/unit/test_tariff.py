# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
import unittest

from firmware.config import Config
from firmware.tariff import Tariff, TariffError


def _tariff(**kw):
    base = {"tariff_id": "t1", "currency": "EUR"}
    base.update(kw)
    return Tariff(**base)


class PriceComponents(unittest.TestCase):
    def test_free_tariff_costs_nothing(self):
        total, br = Tariff().cost(50000, 7200, 3600)
        self.assertEqual(total, 0)
        self.assertEqual(br, {"energy_minor": 0, "charging_minor": 0, "idle_minor": 0,
                              "fee_minor": 0, "idle_billed_s": 3600})

    def test_energy_rounds_half_up_once(self):
        t = _tariff(price_per_kwh_minor=30)
        self.assertEqual(t.cost(12345, 0, 0)[0], 370)    # 370.35
        self.assertEqual(t.cost(12350, 0, 0)[0], 371)    # 370.5 -> up
        self.assertEqual(t.cost(16, 0, 0)[0], 0)         # 0.48
        self.assertEqual(t.cost(17, 0, 0)[0], 1)         # 0.51

    def test_charging_time_is_pro_rata_per_second(self):
        t = _tariff(price_per_min_charging_minor=10)
        self.assertEqual(t.cost(0, 90, 0)[0], 15)
        self.assertEqual(t.cost(0, 3, 0)[0], 1)          # 0.5 -> 1
        self.assertEqual(t.cost(0, 2, 0)[0], 0)          # 0.33

    def test_idle_is_billed_after_the_grace_period_only(self):
        t = _tariff(price_per_min_idle_minor=20, idle_grace_min=10)
        total, br = t.cost(0, 0, 25 * 60)
        self.assertEqual((total, br["idle_billed_s"]), (300, 15 * 60))
        self.assertEqual(t.cost(0, 0, 9 * 60)[0], 0)
        self.assertEqual(t.cost(0, 0, 10 * 60)[0], 0)
        self.assertEqual(t.cost(0, 0, 10 * 60 + 90)[0], 30)

    def test_session_fee_needs_a_charge(self):
        t = _tariff(session_fee_minor=99)
        self.assertEqual(t.cost(0, 0, 600)[0], 0)
        self.assertEqual(t.cost(1, 0, 0)[0], 99)
        self.assertEqual(t.cost(0, 1, 0)[0], 99)

    def test_breakdown_adds_up_to_the_total(self):
        t = _tariff(price_per_kwh_minor=33, price_per_min_charging_minor=7,
                    price_per_min_idle_minor=13, idle_grace_min=3, session_fee_minor=50)
        for e, c, i in ((1, 1, 1), (9999, 3333, 777), (123457, 86399, 181), (0, 0, 0)):
            total, br = t.cost(e, c, i)
            self.assertEqual(total, br["energy_minor"] + br["charging_minor"]
                             + br["idle_minor"] + br["fee_minor"])
            self.assertTrue(isinstance(total, int))

    def test_large_sessions_stay_exact(self):
        t = _tariff(price_per_kwh_minor=100000)
        self.assertEqual(t.cost(10 ** 9, 0, 0)[0], 10 ** 11)   # 1 GWh at 1000.00/kWh

    def test_unknown_energy_prices_as_zero(self):
        self.assertEqual(_tariff(price_per_kwh_minor=40).cost(None, 0, 0)[0], 0)


class Inputs(unittest.TestCase):
    def test_bad_quantities_are_refused(self):
        t = _tariff(price_per_kwh_minor=1)
        for args in ((-1, 0, 0), (0, -5, 0), (0, 0, -1), (1.5, 0, 0), (True, 0, 0), ("3", 0, 0)):
            self.assertRaises(TariffError, t.cost, *args)
        self.assertTrue(issubclass(TariffError, ValueError))

    def test_bad_prices_are_refused(self):
        self.assertRaises(TariffError, Tariff, "", "EUR")
        self.assertRaises(TariffError, Tariff, "t", "EURO")
        self.assertRaises(TariffError, Tariff, "t", "EUR", -1)
        self.assertRaises(TariffError, Tariff, "t", "EUR", 0, 0.5)

    def test_from_config_and_snapshot_round_trip(self):
        cfg = Config({"tariff_id": "night", "currency": "CHF", "price_per_kwh_minor": 25,
                      "price_per_min_charging_minor": 2, "price_per_min_idle_minor": 40,
                      "idle_grace_min": 15, "session_fee_minor": 100})
        t = Tariff.from_config(cfg)
        self.assertEqual((t.tariff_id, t.currency), ("night", "CHF"))
        t2 = Tariff.from_dict(t.to_dict())
        self.assertEqual(t2.to_dict(), t.to_dict())
        self.assertEqual(t2.cost(20000, 3600, 1800), t.cost(20000, 3600, 1800))
        self.assertEqual(t.cost(20000, 3600, 1800)[0], 500 + 120 + 600 + 100)
        self.assertRaises(TariffError, Tariff.from_dict, {"tariff_id": "x"})

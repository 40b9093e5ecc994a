# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
# The guards on settings: the hardware's rated current (board file) binds every limit, keys
# that say what the hardware is do not change under load, booleans are booleans, and
# incoherent values are refused (or warned about) before a reboot makes them real.
import unittest

from drivers.boardfile import BoardFileError, validate
from firmware.charger import Charger, ChargerError
from firmware.config import (
    Config, ConfigError, is_hardware, suggest, unknown_key, validate as check, warnings)
from firmware.station import TICK_MS, Station
from firmware.storage import Store
from tools.powercut_fs import PowerCutFs
from tools.pilotsim.model import S2_C
from tools.pilotsim.simboard import SimBoard


def _reference():
    from test_boardfile import reference
    return reference()


class Rated(SimBoard):
    rated_current_ma = 16000


def _station(board=None, config=None):
    return Station(board or Rated(), config=config, store=Store("/data", PowerCutFs()))


def _charge(st):
    m = st.board.model
    m.plugged = True
    m.s2 = S2_C
    m.update()
    for _ in range(3000 // TICK_MS):
        st.step()
        st.board.sleep_ms(TICK_MS)


class Ceiling(unittest.TestCase):
    def test_the_board_file_carries_the_rating(self):
        b = validate(_reference())
        self.assertEqual(b["rated_current_ma"], 32000)
        raw = _reference()
        raw["rated_current_ma"] = 90000
        with self.assertRaises(BoardFileError):
            validate(raw)
        raw["rated_current_ma"] = True
        with self.assertRaises(BoardFileError):
            validate(raw)

    def test_the_charger_never_offers_more_than_the_ceiling(self):
        c = Charger(Config({"max_current_ma": 80000}))
        c.set_ceiling(16000)
        self.assertEqual(c.effective_limit_ma(), 16000)
        c.set_backend_limit(40000)
        self.assertEqual(c.effective_limit_ma(), 16000)
        c.set_comms_fallback(63000)
        self.assertEqual(c.effective_limit_ma(), 16000)
        with self.assertRaises(ChargerError):
            c.set_ceiling(True)

    def test_a_stored_80_a_offers_only_the_rating(self):
        st = _station(config={"max_current_ma": 80000})
        _charge(st)
        self.assertTrue(st.charger.contactor)
        self.assertEqual(st.charger.offered_ma, 16000)

    def test_set_config_refuses_more_than_the_rating_from_any_side(self):
        st = _station()
        code, why = st.cmd_set_config({"max_current_ma": 32000})
        self.assertEqual(code, "PropertyConstraintViolation")
        self.assertIn("max_current_ma: 32000 above the hardware rating 16000", why)
        code, why = st.cmd_set_config({"comms_fallback_ma": 20000})
        self.assertIn("comms_fallback_ma: 20000 above the hardware rating", why)
        self.assertIsNone(st.cmd_set_config({"max_current_ma": 16000}))
        self.assertEqual(st.cfg["max_current_ma"], 16000)


class Hardware(unittest.TestCase):
    def test_socket_and_phases_do_not_change_under_load(self):
        self.assertTrue(is_hardware("socket_outlet") and is_hardware("phases"))
        self.assertFalse(is_hardware("max_current_ma"))
        st = _station()
        _charge(st)
        self.assertTrue(st.charger.contactor)
        for change in ({"socket_outlet": False}, {"phases": 1},
                       {"phases": 1, "max_current_ma": 10000}):
            code, why = st.cmd_set_config(change)
            self.assertEqual(code, "BUSY")
            self.assertIn("not while the contactor is closed", why)
        self.assertEqual((st.cfg["socket_outlet"], st.cfg["phases"],
                          st.cfg["max_current_ma"]), (True, 3, 32000))
        # A change that does not touch them is fine, and so is the same value.
        self.assertIsNone(st.cmd_set_config({"max_current_ma": 10000, "phases": 3}))


class Values(unittest.TestCase):
    def test_booleans_are_booleans(self):
        for v in ("false", "False", 0, 1, None, "true"):
            with self.assertRaises(ConfigError):
                check("socket_outlet", v)
        self.assertIs(check("socket_outlet", False), False)

    def test_wifi_passwords_wpa2_can_use(self):
        for bad in ("short", "x" * 7, "x" * 65, "g" * 64):
            with self.assertRaises(ConfigError):
                check("wifi_password", bad)
        for good in ("", "x" * 8, "x" * 63, "0123456789abcdefABCDEF" + "0" * 42):
            self.assertEqual(check("wifi_password", good), good)

    def test_host_names(self):
        for bad in ("my host", "mqtt://broker", "broker/x", "a\tb"):
            with self.assertRaises(ConfigError):
                check("mqtt_host", bad)
            with self.assertRaises(ConfigError):
                check("ntp_server", bad)
        for good in ("broker.example.com", "192.0.2.7", "fe80::1", "my-host_1", ""):
            self.assertEqual(check("mqtt_host", good), good)

    def test_warnings_for_settings_that_will_not_work_together(self):
        self.assertEqual(warnings(Config()), [])
        w = warnings(Config({"mqtt_tls": True, "mqtt_host": "b.example",
                             "mqtt_cert_file": "c.der"}))
        text = " ".join(w)
        self.assertIn("mqtt_tls is on without mqtt_ca_file", text)
        self.assertIn("mqtt_cert_file and mqtt_key_file go together", text)
        self.assertEqual(warnings(Config({"wifi_password": "x" * 8})),
                         ["wifi_password is set but wifi_ssid is empty"])

    def test_unknown_keys_get_the_nearest(self):
        self.assertEqual(suggest("max_curent_ma", ("max_current_ma", "phases")),
                         "max_current_ma")
        self.assertIsNone(suggest("zzzzzzzz", ("max_current_ma", "phases")))
        self.assertIn("did you mean meter_baud?", unknown_key("meter_baudrate"))
        with self.assertRaises(ConfigError):
            check("max_curent_ma", 1)


if __name__ == "__main__":
    unittest.main()

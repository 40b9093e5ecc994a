# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
# The command target's result codes (firmware/station_cmds.py) are firmware/commands.py's:
# kept apart so that an OCPP station need not import the MQTT command set.
import unittest

from firmware import commands, station_cmds


class ResultCodes(unittest.TestCase):
    def test_every_code_is_the_one_the_command_set_names(self):
        self.assertTrue(len(station_cmds.CODES) >= 12)
        for name in station_cmds.CODES:
            self.assertEqual(getattr(station_cmds, name), getattr(commands, name), name)

    def test_the_station_codes_are_error_codes_of_the_command_set(self):
        for name in station_cmds.CODES:
            if name != "STOP_SKEW_S":
                self.assertIn(getattr(station_cmds, name),
                              commands.ERROR_CODES + (commands.OTHER_SESSION,))


if __name__ == "__main__":
    unittest.main()

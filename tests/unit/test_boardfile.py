# Board files: the reference board validates; every ESP32 wiring mistake gets a clear error
# naming the field. Runs on CPython and the unix port.
import json
import unittest

from drivers.boardfile import BoardFileError, load, loads, validate


def _root():
    parts = __file__.split("/")
    return "." if len(parts) <= 3 else "/".join(parts[:-3])


REFERENCE = _root() + "/boards/reference.json"


def reference():
    with open(REFERENCE) as f:
        return json.load(f)


def error_of(raw):
    try:
        validate(raw)
    except BoardFileError as e:
        return e.args[0]
    raise AssertionError("board file accepted")


class ReferenceBoard(unittest.TestCase):
    def test_validates_with_every_section(self):
        b = load(REFERENCE)
        self.assertEqual(b["name"], "cp-ref-1")
        self.assertEqual(b["pilot"]["adc_pin"], 36)
        for section in ("rcd", "lock", "temperature", "led", "rs485", "service"):
            self.assertIsNotNone(b[section])

    def test_defaults_fill_in_and_optional_sections_may_be_absent(self):
        b = validate({"pilot": {"pwm_pin": 25, "adc_pin": 36}, "pp": {"adc_pin": 39},
                      "contactor": {"pin": 26}})
        self.assertEqual(b["pilot"]["adc_mv_at_0v"], 1300)
        self.assertEqual(b["contactor"]["active_high"], True)
        self.assertIsNone(b["contactor"]["mirror_pin"])
        self.assertIsNone(b["lock"])
        self.assertEqual(b["watchdog_ms"], 8000)

    def test_error_is_a_value_error(self):
        self.assertTrue(issubclass(BoardFileError, ValueError))


class WiringMistakes(unittest.TestCase):
    def test_adc2_pin_for_the_pilot(self):
        raw = reference()
        raw["pilot"]["adc_pin"] = 4
        raw["rs485"]["de_pin"] = 5
        msg = error_of(raw)
        self.assertIn("pilot.adc_pin", msg)
        self.assertIn("ADC2", msg)

    def test_adc2_pin_for_pp(self):
        raw = reference()
        raw["pp"]["adc_pin"] = 15
        self.assertIn("pp.adc_pin", error_of(raw))
        self.assertIn("ADC2", error_of(raw))

    def test_pin_without_adc(self):
        raw = reference()
        raw["temperature"]["adc_pin"] = 19
        self.assertIn("has no ADC", error_of(raw))

    def test_input_only_pin_as_output(self):
        raw = reference()
        raw["contactor"]["pin"] = 35
        raw["contactor"]["mirror_pin"] = None
        msg = error_of(raw)
        self.assertIn("contactor.pin", msg)
        self.assertIn("input-only", msg)

    def test_pin_used_twice(self):
        raw = reference()
        raw["led"]["red_pin"] = 26   # the contactor's
        msg = error_of(raw)
        self.assertIn("GPIO 26", msg)
        self.assertIn("already used", msg)

    def test_missing_required_pin_and_section(self):
        raw = reference()
        del raw["pilot"]["pwm_pin"]
        self.assertIn("pilot.pwm_pin: required", error_of(raw))
        raw = reference()
        del raw["contactor"]
        self.assertIn("contactor: required", error_of(raw))

    def test_wrong_types(self):
        raw = reference()
        raw["contactor"]["active_high"] = 1
        self.assertIn("expected true or false", error_of(raw))
        raw = reference()
        raw["pilot"]["pwm_pin"] = "25"
        self.assertIn("expected a GPIO number", error_of(raw))
        raw = reference()
        raw["pilot"]["pwm_pin"] = True
        self.assertIn("expected a GPIO number", error_of(raw))
        raw = reference()
        raw["lock"]["pulse_ms"] = 1000
        self.assertIn("out of range 300..600", error_of(raw))
        raw = reference()
        raw["rcd"]["fault_pull"] = "pullup"
        self.assertIn("expected one of", error_of(raw))

    def test_nonexistent_and_flash_pins(self):
        raw = reference()
        raw["led"]["red_pin"] = 24
        self.assertIn("does not exist", error_of(raw))
        raw = reference()
        raw["led"]["red_pin"] = 7
        self.assertIn("SPI flash", error_of(raw))

    def test_repl_uart_pins(self):
        # GPIO 1/3 are UART0: the ROM boot log and the REPL toggle GPIO 1 at every reset,
        # so a coil or motor there would chatter, and taking them loses the REPL.
        raw = reference()
        raw["contactor"]["pin"] = 1
        self.assertIn("contactor.pin: GPIO 1 is UART0 TX", error_of(raw))
        raw = reference()
        raw["rs485"]["rx_pin"] = 3
        self.assertIn("rs485.rx_pin: GPIO 3 is UART0 RX", error_of(raw))

    def test_uart_rx_buffer_must_exceed_the_hardware_fifo(self):
        # ESP-IDF's uart_driver_install() refuses rx buffers of 128 bytes (the FIFO) or less.
        raw = reference()
        raw["rs485"]["rxbuf"] = 128
        self.assertIn("rs485.rxbuf: 128 out of range 129..4096", error_of(raw))
        raw["rs485"]["rxbuf"] = 129
        self.assertEqual(validate(raw)["rs485"]["rxbuf"], 129)

    def test_pull_on_an_input_only_pin(self):
        raw = reference()
        raw["contactor"]["mirror_pull"] = "up"
        msg = error_of(raw)
        self.assertIn("no internal pull", msg)

    def test_unknown_fields_are_typos(self):
        raw = reference()
        raw["pilot"]["adc_pn"] = 36
        self.assertIn("pilot.adc_pn: unknown field", error_of(raw))
        raw = reference()
        raw["relay"] = {}
        self.assertIn("relay: unknown field", error_of(raw))

    def test_pp_needs_exactly_one_source(self):
        raw = reference()
        raw["pp"]["fixed_ohms"] = 220
        self.assertIn("exactly one", error_of(raw))
        raw = reference()
        raw["pp"] = {"fixed_ohms": 220}
        self.assertEqual(validate(raw)["pp"]["fixed_ohms"], 220)

    def test_calibration_points_must_differ(self):
        raw = reference()
        raw["pilot"]["adc_mv_at_12v"] = 1350
        self.assertIn("differ", error_of(raw))

    def test_not_json(self):
        self.assertRaises(BoardFileError, loads, "{pilot:")
        self.assertRaises(BoardFileError, loads, "[]")
        self.assertRaises(BoardFileError, load, "/nonexistent/board.json")

    def test_null_means_no_such_part_never_the_default(self):
        # A null polarity once read as "default true" here and as false in boot.py, which
        # drove the coil on: null is accepted only where the default is none.
        for section, key in (("contactor", "active_high"), ("pilot", "pwm_inverted"),
                             ("rcd", "fault_high"), ("lock", "pulse_ms"), ("led", "active_high"),
                             ("service", "pull")):
            raw = reference()
            raw[section][key] = None
            self.assertIn("%s.%s: null is not a value" % (section, key), error_of(raw))
        raw = reference()
        raw["watchdog_ms"] = None
        self.assertIn("watchdog_ms: null is not a value", error_of(raw))
        raw = reference()
        raw["contactor"]["pin"] = None
        self.assertIn("contactor.pin: required", error_of(raw))
        raw = reference()
        raw["contactor"]["mirror_pin"] = None        # default none: no mirror contact
        raw["lock"] = None                           # an optional section: no lock
        b = validate(raw)
        self.assertIsNone(b["contactor"]["mirror_pin"])
        self.assertIsNone(b["lock"])

    def test_every_damaged_file_is_a_board_file_error(self):
        with open(REFERENCE, "rb") as f:
            good = f.read()
        for data in (good.replace(b"cp-ref-1", b"cp-\xff-1"), good[:len(good) // 2], b"",
                     b"null", b"[]", b"\x00\x01", "[" * 5000, b"[" * 5000):
            self.assertRaises(BoardFileError, loads, data)
        self.assertEqual(loads(good)["name"], "cp-ref-1")
        path = "/tmp/boardfile-test-%d.json" % id(self)
        with open(path, "wb") as f:
            f.write(good.replace(b"cp-ref-1", b"cp-\xfe\xff-1"))
        try:
            with self.assertRaises(BoardFileError) as cm:
                load(path)
            self.assertIn("not UTF-8", cm.exception.args[0])
        finally:
            import os
            os.remove(path)

# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
# The REPL diagnostics' text: integer formatting, decoding, and the 80-column limit.
import unittest

from firmware import diagfmt as f
from firmware.charger import CONTACTOR_FAULT, LIMIT_CABLE
from firmware.events import (
    EV_CONTACTOR, EV_FAULT_CLEARED, EV_FAULT_RAISED, EV_LOCK, EV_OFFER, EV_SELFTEST, EV_STATE,
    EV_WAKEUP)
from firmware.faults import CONTACTOR_WELDED, RCD_TRIPPED
from firmware.pilot import PILOT_C, PP_ERROR, PP_NO_CABLE
from firmware.states import STATE_B2, STATE_C2


def diff(a, b):
    return a - b


class Numbers(unittest.TestCase):
    def test_volts(self):
        self.assertEqual(f.volts(8950), "+8.95 V")
        self.assertEqual(f.volts(-12000), "-12.00 V")
        self.assertEqual(f.volts(0), "0.00 V")
        self.assertEqual(f.volts(-5), "-0.01 V")
        self.assertEqual(f.volts(4), "+0.00 V")
        self.assertEqual(f.volts(None), "-")

    def test_amps_energy_and_durations(self):
        self.assertEqual(f.amps(16000), "16.0 A")
        self.assertEqual(f.amps(6050), "6.1 A")
        self.assertEqual(f.kwh(12345678), "12345.678 kWh")
        self.assertEqual(f.kwh(0), "0.000 kWh")
        self.assertEqual(f.kwh(None), "-")
        self.assertEqual(f.seconds(123), "0.1 s")
        self.assertEqual(f.seconds(599999), "600.0 s")
        self.assertEqual(f.seconds(600000), "0h10m")
        self.assertEqual(f.seconds(90061000), "1d01h")
        self.assertEqual(f.age(1000, 400, diff), "-0.6 s")
        self.assertEqual(f.age(1000, 1000, diff), "now")

    def test_pilot_output(self):
        self.assertEqual(f.output_text(1000), "steady +12 V (x1: no current offered)")
        self.assertEqual(f.output_text(0), "steady -12 V (state F: not available)")
        self.assertEqual(f.output_text(533), "PWM 53.3 % (32.0 A offered)")
        self.assertEqual(f.output_text(100), "PWM 10.0 % (6.0 A offered)")
        self.assertEqual(f.output_text(900), "PWM 90.0 % (65.0 A offered)")

    def test_pp(self):
        self.assertEqual(f.pp_text(PP_NO_CABLE), "no cable (open circuit)")
        self.assertIn("invalid", f.pp_text(PP_ERROR))
        self.assertEqual(f.pp_text(20000), "cable rated 20.0 A")
        self.assertIn("  PP-PE  open", f.pp_lines(100000, PP_NO_CABLE))


class Events(unittest.TestCase):
    def test_every_kind_is_decoded(self):
        self.assertEqual(f.event_text(EV_STATE, STATE_C2, STATE_B2), "state B2 -> C2")
        self.assertEqual(f.event_text(EV_FAULT_RAISED, RCD_TRIPPED, 0),
                         "fault raised RCD_TRIPPED")
        self.assertEqual(f.event_text(EV_FAULT_CLEARED, CONTACTOR_WELDED, 1),
                         "fault cleared CONTACTOR_WELDED (by request)")
        self.assertEqual(f.event_text(EV_CONTACTOR, 0, CONTACTOR_FAULT),
                         "contactor opened (fault)")
        self.assertEqual(f.event_text(EV_OFFER, 20000, LIMIT_CABLE),
                         "offer 20.0 A (limit: cable)")
        self.assertEqual(f.event_text(EV_OFFER, 0, LIMIT_CABLE), "offer none (limit: cable)")
        self.assertEqual(f.event_text(EV_SELFTEST, 0, 500), "RCD self-test FAILED (500 ms)")
        self.assertEqual(f.event_text(EV_WAKEUP, 1, 0), "wake-up started")
        self.assertEqual(f.event_text(EV_LOCK, 0, 0), "lock released")
        # Out-of-range numbers never raise: the REPL must not die on a bad record.
        self.assertEqual(f.event_text(EV_STATE, 99, -1), "state ?-1 -> ?99")
        self.assertEqual(f.event_text(EV_FAULT_RAISED, 28, 0), "fault raised fault 28")
        self.assertEqual(f.event_text(42, 1, 2), "?42 a=1 b=2")

    def test_event_lines(self):
        lines = f.event_lines([(100, EV_STATE, STATE_C2, STATE_B2)], 2100, diff, dropped=3)
        self.assertEqual(lines[1], "      -2.0 s  state B2 -> C2")
        self.assertIn("3 older events", lines[-1])
        self.assertIn("none recorded", f.event_lines([], 0, diff)[1])


class Width(unittest.TestCase):
    def check(self, lines):
        for line in lines:
            self.assertTrue(len(line) <= f.WIDTH, "%d: %r" % (len(line), line))
        return lines

    def test_fit_and_wrap(self):
        self.assertEqual(f.fit("x" * 80), "x" * 80)
        self.assertEqual(f.fit("x" * 81), "x" * 77 + "...")
        text = "word " * 50 + "y" * 200 + " end"
        lines = self.check(f.wrap(text, "    "))
        self.assertTrue(all(ln.startswith("    ") for ln in lines))
        self.assertEqual(" ".join(ln.strip() for ln in lines).replace(" ", ""),
                         text.replace(" ", ""))

    def test_headers_are_exactly_80_wide(self):
        self.assertEqual(len(f.header("events")), 80)
        self.assertEqual(len(f.header("x" * 200)), 80)

    def test_config_masks_and_cuts(self):
        public = {"mqtt_password": "***", "meter_custom_map": "m" * 1000,
                  "max_current_ma": 16000, "mqtt_tls": False, "wifi_password": ""}
        defaults = {"mqtt_password": "", "meter_custom_map": "", "max_current_ma": 32000,
                    "mqtt_tls": False, "wifi_password": ""}
        lines = self.check(f.config_lines(public, defaults, ("mqtt_password", "mqtt_tls")))
        text = "\n".join(lines)
        self.assertIn('* mqtt_password    = "***"  (r)', text)
        self.assertIn("* max_current_ma   = 16000", text)
        self.assertIn("  mqtt_tls         = false  (r)", text)
        self.assertIn('  wifi_password    = ""', text)
        self.assertIn("...", text)
        self.assertIn("no key matches", "\n".join(f.config_lines(public, defaults, (), "zz")))

    def test_status_and_meter_with_long_values(self):
        st = {"station_id": "s" * 64, "state": "C2", "available": True, "authorized": False,
              "paused": True, "offered_ma": 0, "limit": "paused", "contactor": False,
              "mirror_closed": True, "faults": ["RCD_TRIPPED", "CONTACTOR_WELDED",
                                                "METER_STALE", "BACKEND_OFFLINE"] * 3,
              "session": "12-345", "meter": {"power_w": 0, "import_wh": None, "stale": True},
              "link": "offline (" + "e" * 200 + ")", "temp_dc": -45,
              "config_error": "c" * 300, "last_crash": "MemoryError: " + "x" * 200}
        text = "\n".join(self.check(f.status_lines(st)))
        self.assertIn("C2  (available, not authorized, paused)", text)
        self.assertIn("open, mirror says closed", text)
        self.assertIn("-4.5 C", text)
        self.assertIn("STALE", text)
        reading = {"voltage_dv": [2301, 0, 0], "current_ma": [16000, 0, 0], "power_w": 3680,
                   "import_wh": 1, "export_wh": None, "last_ok_ms": 5, "stale": False,
                   "implausible": True, "implausible_reason": "import_backwards"}
        stats = {"requests": 10 ** 9, "replies": 10 ** 9, "timeouts": 10 ** 9,
                 "crc_errors": 10 ** 9, "exceptions": 10 ** 9, "bad_frames": 10 ** 9,
                 "last_error": "exception 2"}
        text = "\n".join(self.check(f.meter_lines(reading, stats, 247, "orno_we516")))
        self.assertIn("IMPLAUSIBLE (import_backwards)", text)
        self.assertIn("0.001 kWh", text)

    def test_check_lines_and_counters(self):
        self.check([f.check_line("contactor cycle", "REFUSED", "x" * 100)])
        self.assertEqual(f.check_line("pilot -12 V", "PASS", "reads -12.00 V"),
                         "  pilot -12 V ........... PASS  reads -12.00 V")
        v = {"boots": 3, "sessions": 2, "energy_wh": 20500, "contactor_cycles": 4,
             "contactor_cycles_under_load": 1,
             "faults": {"F%d" % i + "x" * 70: i for i in range(40)}}
        text = "\n".join(self.check(f.counter_lines(v, [("uptime", "1h00m")])))
        self.assertIn("20.500 kWh", text)
        self.assertIn("unbilled          0.000 kWh", text)
        self.assertFalse("ledger at" in text, text)
        v.update(unbilled_wh=1234567, ledger_wh=5000123)
        text = "\n".join(self.check(f.counter_lines(v)))
        self.assertIn("unbilled          1234.567 kWh", text)
        self.assertIn("ledger at         meter register 5000.123 kWh", text)

    def test_status_shows_the_unbilled_energy(self):
        text = "\n".join(self.check(f.status_lines({"station_id": "cp-1", "unbilled_wh": 42})))
        self.assertIn("  unbilled  0.042 kWh (metered, in no session)", text)
        self.assertFalse("unbilled" in "\n".join(f.status_lines({"station_id": "cp-1"})))

    def test_pilot_lines(self):
        lines = self.check(f.pilot_lines([(6000, -12000), (5990, -11990)], PILOT_C, 533, "C2"))
        text = "\n".join(lines)
        self.assertIn("CP high  +5.99 V  (2 samples, +5.99 V .. +6.00 V)", text)
        self.assertIn("level    C: EV requests charging", text)


class Technician(unittest.TestCase):
    def check(self, lines):
        for line in lines:
            self.assertTrue(len(line) <= f.WIDTH, "%d: %r" % (len(line), line))
        return lines

    def test_utc_dates(self):
        self.assertEqual(f.utc_text(0), "1970-01-01 00:00:00")
        self.assertEqual(f.utc_text(951782400), "2000-02-29 00:00:00")     # leap day
        self.assertEqual(f.utc_text(1767225599), "2025-12-31 23:59:59")
        self.assertEqual(f.utc_text(1796083200 + 3661), "2026-12-01 01:01:01")

    def test_history_lines_say_utc_or_boot_and_uptime(self):
        from firmware.history import HK_BOOT, HK_LOST, HK_STOP
        recs = [(0, None, 123, 4, HK_BOOT, 3, 1), (1, 1767225599, 130, 4, EV_FAULT_RAISED,
                                                   RCD_TRIPPED, 0),
                (2, None, 140, 4, HK_STOP, 1, 0), (3, None, 150, 4, HK_LOST, 12, 0)]
        text = "\n".join(self.check(f.history_lines("events", recs)))
        self.assertIn("  boot 4 +12.3 s       BOOT, reset cause watchdog (the previous run"
                      " crashed)", text)
        self.assertIn("  2025-12-31 23:59:59  fault raised RCD_TRIPPED", text)
        self.assertIn("stopped: interrupted at the REPL (Ctrl-C)", text)
        self.assertIn("(12 records not logged", text)

    def test_why_sentences(self):
        base = {"available": True, "connected": True, "authorized": True, "paused": False,
                "limit": "config", "limit_ma": 32000, "offered_ma": 32000,
                "requesting": True, "contactor": True, "state": "C2"}
        self.assertTrue(f.why_text(base).startswith("Charging: 32.0 A offered"))
        cases = (
            ({"faults": ["DIODE_FAULT", "RCD_TRIPPED"]},
             "fault DIODE_FAULT (also RCD_TRIPPED) blocks it"),
            ({"faults": ["CONTACTOR_WELDED"]}, 'diag.clear("CONTACTOR_WELDED") on site'),
            ({"available": False}, "inoperative"),
            ({"connected": False}, "no EV connected"),
            ({"authorized": False, "auth_mode": "local"}, "authorization (auth_mode local)"),
            ({"paused": True}, "backend stopped or paused"),
            ({"limit": "comms", "limit_ma": 0, "comms_ma": 0, "backend": "offline"},
             "unreachable (offline) and comms_fallback_ma is 0"),
            ({"limit": "backend", "limit_ma": 3000, "backend_ma": 3000}, "limits the current"
                                                                         " to 3.0 A"),
            ({"requesting": False, "contactor": False, "state": "B2"}, "does not ask"),
            ({"mode": "Not charging: service mode."}, "service mode"),
        )
        for change, expect in cases:
            w = dict(base)
            w.update(change)
            text = f.why_text(w)
            self.assertIn(expect, text)
            self.check(f.wrap(text))

    def test_a_stale_meter_says_whether_it_answers(self):
        self.assertEqual(f.stale_cause({"exceptions": 3}),
                         "meter answers with exceptions: wrong meter_map?")
        self.assertIn("baud", f.stale_cause({"crc_errors": 1}))
        self.assertEqual(f.stale_cause({}), "no answer")

    def test_status_blocked_is_not_called_available(self):
        text = "\n".join(self.check(f.status_lines(
            {"state": "F", "available": True, "authorized": True, "blocked": True,
             "pending_reboot": ["mqtt_host", "wifi_ssid"], "version": "1.0.0 (abc)",
             "warnings": ["x " * 60]})))
        self.assertIn("state    F  (BLOCKED by a fault, authorized)", text)
        self.assertTrue("available" not in text)
        self.assertIn("pending  mqtt_host, wifi_ssid (stored", text)

    def test_session_lines(self):
        rec = {"id": "3-7", "time_source": "wall", "start_time": 1767225599,
               "energy_wh": 12345, "duration_s": 3700, "stop_reason": "ev_unplugged",
               "id_tag": "04A2" * 8, "cost_minor": 450, "currency": "EUR",
               "faults": ["RCD_TRIPPED"], "pending": True}
        text = "\n".join(self.check(f.session_lines([rec])))
        self.assertIn("3-7  2025-12-31 23:59:59  12.345 kWh, 1h01m", text)
        self.assertIn("RCD_TRIPPED", text)
        self.assertIn("not yet acknowledged", text)
        self.assertIn("none on flash", "\n".join(f.session_lines([])))


if __name__ == "__main__":
    unittest.main()

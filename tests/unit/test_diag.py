# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
# The REPL diagnostics (diag.py) against a whole Station on the simulator's board, with an
# in-memory flash, in simulated time; and in service mode (no station, the board alone).
import unittest

import diag
from firmware import faults
from firmware import station as station_mod
from firmware.faults import by_name
from firmware.station import TICK_MS, Station
from firmware.storage import Store
from meter_doubles import SlaveStream
from tools.powercut_fs import PowerCutFs
from tools.pilotsim.model import CABLE_OHMS, S2_C, S2_OPEN
from tools.pilotsim.simboard import SimBoard

WIDTH = 80


class RecordingBoard(SimBoard):
    """Remembers every coil command, and can plug an EV in after the n-th coil-on sample
    (an EV arriving in the middle of the contactor cycle)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.coil = []
        self.plug_after_samples = None

    def set_contactor(self, closed):
        if closed != self.contactor_cmd:
            self.coil.append(closed)
        super().set_contactor(closed)

    def sample_pilot(self):
        if self.contactor_cmd and self.plug_after_samples is not None:
            self.plug_after_samples -= 1
            if self.plug_after_samples <= 0:
                self.plug_after_samples = None
                self.model.plugged = True
                self.model.update()
        super().sample_pilot()


class _BoardClock:
    def __init__(self, board):
        self.board = board

    @property
    def now(self):
        return self.board.now_ms


class Rig:
    def __init__(self, config=None, meter=False):
        self.fs = PowerCutFs()
        self.board = RecordingBoard()
        self.slave = None
        if meter:
            self.slave = SlaveStream(_BoardClock(self.board), regs={0: 0x4366, 1: 0}, slave=3)
            self.board._meter_uart = self.slave
        self.station = Station(self.board, config=config, store=Store("/data", self.fs))

    def run(self, ms):
        for _ in range(ms // TICK_MS):
            self.station.step()
            self.board.sleep_ms(TICK_MS)

    def ev(self, plugged=None, s2=None, cable_a=None):
        m = self.board.model
        if plugged is not None:
            m.plugged = plugged
        if s2 is not None:
            m.s2 = s2
        if cable_a is not None:
            m.cable_ohms = CABLE_OHMS[cable_a]
        m.update()


class DiagCase(unittest.TestCase):
    def setUp(self):
        self.lines = []
        diag.echo = self.lines.append
        diag.board_factory = None
        diag.service_store = None
        diag._svc = None
        station_mod.current = None

    def tearDown(self):
        diag.echo = print
        diag.board_factory = None
        diag.service_store = None
        diag._svc = None
        station_mod.current = None

    def text(self):
        out = "\n".join(self.lines)
        self.lines[:] = []
        return out

    def assertFits(self):
        for line in self.lines:
            self.assertTrue(len(line) <= WIDTH, "%d columns: %r" % (len(line), line))


class WithStation(DiagCase):
    def test_status_shows_state_contactor_and_faults(self):
        r = Rig()
        r.run(100)
        r.ev(plugged=True, s2=S2_C)
        r.run(2000)
        self.assertIsNone(diag.status())
        self.assertFits()
        out = self.text()
        self.assertIn("C2", out)
        self.assertIn("closed, mirror says closed", out)
        self.assertIn("faults       none", out)

    def test_status_after_ctrl_c_shows_the_board_made_safe(self):
        r = Rig()
        r.ev(plugged=True, s2=S2_C)
        r.run(2000)
        # main.py's KeyboardInterrupt path: contactor open, pilot -12 V, no further tick.
        r.board.set_contactor(False)
        r.board.set_pilot(0)
        diag.status()
        out = self.text()
        self.assertIn("contactor    open", out)
        self.assertIn("loop stopped, board made safe", out)
        diag.pilot()
        out = self.text()
        self.assertIn("steady -12 V", out)
        self.assertIn("EV cannot be seen", out)

    def test_pilot_shows_live_levels_of_state_b_and_c(self):
        r = Rig()
        r.ev(plugged=True)
        r.run(1000)
        diag.pilot()
        self.assertFits()
        out = self.text()
        self.assertIn("B: EV connected", out)
        # 8.96 V nominal with the diode drop, plus the simulated ADC noise.
        self.assertTrue("CP high  +8.9" in out or "CP high  +9.0" in out, out)
        self.assertIn("CP low   -1", out)
        self.assertIn("PWM 53.3 %", out)             # 32 A
        r.ev(s2=S2_C)
        r.run(1000)
        diag.pilot()
        out = self.text()
        self.assertIn("C: EV requests charging", out)
        self.assertIn("C2 (charge controller)", out)

    def test_pp_shows_the_cable_rating(self):
        r = Rig()
        diag.pp()
        self.assertIn("no cable", self.text())
        r.ev(plugged=True, cable_a=13)
        diag.pp()
        self.assertFits()
        out = self.text()
        self.assertIn("13.0 A", out)
        ohms = int(out.split("PP-PE  ")[1].split(" ohm")[0])
        self.assertTrue(1450 <= ohms <= 1550, ohms)   # 1.5 kOhm through the ADC

    def test_faults_show_the_active_fault_with_its_text_and_history(self):
        r = Rig()
        r.ev(plugged=True, s2=S2_C)
        r.run(2000)
        r.board.rcd_fault = True
        r.run(100)
        diag.faults()
        self.assertFits()
        out = self.text()
        self.assertIn("RCD_TRIPPED  (OCPP GroundFailure)", out)
        self.assertIn("detected a leakage current", out)     # from the fault table
        self.assertIn("fault raised RCD_TRIPPED", out)
        self.assertIn("Stops charging; clears on unplug", out)

    def test_events_are_shown_after_the_station_drained_the_ring(self):
        r = Rig()
        r.ev(plugged=True)
        r.run(500)
        r.ev(s2=S2_C)
        r.run(2000)
        self.assertEqual(len(r.station.events), 0)           # the station popped them all
        diag.events(20)
        self.assertFits()
        out = self.text()
        self.assertIn("state A -> B2", out)
        self.assertIn("state B2 -> C2", out)
        self.assertIn("contactor closed (charge)", out)
        self.assertIn("RCD self-test passed", out)
        diag.events(1)
        lines = self.lines[1:]
        self.assertEqual(len(lines), 1)
        self.assertIn("contactor closed", lines[0])

    def test_config_masks_secrets(self):
        r = Rig()
        self.assertIsNone(r.station.cmd_set_config({"mqtt_password": "hunter2",
                                                     "wifi_password": "swordfish"}))
        diag.config()
        self.assertFits()
        out = self.text()
        self.assertTrue("hunter2" not in out and "swordfish" not in out)
        self.assertIn("mqtt_password", out)
        self.assertIn('"***"', out)
        diag.config("meter_")
        out = self.text()
        self.assertIn("meter_addr", out)
        self.assertTrue("max_current_ma" not in out)

    def test_set_with_a_bad_value_changes_nothing(self):
        r = Rig()
        for key, value in (("max_current_ma", 5), ("max_current_ma", "16000"),
                           ("no_such_key", 1), ("wake_up_pilot", "Z"), (7, 1)):
            self.assertIs(diag.set(key, value), False)
            out = self.text()
            self.assertIn("refused" if key != 7 else "key must be a string", out)
            self.assertIn("Nothing changed" if key != 7 else "set(", out)
        self.assertEqual(r.station.cfg["max_current_ma"], 32000)
        self.assertIsNone(r.fs.medium.get("/data/config.json"))

    def test_set_with_a_good_value_is_stored_and_applied(self):
        r = Rig()
        self.assertIs(diag.set("max_current_ma", 16000), True)
        self.assertIn("stored and applied", self.text())
        r.ev(plugged=True)
        r.run(1000)
        self.assertEqual(r.station.charger.offered_ma, 16000)
        self.assertIsNotNone(r.fs.medium.get("/data/config.json"))
        self.assertIs(diag.set("mqtt_password", "hunter2"), True)
        out = self.text()
        self.assertIn("after a reboot", out)
        self.assertTrue("hunter2" not in out)

    def test_counters(self):
        r = Rig()
        r.ev(plugged=True, s2=S2_C)
        r.run(2000)
        r.ev(plugged=False, s2=S2_OPEN)
        r.run(500)
        diag.counters()
        self.assertFits()
        out = self.text()
        self.assertIn("boots             1", out)
        self.assertIn("sessions          1", out)
        self.assertIn("contactor cycles  1", out)
        self.assertIn("control iterations", out)

    def test_clear_on_site(self):
        r = Rig()
        r.station.faults.raise_(faults.CONTACTOR_WELDED, 0, present=False)
        self.assertIs(diag.clear("NOPE"), False)
        self.assertIn("unknown fault", self.text())
        self.assertIs(diag.clear("CONTACTOR_WELDED"), True)   # on site: allowed
        self.assertFalse(r.station.faults.is_active(faults.CONTACTOR_WELDED))
        self.assertIs(diag.clear("CONTACTOR_WELDED"), False)
        self.assertIn("not active", self.text())

    def test_meter_absent_and_scan_without_a_bus(self):
        Rig()
        self.assertIsNone(diag.meter())
        self.assertIn("none: the board has no RS-485 port", self.text())
        self.assertEqual(diag.scan(), [])
        self.assertIn("no RS-485 port", self.text())

    def test_scan_finds_the_slave_and_bounds_each_address(self):
        r = Rig(config={"meter_map": "sdm630"}, meter=True)
        start = r.board.now_ms
        self.assertEqual(diag.scan(1, 5, timeout_ms=50), [3])
        self.assertFits()
        out = self.text()
        self.assertIn("  3  answers", out)
        self.assertIn("1 answered of 5 asked; 4 timeouts", out)
        # Four silent addresses: each ends at its timeout plus the frames' wire time.
        took = r.board.now_ms - start
        self.assertTrue(4 * 50 <= took <= 4 * (50 + 25) + 30, took)
        self.assertEqual(diag.scan(0, 5), [])
        self.assertIn("1 <= first <= last <= 247", self.text())

    def test_meter_shows_reading_and_bus_statistics(self):
        r = Rig(config={"meter_map": "sdm630", "meter_addr": 3}, meter=True)
        r.run(2000)
        diag.meter()
        self.assertFits()
        out = self.text()
        self.assertIn("at address 3", out)
        self.assertIn("requests", out)
        self.assertIn("timeouts", out)

    def test_every_function_fits_80_columns_with_long_values(self):
        r = Rig()
        r.station.cmd_set_config({"meter_custom_map": "x" * 1000, "station_id": "s" * 64})
        for code in range(1, 20):
            r.station.faults.raise_(code, 0, present=False)
        r.run(100)
        for fn in (diag.help, diag.status, diag.pilot, diag.pp, diag.meter, diag.faults,
                   diag.events, diag.config, diag.counters, diag.selftest):
            fn()
        self.assertFits()
        self.assertTrue(len(self.lines) > 100)


class Selftest(DiagCase):
    def test_no_ev_passes_and_cycles_the_contactor_once_leaving_it_open(self):
        r = Rig()
        r.run(100)
        r.board.coil[:] = []
        self.assertIs(diag.selftest(), True)
        self.assertFits()
        out = self.text()
        self.assertIn("contactor cycle ....... PASS", out)
        self.assertIn("residual current ...... PASS", out)
        self.assertIn("pilot -12 V ........... PASS", out)
        self.assertEqual(r.board.coil, [True, False])
        self.assertFalse(r.board.contactor_cmd)
        self.assertFalse(r.board.contacts_closed)
        self.assertFalse(r.board.rcd_test_on)
        r.run(100)                                  # the station takes over unharmed
        self.assertEqual(r.station.status()["faults"], [])

    def test_ev_connected_refuses_the_contactor_cycle(self):
        r = Rig()
        r.ev(plugged=True)
        r.run(1000)
        r.board.coil[:] = []
        self.assertIs(diag.selftest(), True)        # refused is not failed
        out = self.text()
        self.assertIn("contactor cycle ....... REFUSED", out)
        self.assertIn("EV connected", out)
        self.assertEqual(r.board.coil, [])          # never energised
        self.assertEqual(r.board.duty, r.station.charger.duty_pm)    # output restored

    def test_cable_in_the_socket_without_ev_refuses_the_cycle(self):
        r = Rig()
        r.board.model.pp_ohms = CABLE_OHMS[20]      # plug in the socket, car end free
        r.board.coil[:] = []
        diag.selftest()
        self.assertIn("REFUSED", self.text())
        self.assertEqual(r.board.coil, [])

    def test_tethered_cable_cycles_only_with_the_connector_parked(self):
        # On a tethered cable PP cannot say whether the connector is in an EV, and state A
        # is also what a connected EV with a broken CP wire reads: the technician has to
        # confirm the connector is parked.
        r = Rig(config={"socket_outlet": False})
        r.run(100)
        r.board.coil[:] = []
        self.assertIs(diag.selftest(), True)        # refused is not failed
        out = self.text()
        self.assertIn("contactor cycle ....... REFUSED", out)
        self.assertIn("connector_parked=True", out)
        self.assertEqual(r.board.coil, [])
        self.assertIs(diag.selftest(connector_parked=True), True)
        self.assertIn("contactor cycle ....... PASS", self.text())
        self.assertEqual(r.board.coil, [True, False])
        r.ev(plugged=True)                          # parked was not true after all
        r.board.coil[:] = []
        diag.selftest(connector_parked=True)
        self.assertIn("EV connected", self.text())
        self.assertEqual(r.board.coil, [])

    def test_ev_appearing_during_the_cycle_opens_at_once(self):
        r = Rig()
        r.board.contactor_delay_ms = 200
        r.board.plug_after_samples = 3
        r.board.coil[:] = []
        diag.selftest()
        out = self.text()
        self.assertIn("EV or cable appeared: opened at once", out)
        self.assertEqual(r.board.coil, [True, False])
        self.assertFalse(r.board.contactor_cmd)

    def test_charging_refuses_everything_and_touches_nothing(self):
        r = Rig()
        r.ev(plugged=True, s2=S2_C)
        r.run(2000)
        duty = r.board.duty
        r.board.coil[:] = []
        self.assertIs(diag.selftest(), False)
        self.assertIn("nothing was tested", self.text())
        self.assertEqual(r.board.coil, [])
        self.assertEqual(r.board.duty, duty)
        self.assertTrue(r.board.contactor_cmd)

    def test_welded_contactor_fails(self):
        r = Rig()
        r.board.contactor_welded = True
        self.assertIs(diag.selftest(), False)
        out = self.text()
        self.assertIn("contactor cycle ....... FAIL  WELDED: outlet may be live", out)
        # The summary never calls welded contacts "open".
        self.assertIn("0 skipped; coil off\n  WELDED: outlet may be live: the mirror", out)
        self.assertFalse("; contactor open" in out)
        self.assertFalse(r.board.contactor_cmd)

    def test_contactor_not_closing_fails(self):
        r = Rig()
        r.board.contactor_stuck_open = True
        self.assertIs(diag.selftest(), False)
        self.assertIn("mirror not closed within 1000 ms", self.text())
        self.assertFalse(r.board.contactor_cmd)

    def test_residual_current_monitor_not_answering_fails(self):
        r = Rig()
        r.board.rcd_selftest_ok = False
        self.assertIs(diag.selftest(), False)
        self.assertIn("no trip within 500 ms", self.text())
        self.assertFalse(r.board.rcd_test_on)
        # The verdict reaches the station's events (and from there the backend).
        self.assertIn("RCD self-test FAILED", "\n".join(
            __import__("firmware.diagfmt").diagfmt.event_text(k, a, b)
            for _, k, a, b in r.station.events.history(4)))


class Guards(DiagCase):
    def tearDown(self):
        diag.ask = None
        super().tearDown()

    def test_raising_a_current_asks_and_no_changes_nothing(self):
        r = Rig(config={"max_current_ma": 16000})
        asked = []
        diag.ask = lambda q: asked.append(q) or "n"
        self.assertIs(diag.set("max_current_ma", 20000), False)
        self.assertEqual(asked, ["raise max_current_ma from 16.0 A to 20.0 A? [y/N] "])
        self.assertEqual(r.station.cfg["max_current_ma"], 16000)
        self.assertIs(diag.set("max_current_ma", 10000), True)    # lowering: no question
        self.assertEqual(len(asked), 1)
        diag.ask = lambda q: "yes"
        self.assertIs(diag.set("max_current_ma", 20000), True)
        self.assertIs(diag.set("max_current_ma", 30000, confirm=True), True)
        self.assertEqual(r.station.cfg["max_current_ma"], 30000)

    def test_service_asks_before_it_stops_a_charge(self):
        r = Rig()
        r.ev(plugged=True, s2=S2_C)
        r.run(2000)
        self.assertTrue(r.board.contactor_cmd)
        diag.ask = lambda q: "n"
        self.assertIs(diag.service(), False)
        self.assertTrue(r.board.contactor_cmd)
        self.assertEqual(r.board.reset_requests, 0)
        self.assertIs(diag.service("off"), False)
        self.assertIn("on must be True", self.text())

    def test_clear_checks_the_diode_again_under_pwm(self):
        r = Rig()
        r.ev(plugged=True, s2=S2_C)
        r.run(2000)
        r.board.model.diode_short = True
        r.board.model.update()
        r.run(200)
        self.assertTrue(r.station.faults.is_active(faults.DIODE_FAULT))
        r.run(3000)                                   # x1 since: the diode cannot show
        self.assertTrue(r.station.faults.is_present(faults.DIODE_FAULT))
        self.assertIs(diag.clear("DIODE_FAULT"), False)
        self.assertIn("diode shorted or missing", self.text())
        self.assertEqual(r.board.duty, 1000)          # the 5 % check is over
        self.assertFalse(r.board.contactor_cmd)
        r.board.model.diode_short = False
        r.board.model.update()
        self.assertIs(diag.clear("DIODE_FAULT"), True)
        self.assertFalse(r.station.faults.is_active(faults.DIODE_FAULT))
        self.assertEqual(r.station.safe.latched, 0)   # on flash before the answer

    def test_bad_arguments_print_a_hint(self):
        Rig()
        diag.events("x")
        diag.config(5)
        diag.sessions(0)
        self.assertIs(diag.clear("RCD_TRIPED"), False)
        self.assertIs(diag.selftest(1), False)
        out = self.text()
        for hint in ("events: n must be an integer", "config: match is a part of a key",
                     "sessions: n must be an integer", "did you mean RCD_TRIPPED?",
                     "connector_parked must be True or False"):
            self.assertIn(hint, out)


class _Wlan:
    def __init__(self, up):
        self.up = up

    def isconnected(self):
        return self.up

    def ifconfig(self):
        return ("192.168.4.23", "255.255.255.0", "192.168.4.1", "192.168.4.1")

    def status(self, what=None):
        return -61 if what == "rssi" else 1010


class _Wifi:
    def __init__(self, up):
        self.wlan = _Wlan(up)
        self.ssid = "depot"
        self.attempts = 3


class StatusLines(DiagCase):
    def test_wifi_clock_backend_reason_pending_keys_and_last_crash(self):
        board = RecordingBoard()
        board.crash_text = "Traceback (most recent call last):\nValueError: boom\n"
        st = Station(board, config={"wifi_ssid": "depot"},
                     store=Store("/data", PowerCutFs()))
        board.wifi = _Wifi(True)
        self.assertIsNone(st.cmd_set_config({"mqtt_host": "192.0.2.1"}))
        diag.status()
        self.assertFits()
        out = self.text()
        self.assertIn("Wi-Fi        depot: 192.168.4.23, -61 dBm", out)
        self.assertIn("pending      mqtt_host (stored, applies after a reboot)", out)
        self.assertIn("last crash   ValueError: boom", out)
        self.assertIn("clock        20", out)
        board.wifi = _Wifi(False)
        diag.status()
        self.assertIn("Wi-Fi        depot: not connected (3 attempts)", self.text())


class BarePcb(RecordingBoard):
    """A board file without mirror contact and without residual-current monitor."""
    has_mirror = False
    has_rcd = False

    def contactor_mirror_closed(self):
        return self.contactor_cmd          # the command echoed, as the driver does


class AbsentParts(DiagCase):
    def test_selftest_skips_what_the_board_lacks_and_never_closes(self):
        board = BarePcb()
        Station(board, store=Store("/data", PowerCutFs()))
        self.assertIs(diag.selftest(), True)
        out = self.text()
        self.assertIn("residual current ...... SKIP  the board has no monitor", out)
        self.assertIn("contactor cycle ....... SKIP  no mirror contact", out)
        self.assertEqual(board.coil, [])
        diag.status()
        out = self.text()
        self.assertIn("contactor    open\n", out + "\n")
        self.assertTrue("mirror" not in out)


class ServiceMode(DiagCase):
    def setUp(self):
        super().setUp()
        self.fs = PowerCutFs()
        self.board = RecordingBoard()
        diag.board_factory = lambda: self.board
        diag.service_store = Store("/data", self.fs)

    def test_board_is_built_safe_and_status_says_service_mode(self):
        self.board.set_contactor(True)              # whatever the pins were doing
        self.board.set_pilot(300)
        diag.status()
        self.assertFits()
        out = self.text()
        self.assertIn("SERVICE MODE", out)
        self.assertIn("A: no EV connected (live)", out)
        self.assertFalse(self.board.contactor_cmd)
        self.assertEqual(self.board.duty, 1000)     # steady +12 V: nothing offered

    def test_set_is_validated_and_stored_for_the_next_start(self):
        self.assertIs(diag.set("max_current_ma", 1), False)
        self.assertIsNone(self.fs.medium.get("/data/config.json"))
        self.assertIs(diag.set("max_current_ma", 20000), True)
        self.assertIn("applies when the station starts", self.text())
        st = Station(SimBoard(), store=Store("/data", self.fs))
        self.assertEqual(st.cfg["max_current_ma"], 20000)

    def test_service_mode_refuses_more_than_the_rating_too(self):
        diag.ask = lambda q: "y"
        try:
            self.assertIs(diag.set("max_current_ma", 40000), False)
        finally:
            diag.ask = None
        self.assertIn("above the hardware rating 32000", self.text())
        self.assertIsNone(self.fs.medium.get("/data/config.json"))

    def test_selftest_faults_events_counters_without_a_station(self):
        self.assertIs(diag.selftest(), True)
        self.assertIn("contactor cycle ....... PASS", self.text())
        self.assertEqual(self.board.coil, [True, False])
        diag.faults()
        diag.events()
        diag.counters()
        diag.config()
        diag.pilot()
        diag.pp()
        diag.meter()
        self.assertFits()
        out = self.text()
        self.assertIn("latched faults (back when the station starts)", out)
        self.assertIn("fault history (flash, newest last)", out)
        self.assertIn("boots             0", out)         # read, not counted


class Formatting(unittest.TestCase):
    def test_fault_table_texts_wrap_inside_80_columns(self):
        from firmware import diagfmt
        lines = diagfmt.fault_lines([f.code for f in faults.all_faults()], [], 0, lambda a, b: a - b)
        self.assertTrue(all(len(ln) <= WIDTH for ln in lines))
        self.assertIn("  CONTACTOR_WELDED  (OCPP PowerSwitchFailure)", lines)
        self.assertIn("(on site only)", "\n".join(lines))
        self.assertIn(by_name("OVERTEMP").text.split()[0], "\n".join(lines))


if __name__ == "__main__":
    unittest.main()

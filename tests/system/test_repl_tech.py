"""The technician's REPL at a REAL MicroPython REPL (the stand-in, driven through a pty with
pexpect as a person at a serial terminal would): the guards on dangerous actions, what
persists across reboots, why a station does not charge, and the papercuts. The Ctrl-C test
runs boot.py and main.py on the fake ESP32 with its watchdog, and presses Ctrl-C.
"""
import os
import re
import time

import pexpect

from tests.system.meter_peer import MeterPeer
from tests.system.test_repl_diag import PROMPT, WIDTH, Repl
from tools.simrepl import command


class TechRepl(Repl):
    def __init__(self, root, meter_port=None, config=None):
        argv, env = command(str(root), meter_port, config)
        self.child = pexpect.spawn(argv[0], argv[1:], env=env, cwd=str(root),
                                   encoding="utf-8", timeout=20, dimensions=(50, 200))
        self.child.expect("simulated station ready")
        self.child.expect_exact(PROMPT)
        self.seen = []

    def answer(self, line, question, reply):
        """Type `line`, expect `question` (a y/N prompt), answer `reply`; the output."""
        self.child.sendline(line)
        self.child.expect_exact(question)
        self.child.expect_exact("[y/N] ")
        before = self.child.before
        self.child.sendline(reply)
        self.child.expect_exact(PROMPT)
        lines = (before + self.child.before).replace("\r", "").split("\n")
        out = [ln for ln in lines[1:] if ln.strip() and ln.strip() != reply]
        assert not any("Traceback" in ln for ln in out), "\n".join(out)
        self.seen += out
        return "\n".join(out)

    def finish(self):
        self.close()
        too_long = [ln for ln in self.seen if len(ln) > WIDTH]
        assert not too_long, too_long


def _charge(r):
    r("sim.plug(); sim.request(); sim.run(3000)")
    assert "closed, mirror says closed" in r.text("diag.status()")


# -- dangerous actions are guarded ----------------------------------------------------------

def test_no_setting_local_or_remote_offers_more_than_the_hardware_is_rated_for(tmp_path):
    # A stored max_current_ma of 80 A (the schema allows it) on 32 A hardware.
    r = TechRepl(tmp_path, config={"max_current_ma": 80000})
    try:
        r("import diag")
        _charge(r)
        out = r.text("diag.status()")
        assert "offered      32.0 A  (limit: config)" in out
        assert "hardware     rated 32.0 A (board file), max_current_ma 80.0 A" in out
        # What the hardware is cannot change under load, from the REPL or the backend.
        out = r.text("diag.set('socket_outlet', False)")
        assert "socket_outlet: not while the contactor is closed" in out
        assert out.endswith("False")
        r("why = sim.station.cmd_set_config({'phases': 1})")     # the backend's path
        assert r("why[0] == 'BUSY' and 'phases: not while the contactor is closed' in why[1]") \
            == ["True"]
        out = r.text("diag.set('max_current_ma', 16000)")
        assert "(stored and applied)" in out
        # Raising asks; yes, and the ceiling still refuses 80 A; the backend too.
        out = r.answer("diag.set('max_current_ma', 80000)",
                       "raise max_current_ma from 16.0 A to 80.0 A during a live charge?",
                       "y")
        assert "max_current_ma: 80000 above the hardware rating 32000" in out
        assert out.endswith("False")
        r("why = sim.station.cmd_set_config({'max_current_ma': 80000})")
        assert r("why[0] == 'PropertyConstraintViolation' and"
                 " 'above the hardware rating 32000' in why[1]") == ["True"]
        # A no keeps the old value; a yes within the rating applies it.
        out = r.answer("diag.set('max_current_ma', 32000)", "raise max_current_ma", "n")
        assert "not confirmed. Nothing changed." in out and out.endswith("False")
        assert "offered      16.0 A" in r.text("sim.run(6000); diag.status()")
        out = r.answer("diag.set('max_current_ma', 32000)", "raise max_current_ma", "y")
        assert "max_current_ma = 32000 (stored and applied)" in out
        r("sim.run(6000)")
        assert "offered      32.0 A" in r.text("diag.status()")
        # Once the contactor is open the hardware keys may change.
        r("sim.unplug(); sim.run(1000)")
        assert "socket_outlet = false (stored and applied)" in r.text(
            "diag.set('socket_outlet', False)")
    finally:
        r.finish()


def test_booleans_are_real_and_incoherent_settings_are_refused_or_warned(tmp_path):
    r = TechRepl(tmp_path)
    try:
        r("import diag")
        out = r.text("diag.set('socket_outlet', 'false')")
        assert "socket_outlet: expected true or false" in out and out.endswith("False")
        assert "  socket_outlet = true" in r.text("diag.config('socket')")
        out = r.text("diag.set('wifi_password', 'short')")
        assert "WPA2 needs 8..63 characters" in out and out.endswith("False")
        out = r.text("diag.set('mqtt_host', 'broker example.com')")
        assert "is not a host name or IP address" in out and out.endswith("False")
        out = r.text("diag.set('mqtt_tls', True)")
        assert "mqtt_tls = true (stored; applies after a reboot)" in out
        assert "warning: mqtt_tls is on without mqtt_ca_file" in out
        assert "warning: mqtt_tls is on without mqtt_ca_file" in r.text("diag.status()")
        assert "pending      mqtt_tls (stored, applies after a reboot)" in r.text(
            "diag.status()")
        # selftest('no') and service('off') are not booleans: nothing runs.
        r("sim.board.energised = []")
        r("_sc = sim.board.set_contactor")
        r("sim.board.set_contactor = lambda c: (sim.board.energised.append(c), _sc(c))")
        out = r.text("diag.selftest('no')")
        assert "connector_parked must be True or False" in out and out.endswith("False")
        assert r("True in sim.board.energised") == ["False"]
        out = r.text("diag.service('off')")
        assert "on must be True (enter service mode) or False" in out
        assert not os.path.exists(str(tmp_path / "service"))
        assert "state        A" in r.text("diag.status()")      # still running normally
    finally:
        r.finish()


def test_selftest_stops_at_the_first_failure_and_reports_welded_contacts(tmp_path):
    r = TechRepl(tmp_path)
    try:
        r("import diag")
        r("sim.board.energised = []")
        r("_sc = sim.board.set_contactor")
        r("sim.board.set_contactor = lambda c: (sim.board.energised.append(c), _sc(c))")
        r("sim.rcd_selftest_ok(False)")
        out = r.text("diag.selftest()")
        assert "residual current ...... FAIL  no trip within 500 ms" in out
        assert "contactor cycle ....... SKIP  a check before it failed" in out
        assert out.endswith("False")
        assert r("True in sim.board.energised") == ["False"]     # the coil never moved
        r("sim.rcd_selftest_ok(True)")
        out = r.text("diag.selftest()")
        assert "contactor cycle ....... PASS" in out
        # Welded contacts: a charge, the contacts weld, the EV leaves.
        r("sim.weld(); sim.plug(); sim.request(); sim.run(3000)")
        r("sim.unplug(); sim.run(2000)")
        assert "CONTACTOR_WELDED" in r.text("diag.status()")
        out = r.text("diag.selftest()")
        assert "WELDED: outlet may be live" in out
        assert "contactor open" not in out and out.endswith("False")
        out = r.text("diag.clear('CONTACTOR_WELDED')")
        assert "refused: CONTACTOR_WELDED: WELDED" in out and out.endswith("False")
        r("sim.weld(False); sim.run(100)")                  # the contactor is replaced
        assert r.text("diag.clear('CONTACTOR_WELDED')").endswith("CONTACTOR_WELDED cleared\nTrue")
    finally:
        r.finish()


def test_a_latched_fault_clears_only_when_its_cause_is_checked_again_and_gone(tmp_path):
    r = TechRepl(tmp_path)
    try:
        r("import diag")
        _charge(r)
        r("sim.diode_short(); sim.run(1000)")
        out = r.text("diag.status()")
        assert "DIODE_FAULT" in out and "BLOCKED by a fault" in out
        assert "available" not in out.split("\n")[1]           # not beside a fault
        # The diode shows only under PWM; the station offers none now (x1): clear()
        # checks it under 5 % PWM and refuses, nothing is offered afterwards.
        out = r.text("diag.clear('DIODE_FAULT')")
        assert "refused: DIODE_FAULT: under PWM the EV side still reads" in out
        assert out.endswith("False")
        r("sim.run(6000)")
        assert "offered      none" in r.text("diag.status()")
        assert r("sim.station.charger.offered_ma") == ["0"]
        # Repaired: the check passes, the fault clears, the offer returns.
        r("sim.diode_short(False)")
        assert r.text("diag.clear('DIODE_FAULT')").endswith("DIODE_FAULT cleared\nTrue")
        r("sim.run(2000)")
        assert "offered      32.0 A" in r.text("diag.status()")
        # An RCD trip: refused while the monitor still signals.
        r("sim.rcd_fault(); sim.run(200)")
        assert "still signals" in r.text("diag.clear('RCD_TRIPPED')")
        r("sim.rcd_fault(False); sim.run(100)")
        assert r.text("diag.clear('RCD_TRIPPED')").endswith("True")
        out = r.text("diag.clear('RCD_TRIPED')")
        assert "did you mean RCD_TRIPPED?" in out and out.endswith("False")
    finally:
        r.finish()


# -- what a technician needs persists -------------------------------------------------------

def test_faults_events_and_sessions_survive_a_reboot_and_service_mode(tmp_path):
    r = TechRepl(tmp_path)
    try:
        r("import diag")
        _charge(r)
        r("sim.rcd_fault(); sim.run(200); sim.unplug(); sim.rcd_fault(False); sim.run(2000)")
        # A minute of ticks and a dozen events: batches, never a write per tick or event.
        r("sim.run(60000)")
        assert int(r("sim.station.iterations")[0]) > 6000
        assert int(r("sim.station.history.writes")[0]) <= 2
        # service() while idle asks nothing; the reboot keeps the history on flash.
        out = r.text("diag.service()")
        assert "SERVICE MODE" in out
        out = r.text("diag.faults()")
        assert "fault raised RCD_TRIPPED" in out and "fault cleared RCD_TRIPPED" in out
        assert "BOOT, reset cause power_on" in out
        out = r.text("diag.events(30)")
        assert "contactor opened (fault)" in out
        assert "stopped: service mode" in out
        assert re.search(r"2026-\d\d-\d\d \d\d:\d\d:\d\d  state A -> C2", out), out
        out = r.text("diag.sessions()")
        assert "1-1  " in out and "faults RCD_TRIPPED" in out
        r.text("diag.service(False)")
        out = r.text("diag.events(40)")
        assert out.count("BOOT, reset cause") == 2          # both boots, one log
        assert "fault raised RCD_TRIPPED" in r.text("diag.faults()")
        assert "1-1  " in r.text("diag.sessions()")
    finally:
        r.finish()


def test_service_asks_before_it_stops_a_charge(tmp_path):
    r = TechRepl(tmp_path)
    try:
        r("import diag")
        _charge(r)
        out = r.answer("diag.service()", "A charge is running (state C2, 32.0 A offered)",
                       "n")
        assert "not confirmed; the charge goes on" in out and out.endswith("False")
        assert not os.path.exists(str(tmp_path / "service"))
        assert "closed, mirror says closed" in r.text("diag.status()")
        out = r.answer("diag.service()", "A charge is running", "y")
        assert "SERVICE MODE" in out
        out = r.text("diag.sessions()")
        assert "1-1  " in out and "service;" in out         # the session ended, on flash
        assert "stopped: service mode" in r.text("diag.events(5)")
    finally:
        r.finish()


# -- why not charging, why offline -----------------------------------------------------------

def test_why_names_the_cause_that_blocks_charging(tmp_path):
    r = TechRepl(tmp_path, config={"mqtt_host": "127.0.0.1", "mqtt_port": 9, "mqtt_tls": True,
                                   "comms_loss_timeout_s": 10})
    try:
        r("import diag")
        assert "no EV connected" in r.text("diag.why()")
        # The TLS configuration error shows as the reason, not just "offline".
        out = r.text("diag.status()")
        assert "backend      offline (will not connect: mqtt_tls needs mqtt_ca_file)" in out
        r("sim.plug(); sim.run(2000)")
        assert "the EV does not ask for it (state B2)" in r.text("diag.why()")
        r("sim.request(); sim.run(2000)")
        assert r.text("diag.why()").startswith("Charging: 32.0 A offered")
        # The backend stays unreachable past comms_loss_timeout_s: fallback 0 A.
        r("sim.run(10000)")
        out = r.text("diag.why()")
        assert "backend is unreachable" in out and "comms_fallback_ma" in out
        r("sim.rcd_fault(); sim.run(200)")
        out = r.text("diag.why()")
        assert "fault RCD_TRIPPED blocks it" in out and "unplug" in out
        r("sim.unplug(); sim.rcd_fault(False); sim.run(1000)")
        r("sim.station.cmd_set_availability(False, 0); sim.plug(); sim.run(1000)")
        assert "set inoperative" in r.text("diag.why()")
    finally:
        r.finish()


def test_why_authorization_and_backend_limit(tmp_path):
    r = TechRepl(tmp_path, config={"auth_mode": "local"})
    try:
        r("import diag")
        r("sim.plug(); sim.request(); sim.run(1500)")
        assert "waits for authorization (auth_mode local)" in r.text("diag.why()")
        r("sim.station.charger.authorize(True); sim.run(3000)")
        r("sim.station.cmd_set_limit(3000, None, sim.board.ticks_ms()); sim.run(500)")
        out = r.text("diag.why()")
        assert "the backend limits the current to 3.0 A" in out
    finally:
        r.finish()


def test_status_version_and_last_crash(tmp_path):
    r = TechRepl(tmp_path)
    try:
        r("import diag")
        out = r.text("diag.status()")
        assert re.search(r"version +\d+\.\d+\.\d+ \(", out), out
        assert "Wi-Fi        not configured (wifi_ssid empty)" in out
        assert re.search(r"clock +2026-\d\d-\d\d \d\d:\d\d:\d\d UTC", out), out
        out = r.text("diag.version()")
        assert re.search(r"firmware +\d+\.\d+\.\d+", out) and "micropython  1.28.0" in out
        assert r("sim.station.status()['version'] == __import__('firmware.version')"
                 ".version.VERSION") == ["True"]
        # A crash report left by the previous run shows in normal operation too.
        r("sim.board.crash_text = 'Traceback ...\\nValueError: boom\\n'")
        r("sim.station.cmd_reboot(sim.board.ticks_ms()); sim.run(2000)")
        out = r.text("diag.status()")
        assert "last crash   ValueError: boom" in out
        assert "boot         2" in out
    finally:
        r.finish()


# -- papercuts --------------------------------------------------------------------------

def test_bad_arguments_answer_with_a_hint_not_a_traceback(tmp_path):
    r = TechRepl(tmp_path)
    try:
        r("import diag")
        assert "events: n must be an integer" in r.text("diag.events('x')")
        assert "config: match is a part of a key" in r.text("diag.config(5)")
        assert "did you mean max_current_ma?" in r.text("diag.set('max_curent_ma', 1)")
        assert "did you mean max_current_ma?" in r.text("diag.config('max_curent_ma')")
        assert "sessions: n must be an integer" in r.text("diag.sessions(-1)")
        assert "the fault name is a string" in r.text("diag.clear(3)")
        out = r.text("diag.help()")
        assert "why()" in out and "sessions(n)" in out and "version()" in out
    finally:
        r.finish()


def test_a_wrong_meter_map_is_told_apart_from_a_silent_meter_and_scan_shows_progress(
        tmp_path):
    peer = MeterPeer("sdm630", slave=1)
    for addr in range(2, 12):
        peer.add_meter(addr)            # answering addresses: no wait for silent ones
    with peer:
        r = TechRepl(tmp_path, meter_port=peer.port, config={"meter_map": "abb_b23"})
        try:
            r("import diag")
            r("sim.run(8000)")
            out = r.text("diag.meter()")
            assert "STALE (meter answers with exceptions: wrong meter_map?)" in out
            out = r.text("diag.scan(1, 11, 10)")
            assert "... asked 1..10, 10 answered; Ctrl-C stops" in out
            assert out.endswith("[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]")
        finally:
            r.finish()


# -- Ctrl-C on the device: the station stays stopped, the watchdog fed -----------------------

DEVICE_CHARGING = """
import machine
sim = machine.sim
sim.reset()
# An EV in state C on the reference board's front ends (ADC mV = 1300 + CP mV / 10): +6 V on
# the PWM's high phase, -12 V below the ADC's range on its low phase; a 32 A cable (220 ohm
# PP); the mirror contact follows the coil; the monitor trips on its test input; NTC 25 C.
sim.set_adc(36, lambda t: 1900 if sim.pwm_output_high(25, t) else 100)
sim.set_adc(39, 3300 * 220 // 1220)
sim.set_adc(34, 1650)
sim.set_input(27, lambda t: 0 if sim.level(14) else 1)
_said = []


def _mirror(t):
    if sim.level(26) and not _said:
        _said.append(t)
        print("coil energised")
    return 0 if sim.level(26) else 1


sim.set_input(35, _mirror)
from drivers import clock
clock.source = sim.clock
for _name in ("boot.py", "main.py"):
    with open(%r + "/" + _name) as _f:
        exec(_f.read(), {"__name__": "__main__"})
print("device started")
"""


def test_ctrl_c_keeps_the_station_stopped_with_the_watchdog_fed(tmp_path):
    import shutil

    from tools.devicefiles import MICROPYTHON, ROOT, micropython_env
    shutil.copy(os.path.join(ROOT, "boards", "reference.json"), str(tmp_path / "board.json"))
    child = pexpect.spawn(MICROPYTHON, ["-i", "-c", DEVICE_CHARGING % ROOT],
                          env=micropython_env(fakes=True), cwd=str(tmp_path),
                          encoding="utf-8", timeout=20, dimensions=(50, 200))
    child.expect("watchdog 8000 ms")
    repl = Repl.__new__(Repl)
    repl.child = child
    repl.seen = []
    try:
        # The loop runs in simulated time: once the contactor has closed (the EV charges)
        # the technician presses Ctrl-C.
        child.expect("coil energised")
        time.sleep(0.5)
        child.sendintr()
        child.expect("stopped \\(Ctrl-C\\): contactor open, watchdog fed")
        child.expect("device started")
        child.expect_exact(PROMPT)
        assert repl("machine.sim.wdt_timeout_ms") == ["8000"]    # armed, cannot stop
        assert repl("machine.sim.level(26)") == ["0"]            # coil off
        repl("import diag")
        out = repl.text("diag.status()")
        assert "STOPPED (Ctrl-C), contactor open" in out
        # 30 s at the REPL: the timer feeds the watchdog, no reset, nothing resumes.
        repl("machine.sim.advance_ms(30000)")
        assert repl("machine.sim.wdt_expired") == ["False"]
        assert repl("machine.sim.reset_count") == ["0"]
        assert repl("machine.sim.level(26)") == ["0"]
        # The opening under load is in the wear counters, and the stop in the history.
        out = repl.text("diag.counters()")
        assert "contactor cycles  1" in out and "under load      1" in out
        out = repl.text("diag.events(10)")
        assert "contactor closed (charge)" in out
        assert "stopped: interrupted at the REPL (Ctrl-C)" in out
        assert re.search(r"boot 1 \+\d+\.\d s", out), out
        assert "stopped at the REPL (Ctrl-C)" in repl.text("diag.why()")
        # On flash already: the log a reset would leave.
        assert repl("len(__import__('firmware.history').history.read("
                    "diag._store(), 50))") != ["0"]
    finally:
        child.sendeof()
        child.expect(pexpect.EOF)
        child.close()
    assert all(len(ln) <= WIDTH for ln in repl.seen)

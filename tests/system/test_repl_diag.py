"""The technician's diagnostics at a REAL MicroPython REPL: the unix port started by
tools/simrepl.py (a Station on the simulator's board, flash in a temp dir), driven through
a pty with pexpect as a person at a serial terminal would, typing `import diag` and the
diag functions. A pymodbus meter on the RS-485 port for meter() and scan().
"""
import os
import re

import pexpect
import pytest

from tests.system.meter_peer import MeterPeer
from tools.simrepl import command

WIDTH = 80
PROMPT = ">>> "


class Repl:
    def __init__(self, root, meter_port=None):
        argv, env = command(str(root), meter_port)
        self.child = pexpect.spawn(argv[0], argv[1:], env=env, cwd=str(root),
                                   encoding="utf-8", timeout=20, dimensions=(50, 200))
        self.child.expect("simulated station ready")
        self.child.expect_exact(PROMPT)
        self.seen = []

    def __call__(self, line):
        """Type `line`, return the output lines it printed (the echo removed)."""
        self.child.sendline(line)
        self.child.expect_exact(PROMPT)
        lines = self.child.before.replace("\r", "").split("\n")
        assert lines[0].strip() == line, lines[0]
        out = [ln for ln in lines[1:] if ln != ""]
        assert not any("Traceback" in ln for ln in out), "\n".join(out)
        self.seen += out
        return out

    def text(self, line):
        return "\n".join(self(line))

    def close(self):
        self.child.sendeof()
        self.child.expect(pexpect.EOF)
        self.child.close()


@pytest.fixture
def repl(tmp_path):
    r = Repl(tmp_path)
    yield r
    r.close()
    # Every line any diag function printed fits an 80-column serial terminal.
    too_long = [ln for ln in r.seen if len(ln) > WIDTH]
    assert not too_long, too_long


def test_technician_session(repl):
    assert repl("import diag") == []
    out = repl.text("diag.status()")
    assert "-- station cp-0001 " in out
    assert "state        A  (available" in out
    assert "contactor    open, mirror says open" in out
    assert "meter        none" in out and "backend      not configured" in out

    # An EV is plugged in: state B2 (free mode offers 32 A at once).
    repl("sim.plug()")
    repl("sim.run(1000)")
    out = repl.text("diag.pilot()")
    assert "output   PWM 53.3 % (32.0 A offered)" in out
    assert "level    B: EV connected, not requesting" in out
    assert "state    B2 (charge controller)" in out
    assert ("CP high  +8.9" in out or "CP high  +9.0" in out) and "CP low   -1" in out
    out = repl.text("diag.pp()")
    assert "cable  cable rated 32.0 A" in out
    assert "PP-PE  2" in out                     # 220 ohm through the ADC

    # The EV asks to charge: C2, the contactor closes.
    repl("sim.request()")
    repl("sim.run(1500)")
    out = repl.text("diag.pilot()")
    assert "level    C: EV requests charging" in out
    assert "CP high  +5.9" in out or "CP high  +6.0" in out
    assert "closed, mirror says closed" in repl.text("diag.status()")

    # A residual-current trip.
    repl("sim.rcd_fault()")
    repl("sim.run(100)")
    out = repl.text("diag.faults()")
    assert "RCD_TRIPPED  (OCPP GroundFailure)" in out
    assert "detected a leakage current" in out            # the fault table's text
    assert "fault raised RCD_TRIPPED" in out
    events = repl("diag.events(5)")
    assert events[0].startswith("-- events")
    assert len(events) == 6
    assert any("contactor opened (fault)" in ln for ln in events)
    assert any("fault raised RCD_TRIPPED" in ln for ln in events)
    assert "RCD_TRIPPED" in repl.text("diag.status()")

    # Configuration: secrets masked, bad values refused, good ones stored and applied.
    repl('diag.set("mqtt_password", "hunter2")')
    out = repl.text("diag.config()")
    assert "hunter2" not in out
    assert re.search(r'\* mqtt_password +  = "\*\*\*"  \(r\)', out), out
    out = repl.text('diag.set("max_current_ma", 5)')
    assert "refused: max_current_ma: 5 out of range 6000..80000" in out
    assert "Nothing changed" in out and out.endswith("False")
    assert "max_current_ma = 32000" in repl.text('diag.config("max_current_ma")')
    out = repl.text('diag.set("max_current_ma", 16000)')
    assert "max_current_ma = 16000 (stored and applied)" in out and out.endswith("True")

    # Unplug (clears the trip), replug: the new limit is offered.
    repl("sim.unplug(); sim.rcd_fault(False); sim.run(500)")
    repl("sim.plug(); sim.run(1000)")
    out = repl.text("diag.status()")
    assert "offered      16.0 A  (limit: config)" in out
    assert "faults       none" in out

    # Self-test with the EV connected: no contactor cycle.
    out = repl.text("diag.selftest()")
    assert "contactor cycle ....... REFUSED  EV connected" in out
    assert "residual current ...... PASS" in out
    assert out.endswith("True")
    assert "contactor    open, mirror says open" in repl.text("diag.status()")

    # Without the EV: everything runs and passes, the contactor is left open.
    repl("sim.unplug(); sim.run(500)")
    out = repl.text("diag.selftest()")
    assert "pilot +12 V ........... PASS" in out
    assert "pilot -12 V ........... PASS" in out
    assert "contactor cycle ....... PASS  closed in" in out
    assert "0 failed" in out and out.endswith("True")
    assert "contactor    open, mirror says open" in repl.text("diag.status()")

    out = repl.text("diag.counters()")
    assert "boots             1" in out
    assert "sessions          2" in out
    assert "RCD_TRIPPED  1" in out

    out = repl.text("diag.help()")
    assert "selftest()" in out and "scan(first, last)" in out


def test_service_mode_round_trip(repl, tmp_path):
    repl("import diag")
    out = repl.text("diag.service()")
    # The line wraps at 80 columns wherever the temporary path's length puts the break.
    flat = " ".join(out.split())
    assert "written; restarting" in flat
    assert "service flag " + str(tmp_path)[:40] in flat
    assert "SERVICE MODE" in out
    assert os.path.exists(str(tmp_path / "service"))
    out = repl.text("diag.status()")
    assert "SERVICE MODE" in out
    assert "pilot        A: no EV connected (live)" in out
    # Service mode keeps the diagnostics: the history comes from flash.
    out = repl.text("diag.faults()")
    assert "latched faults (back when the station starts)" in out
    assert "BOOT, reset cause power_on" in out
    out = repl.text('diag.set("max_current_ma", 20000)')
    assert "applies when the station starts" in out
    repl("sim.plug(); sim.run(500)")                      # no station: nothing charges
    out = repl.text("diag.pilot()")
    assert "steady +12 V (x1: no current offered)" in out
    assert "B: EV connected" in out
    assert "REFUSED" in repl.text("diag.selftest()")
    repl("sim.unplug()")
    out = repl.text("diag.service(False)")
    assert "removed; restarting" in " ".join(out.split())
    assert not os.path.exists(str(tmp_path / "service"))
    out = repl.text("diag.status()")
    assert "boot         2, reset cause soft" in out
    assert "max_current_ma = 20000" in repl.text('diag.config("max_current")')


def test_meter_and_bus_scan_against_pymodbus(tmp_path):
    with MeterPeer("sdm630", {"voltage_dv": [2301, 2315, 2288]}, slave=1) as peer:
        repl = Repl(tmp_path, meter_port=peer.port)
        try:
            repl("import diag")
            repl("sim.run(3000)")
            out = repl.text("diag.meter()")
            assert "energy meter sdm630 at address 1" in out
            assert re.search(r"voltage +230.1 V  231.5 V  228.8 V", out), out
            assert re.search(r"reading +ok", out), out
            assert "timeouts 0" in out
            out = repl.text("diag.scan(1, 3, 50)")
            assert "  1  answers" in out
            assert "1 answered of 3 asked; 2 timeouts" in out
            assert out.endswith("[1]")
            repl("sim.run(3000)")                         # the station's meter carries on
            assert re.search(r"reading +ok", repl.text("diag.meter()"))
        finally:
            repl.close()
        assert all(len(ln) <= WIDTH for ln in repl.seen)


# -- the device's own path: boot.py and main.py in service mode, diag builds the board -------

DEVICE_START = """
import machine
sim = machine.sim
sim.reset()
# The reference board's front ends: the CP sense follows the PWM pin (no EV: +12 V on the
# high phase, -12 V below the ADC's linear range on the low phase), PP open, the mirror
# contact (closed = 0) follows the coil, the monitor's fault line (active low) follows its
# test input.
sim.set_adc(36, lambda t: 2500 if sim.pwm_output_high(25, t) else 150)
sim.set_adc(39, 3300)
sim.set_input(35, lambda t: 0 if sim.level(26) else 1)
sim.set_input(27, lambda t: 0 if sim.level(14) else 1)
from drivers import clock
clock.source = sim.clock
for _name in ("boot.py", "main.py"):
    with open(%r + "/" + _name) as _f:
        exec(_f.read(), {"__name__": "__main__"})
print("device started")
"""


def test_service_mode_on_the_device_builds_the_board_from_the_board_file(tmp_path):
    import shutil

    from tools.devicefiles import MICROPYTHON, ROOT, micropython_env
    shutil.copy(os.path.join(ROOT, "boards", "reference.json"), str(tmp_path / "board.json"))
    (tmp_path / "service").write_text("")
    child = pexpect.spawn(MICROPYTHON, ["-i", "-c", DEVICE_START % ROOT],
                          env=micropython_env(fakes=True), cwd=str(tmp_path),
                          encoding="utf-8", timeout=20, dimensions=(50, 200))
    child.expect("SERVICE MODE")
    child.expect("main: service mode, application not started")
    child.expect("device started")
    child.expect_exact(PROMPT)
    repl = Repl.__new__(Repl)
    repl.child = child
    repl.seen = []
    try:
        repl("import diag")
        assert repl("machine.sim.wdt_timeout_ms") == ["0"]
        out = repl.text("diag.status()")
        assert "mode         SERVICE MODE (flag file /" in out
        assert "pilot        A: no EV connected (live)" in out
        assert "board        cp-ref-1" in out
        assert "contactor    open, mirror says open" in out
        assert repl("machine.sim.level(26)") == ["0"]            # coil off
        assert repl("machine.sim.wdt_timeout_ms") == ["0"]       # still no watchdog
        assert "no cable" in repl.text("diag.pp()")
        out = repl.text("diag.selftest()")
        assert "pilot PWM 10 % ........ PASS" in out
        assert "residual current ...... PASS" in out
        assert "contactor cycle ....... PASS" in out
        assert out.endswith("True")
        assert repl("machine.sim.level(26)") == ["0"]
        # The coil was energised exactly once, by the cycle.
        assert repl("len([e for e in machine.sim.events() if e[1] == 'pin_level' "
                    "and e[2] == 26 and e[3] == 1])") == ["1"]
        out = repl.text("diag.faults()")
        assert "latched faults (back when the station starts)" in out
        assert "none recorded" in out                     # no station has run here yet
        out = repl.text('diag.set("max_current_ma", 20000)')
        assert "applies when the station starts" in out
        assert "max_current_ma" in (tmp_path / "data" / "config.json").read_bytes().decode(
            "latin-1")
    finally:
        child.sendeof()
        child.expect(pexpect.EOF)
        child.close()
    assert all(len(ln) <= WIDTH for ln in repl.seen)

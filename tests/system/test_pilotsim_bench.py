"""The bench protocol's host side against a fake bench device on a pty pair (socat).

The fake device implements docs/scenarios.md "Bench protocol" with the simulator's own
circuit model, so MEAS answers what the relays would put on a CP line driven at 26.6 %.
"""
import os
import shutil
import subprocess
import tempfile
import threading
import time

import pytest

from tools.pilotsim import bench as bench_mod
from tools.pilotsim import scenario
from tools.pilotsim.model import CABLE_OHMS, PP_OPEN, S2_C, S2_D, S2_OPEN, PilotModel, levels

serial = pytest.importorskip("serial")
SOCAT = shutil.which("socat")


class FakeBenchDevice:
    """Relays as PilotModel attributes; the 'station' drives a fixed duty."""

    def __init__(self, path, duty=266):
        self.ser = serial.Serial(path, 115200, timeout=0.05)
        self.model = PilotModel()
        self.duty = duty
        self.lines = []
        self._stop = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        buf = b""
        while not self._stop:
            try:
                buf += self.ser.read(64)
            except (OSError, serial.SerialException):
                return
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                line = line.decode().strip()
                self.lines.append(line)
                self.ser.write((self.handle(line) + "\n").encode())

    def handle(self, line):
        m = self.model
        parts = line.split()
        if not parts:
            return "ERR empty"
        cmd, args = parts[0], parts[1:]
        flags = {"CPPE": "cp_short_pe", "CPOPEN": "cp_open"}
        if cmd == "HELLO":
            return "OK %s fake" % bench_mod.PROTOCOL
        if cmd == "RESET":
            self.model = PilotModel()
            return "OK"
        if cmd == "MEAS":
            hi, lo = levels(self.duty, m)
            return "OK CP %d %d %d" % (hi, lo, self.duty)
        if len(args) != 1:
            return "ERR %s needs one argument" % cmd
        a = args[0]
        if cmd == "PLUG" and a in ("0", "1"):
            m.plugged = a == "1"
        elif cmd == "S2" and a in ("B", "C", "D"):
            m.s2 = {"B": S2_OPEN, "C": S2_C, "D": S2_D}[a]
        elif cmd == "PP":
            m.cable_ohms = PP_OPEN if a == "OPEN" else int(a)
        elif cmd == "DIODE" and a in ("OK", "SHORT"):
            m.diode_short = a == "SHORT"
        elif cmd in flags and a in ("0", "1"):
            setattr(m, flags[cmd], a == "1")
        elif cmd == "PE" and a in ("0", "1"):
            m.pe_loss = a == "0"
        else:
            return "ERR bad command %s" % line
        m.update()
        return "OK"

    def close(self):
        self._stop = True
        self.thread.join(2)
        self.ser.close()


@pytest.fixture
def pty_pair():
    if SOCAT is None:
        pytest.skip("socat is not installed")
    d = tempfile.mkdtemp(prefix="bench-")
    a, b = os.path.join(d, "host"), os.path.join(d, "device")
    proc = subprocess.Popen([SOCAT, "pty,raw,echo=0,link=%s" % a, "pty,raw,echo=0,link=%s" % b],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        if os.path.exists(a) and os.path.exists(b):
            break
        time.sleep(0.01)
    yield a, b
    proc.terminate()
    proc.wait(5)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def bench(pty_pair):
    host, device = pty_pair
    dev = FakeBenchDevice(device)
    b = bench_mod.Bench(host)
    yield b, dev
    b.ser.close()
    dev.close()


def test_hello_and_levels_per_ev_state(bench):
    b, dev = bench
    assert b.hello().startswith(bench_mod.PROTOCOL)
    b.reset()
    b.set_cable(32)
    assert dev.model.cable_ohms == CABLE_OHMS[32]
    hi, lo, duty = b.measure()
    assert (hi, lo, duty) == (12000, -12000, 266)          # A
    b.apply(scenario.Step(0, "ev", "plug", {}))
    assert 8900 < b.measure()[0] < 9100                    # B
    b.apply(scenario.Step(0, "ev", "request", {}))
    assert 5900 < b.measure()[0] < 6100                    # C
    b.apply(scenario.Step(0, "fault", "diode_short", {"on": True}))
    hi, lo, _ = b.measure()
    assert lo == -hi                                       # diode bypassed
    b.apply(scenario.Step(0, "fault", "cp_short_pe", {"on": True}))
    assert b.measure()[:2] == (0, 0)
    assert dev.lines[:3] == ["HELLO", "RESET", "PP 220"]


def test_refusal_and_silence_are_errors(bench):
    b, dev = bench
    with pytest.raises(bench_mod.BenchError, match="bad command"):
        b.command("S2", "X")
    dev.close()                                            # the device goes quiet
    with pytest.raises(bench_mod.BenchError, match="no reply"):
        b.command("HELLO")


def test_steps_the_bench_cannot_do_are_skipped(bench):
    b, _dev = bench
    assert b.apply(scenario.Step(0, "fault", "rcd_trip", {"on": True})) is False
    assert b.apply(scenario.Step(0, "backend", "stop", {"args": {}})) is False


def test_play_a_scenario_in_wall_time(bench):
    b, dev = bench
    sc = scenario.parse({"name": "bench-short", "duration_ms": 400, "steps": [
        {"at": 0, "ev": "plug"}, {"at": 100, "ev": "request"},
        {"at": 200, "fault": "rcd_trip"}, {"at": 300, "ev": "unplug"}]})
    records, skipped = bench_mod.play(sc, b, sample_ms=50)
    assert [s.name for s in skipped] == ["rcd_trip"]
    kinds = [r["k"] for r in records]
    assert kinds[0] == "start" and kinds[-1] == "end"
    highs = [r["cp_hi"] for r in records if r["k"] == "cp"]
    # The relay states show up on the line in scenario order: B (9 V), C (6 V), A (12 V).
    seen = []
    for h in highs:
        lvl = "A" if h > 11000 else "B" if h > 8000 else "C" if h > 5000 else "?"
        if not seen or seen[-1] != lvl:
            seen.append(lvl)
    assert seen == ["B", "C", "A"]
    assert "S2 C" in dev.lines and "PLUG 0" in dev.lines

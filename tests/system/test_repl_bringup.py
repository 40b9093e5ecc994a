"""diag.bringup() at a real MicroPython REPL (the stand-in, tools/simrepl.py's station on the
simulator's board, a pymodbus meter), driven with pexpect as a technician would: the test
answers the input() prompts, and the "hand" that plugs the 2.74 kOhm resistor is a wrapper
around input() that changes the simulated circuit after the answer."""
import json
import re

import pexpect

from tests.system.meter_peer import MeterPeer
from tests.system.test_repl_diag import WIDTH, Repl

HAND = """
from tools.pilotsim.model import S2_OPEN
_m = sim.board.model if hasattr(sim, 'board') else None
def hand(prompt):
    answer = input(prompt)
    m = firmware.station.current.board.model
    if answer != 's':
        m.plugged = 'Plug' in prompt
        m.s2 = S2_OPEN
        m.update()
    return answer
"""


def _bringup(repl, answers):
    for line in HAND.strip().splitlines():
        repl.child.sendline(line)
    repl.child.sendline("")
    repl.child.expect_exact(">>> ")
    repl.child.sendline("ok = diag.bringup(hand)")
    out = ""
    for answer in answers:
        repl.child.expect(r"\[Enter / s = skip\] ")
        out += repl.child.before + repl.child.after
        repl.child.sendline(answer)
    repl.child.expect_exact(">>> ")
    out = (out + repl.child.before).replace("\r", "")
    repl.seen += out.split("\n")
    assert "Traceback" not in out, out
    return out


def test_bringup_end_to_end_on_the_simulated_board(tmp_path):
    with MeterPeer("sdm630", {"voltage_dv": [2301, 2315, 2288]}, slave=1) as peer:
        repl = Repl(tmp_path, meter_port=peer.port)
        try:
            repl("import diag, firmware.station")
            repl("sim.run(2000)")
            out = _bringup(repl, ["", ""])
            assert repl.text("ok") == "True", out
        finally:
            repl.close()
    steps = dict(re.findall(r"^  (\S.{21}) (PASS|FAIL|SKIP|REFUSED)", out, re.M))
    names = [k.strip() for k in steps]
    for pct in (5, 10, 50, 96, 100):
        assert "CP open %d %%" % pct in names
        assert "CP 2k74 %d %%" % pct in names
    for name in ("heap after import", "ADC per CP sample", "PP", "residual current",
                 "contactor cycle", "meter", "safety tick", "longest GC pause"):
        assert name in names, names
    assert {k.strip(): v for k, v in steps.items()}["contactor cycle"] == "PASS"
    # The ticket line and the file carry the same figures.
    line = [ln for ln in out.splitlines() if ln.startswith("BRINGUP ")]
    assert len(line) == 1 and " PASS " in line[0], out
    rec = json.loads((tmp_path / "bringup.json").read_text()) \
        if (tmp_path / "bringup.json").exists() else None
    if rec is None:
        found = list(tmp_path.rglob("bringup.json"))
        assert found, out
        rec = json.loads(found[0].read_text())
    f = rec["figures"]
    assert rec["verdict"] == "PASS" and rec["fail"] == 0
    assert "heap=%d" % f["heap_free"] in line[0]
    assert "tick=%d/%d/%d" % (f["tick_p50_us"], f["tick_p99_us"], f["tick_max_us"]) in line[0]
    # No EV: +12 V high and -12 V low plateaus; with the resistor (state B) 9 V high.
    assert 11000 <= f["cp_open_50"][0] <= 13000 and f["cp_open_50"][1] <= -11000
    assert 8000 <= f["cp_2k74_50"][0] <= 10000
    assert f["cp_open_100"][1] is None
    assert f["meter_ok"] is True
    assert [ln for ln in repl.seen if len(ln) > WIDTH] == []


def test_bringup_with_the_resistor_skipped_says_so(tmp_path):
    repl = Repl(tmp_path)
    try:
        repl("import diag, firmware.station")
        out = _bringup(repl, ["s"])
    finally:
        repl.close()
    assert re.search(r"CP resistor +SKIP", out), out
    assert "CP 2k74" not in out
    assert re.search(r"meter +SKIP", out) or re.search(r"meter +FAIL", out), out

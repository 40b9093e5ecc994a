"""tools/simrepl.py as a person starts it: Ctrl-C stops the firmware's loop and leaves the
REPL, as on the board (main.py), instead of killing the simulator."""
import sys

import pexpect

from tools.devicefiles import ROOT


def test_ctrl_c_interrupts_the_firmware_and_returns_to_the_repl(tmp_path):
    child = pexpect.spawn(sys.executable, ["-m", "tools.simrepl", "--storage", str(tmp_path)],
                          cwd=ROOT, timeout=60, encoding="utf-8")
    try:
        child.expect("simulated station ready")
        child.expect(">>> ")
        child.sendline("sim.plug(); sim.request(); sim.run(3000); sim.board.contactor_cmd")
        child.expect("True")
        child.expect(">>> ")
        # A run far longer than the test: only Ctrl-C can end it.
        child.sendline("sim.run(100000000)")
        child.expect("sim.run")
        import time
        time.sleep(1.0)
        child.sendintr()
        child.expect("stopped \\(Ctrl-C\\): contactor open")
        child.expect(">>> ")
        child.sendline("sim.board.contactor_cmd, sim.board.duty")
        child.expect("\\(False, 0\\)")
        child.expect(">>> ")
        # The simulator is still there and steps on.
        child.sendline("t0 = sim.board.now_ms; sim.run(100); sim.board.now_ms - t0")
        child.expect("\\r\\n100\\r\\n")
        assert child.isalive()
    finally:
        child.sendeof()
        child.expect(pexpect.EOF)
        child.close()

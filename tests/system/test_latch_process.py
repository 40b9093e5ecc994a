"""Latched faults across a killed process on the real unix port and a real filesystem.

The whole station runs in a MicroPython process on the simulator's board (storage in a
temporary directory). A residual-current trip is latched; the process is killed (SIGKILL, no
shutdown: a power cut or the watchdog) while the EV stays plugged in and requesting; the
next process must find the fault before its first tick and keep the contactor open, and an
unplug must clear it. Complements tests/unit/test_reset_latches.py (in-memory flash, every
flash operation) with the port's own open/rename and a real process restart.
"""
import os
import subprocess
import tempfile

from tools.devicefiles import MICROPYTHON, ROOT, micropython_env

STATION = r'''
import sys
from firmware import faults
from firmware.station import TICK_MS, Station
from tools.pilotsim.model import S2_C, S2_OPEN
from tools.pilotsim.simboard import SimBoard

mode = sys.argv[2]
board = SimBoard(storage=sys.argv[1], start_ms=int(sys.argv[3]))
board.model.plugged = True
board.model.s2 = S2_C
board.model.update()
st = Station(board, config={"rcd_selftest": False})
print("BOOT", ",".join(st.faults.active_names()) or "-")

def run(ms):
    closed = False
    for _ in range(ms // TICK_MS):
        st.step()
        board.sleep_ms(TICK_MS)
        closed = closed or board.contactor_cmd
    return closed

if mode == "trip":
    print("CLOSED", run(2000))
    board.rcd_fault = True
    run(50)
    board.rcd_fault = False          # the leak is gone; the latch stays
    print("TRIPPED", st.faults.is_active(faults.RCD_TRIPPED))
    sys.stdout.flush()
    while True:
        run(10)
elif mode == "plugged":
    print("CLOSED", run(3000))
    print("ACTIVE", st.faults.is_active(faults.RCD_TRIPPED))
else:
    board.model.plugged = False
    board.model.s2 = S2_OPEN
    board.model.update()
    run(1000)
    print("ACTIVE", st.faults.is_active(faults.RCD_TRIPPED))
'''


def _run(script, storage, mode, start_ms, kill_after_line=None):
    env = micropython_env()
    env["MICROPYPATH"] = env["MICROPYPATH"] + ":" + ROOT
    p = subprocess.Popen([MICROPYTHON, script, storage, mode, str(start_ms)], cwd=ROOT,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in p.stdout:
            lines.append(line.split())
            if kill_after_line and line.startswith(kill_after_line):
                p.kill()                     # SIGKILL: no shutdown, nothing flushed by us
                break
        p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    return {ln[0]: ln[1:] for ln in lines if ln}, p.stderr.read()


def test_a_latched_trip_outlives_a_killed_process_until_the_ev_is_unplugged():
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "station.py")
        with open(script, "w") as f:
            f.write(STATION)
        storage = os.path.join(tmp, "data")
        out, err = _run(script, storage, "trip", 0, kill_after_line="TRIPPED")
        assert out.get("CLOSED") == ["True"] and out.get("TRIPPED") == ["True"], (out, err)
        out, err = _run(script, storage, "plugged", 100000)
        assert out.get("BOOT") == ["RCD_TRIPPED"], (out, err)
        assert out.get("CLOSED") == ["False"] and out.get("ACTIVE") == ["True"], (out, err)
        out, err = _run(script, storage, "unplugged", 200000)
        assert out.get("BOOT") == ["RCD_TRIPPED"], (out, err)
        assert out.get("ACTIVE") == ["False"], (out, err)
        out, err = _run(script, storage, "plugged", 300000)
        assert out.get("BOOT") == ["-"] and out.get("CLOSED") == ["True"], (out, err)

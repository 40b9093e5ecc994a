"""Crash safety on the real unix port and a real filesystem: the session manager runs sessions
in a MicroPython process that is killed (SIGKILL) at arbitrary moments, then restarted on the
directory as it was left, many times in a row.

Unlike the power-cut filesystem double (tests/unit/test_session_powercut.py), this exercises
the real open/rename/remove of the MicroPython unix port (OsFs). A killed process leaves its
written data in the OS cache, so torn writes are the double's job; this test covers the real
file operations and the restart logic on the port the firmware runs on.

The station prints what it has been told is done; after every restart it prints what it
found. The checks: every record handed out and not acknowledged is pending again, exactly
once; nothing acknowledged returns; every finished session is counted once.
"""
import os
import random
import select
import signal
import subprocess
import tempfile
import time

from tools.devicefiles import MICROPYTHON, ROOT, micropython_env, mp_cwd

STATION = r'''
import sys
from firmware.config import Config
from firmware.counters import Counters
from firmware.session import SessionManager
from firmware.states import STATE_A, STATE_B2, STATE_C2
from firmware.storage import Store

def say(*parts):
    sys.stdout.write(" ".join([str(p) for p in parts]) + "\n")

store = Store(sys.argv[1])
meter = Store(sys.argv[2])              # the meter's own memory: its register survives
counters = Counters(store)
boot = counters.boot(0)
sm = SessionManager(Config({"session_checkpoint_s": 10}), store, counters, boot)
raw = meter.read("register")
register = int(raw) if raw is not None else 100000
t = 0
rec = sm.recover(t, register)
say("BOOT", boot, rec["id"] if rec else "-")
say("PENDING", ",".join([r["id"] for r in sm.pending()]) or "-")
say("COUNTED", counters.sessions, counters.energy_wh)
sm.on_meter(t, register, 0, True)
n = 0
while True:
    n += 1
    sm.on_state(t, STATE_B2)
    sm.set_id_tag("TAG%d" % n, t, "local_list")
    sm.on_state(t, STATE_C2)
    sm.on_contactor(t, True)
    for _ in range(6):
        t += 10000
        register += 20                      # 7.2 kW
        meter.write_atomic("register", str(register).encode())
        sm.on_meter(t, register, 7200, True)
        sm.tick(t)
    sm.on_contactor(t, False)
    t += 500
    sm.on_meter(t, register, 0, True)      # the final reading the station holds the unplug for
    sm.on_state(t, STATE_A)
    for r in sm.pop_completed():
        say("DONE", r["id"], r["energy_wh"])
    for r in sm.pending()[:1]:
        say("ACKING", r["id"])
        if sm.acknowledged(r["id"]):
            say("ACK", r["id"])
    say("END", n)
'''


def _parse(out):
    lines = [ln.split(" ") for ln in out.splitlines() if ln]
    # a killed process may leave half a line at the end
    if lines and out and not out.endswith("\n"):
        lines.pop()
    return lines


def _read_until_sessions(p, count, hang_guard_s=120):
    """Bytes of stdout up to the end of the station's `count`-th session of this boot."""
    buf = b""
    deadline = time.monotonic() + hang_guard_s
    while buf.count(b"\nEND ") < count:
        if time.monotonic() > deadline:
            raise AssertionError("station made no progress: %r" % buf[-500:])
        ready, _w, _x = select.select([p.stdout], [], [], 1.0)
        if ready:
            chunk = os.read(p.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
    return buf


def test_killed_at_random_moments_loses_and_duplicates_nothing():
    rng = random.Random(61851)
    with tempfile.TemporaryDirectory(prefix="cp-powercut-") as tmp:
        script = os.path.join(tmp, "station.py")
        with open(script, "w") as f:
            f.write(STATION)
        data = os.path.join(tmp, "data")
        meter = os.path.join(tmp, "meter")
        done = {}            # id -> energy, as handed out
        acked = set()
        maybe_acked = set()  # ACKING printed, the kill came before ACK: either outcome is right
        boots = 0
        restarts_with_recovery = 0
        for cycle in range(12):
            p = subprocess.Popen([MICROPYTHON, script, data, meter], cwd=mp_cwd(),
                                 env=micropython_env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
            # Let it finish a few sessions (however fast this machine is), then cut at an
            # arbitrary moment inside the next ones.
            head = _read_until_sessions(p, rng.randint(1, 4))
            time.sleep(rng.uniform(0.0, 0.05))
            p.send_signal(signal.SIGKILL)
            rest, err = p.communicate(timeout=60)
            out = (head + rest).decode()
            err = err.decode()
            assert "Traceback" not in err, err
            lines = _parse(out)
            if not lines or lines[0][0] != "BOOT":
                continue           # killed before it could say anything; still a valid cut
            boots += 1
            boot = int(lines[0][1])
            if lines[0][2] != "-":
                restarts_with_recovery += 1
            # what this boot found must match what earlier boots were told
            if len(lines) >= 3 and lines[1][0] == "PENDING" and lines[2][0] == "COUNTED":
                pending = [] if lines[1][1] == "-" else lines[1][1].split(",")
                assert len(pending) == len(set(pending)), pending
                for sid in done:
                    if sid in acked:
                        assert sid not in pending, (cycle, sid)
                    elif sid not in maybe_acked:
                        assert sid in pending, (cycle, sid, pending)
                finished = set(done) | set(pending)
                # a session recovered as power_loss in this boot is pending and counted
                assert int(lines[2][1]) == len(finished), (cycle, lines[2], sorted(finished))
            acking = None
            for ln in lines[1:]:
                if ln[0] == "DONE":
                    # pending records of earlier boots are offered again, unchanged
                    if ln[1] in done:
                        assert done[ln[1]] == int(ln[2]), ln
                        assert ln[1] not in acked, ("acknowledged, handed out again", ln[1])
                    done[ln[1]] = int(ln[2])
                elif ln[0] == "ACKING":
                    acking = ln[1]
                elif ln[0] == "ACK":
                    acked.add(ln[1])
                    acking = None
            if acking is not None:
                maybe_acked.add(acking)
        assert boots >= 6
        assert len(done) >= 12, done
        assert len(acked) >= 12
        # the cuts fell inside live sessions often enough to exercise the recovery
        assert restarts_with_recovery >= 3

# Out of memory anywhere ends safe. The real boot.py, main.py and Station on the fake ESP32
# (tests/system/devicerun.py) run a charging session on the stand-in with the heap walked
# down 1 KB at a time, from where the session completes to where not even boot.py fits. At
# every size: the contactor closes only while the EV asks (C) and opens in time, it is open
# at the end, and the run ends in one of the safe ways:
#   - the session completes (a MemoryError in the service work is caught by the station's
#     guard and raised as INTERNAL_ERROR while the safety tick goes on);
#   - main.py's crash path opens the contactor, records the traceback and resets the chip,
#     and the next boot reports it (INTERNAL_ERROR) or, short of heap again, resets again;
#   - boot.py or main.py itself cannot run, or the board file cannot even be read into the
#     heap (main.py returns): the port drops to the REPL with the coil pin as boot.py left
#     it (off, or an input held off by its pull resistor).
import json
import os
import shutil

import pytest

from test_boot_main import run_device

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONTACTOR = 26
# EV (32 A cable) plugs at 1 s, asks for charge at 2 s, stops at 6 s, leaves at 7 s.
SESSION = {"use_standin": False, "run_ms": 8000, "devices": True, "log_events": 256,
           "brief": True,
           "ev": [[1000, "B", 220], [2000, "C", 220], [6000, "B", 220], [7000, "A", 220]]}
# The next boot after a reset, no EV; long enough for the crash path's 3 s wait to end.
REBOOT = {"use_standin": False, "run_ms": 5000, "devices": True, "log_events": 64,
          "brief": True, "reset_cause": 2, "ev": [[0, "A", 100000]]}
LARGEST_KB = 100        # completes with room to spare
SMALLEST_KB = 40        # below what boot.py needs
SAFE_OUTCOMES = ("time up", "reset", "repl", "main returned")


def _fsroot(tmp_path, kb):
    d = tmp_path / ("heap%d" % kb)
    d.mkdir()
    shutil.copy(os.path.join(ROOT, "boards", "reference.json"), str(d / "board.json"))
    return str(d)


def _check_contactor(r, kb, ev_in_c_us=(2000000, 6000000)):
    history = r["contactor"]
    closes = [t for t, v in history if v == 1]
    opens = [t for t, v in history if v == 0 and t > 0]
    for t in closes:
        # Closed only while the EV asks for charge ...
        assert ev_in_c_us[0] < t < ev_in_c_us[1], (kb, history)
    if closes:
        # ... and opened again: within 100 ms of C -> B, or at once by the crash path.
        assert opens and opens[-1] >= closes[-1], (kb, history)
        assert opens[-1] <= ev_in_c_us[1] + 100000, (kb, history)
    assert r["levels"][str(CONTACTOR)] == 0, (kb, r)


def test_out_of_heap_at_every_size_ends_safe(tmp_path):
    outcomes = {}
    for kb in range(LARGEST_KB, SMALLEST_KB - 1, -1):
        root = _fsroot(tmp_path, kb)
        r = run_device(root, SESSION, heap="%dK" % kb)
        assert r["outcome"] in SAFE_OUTCOMES, (kb, r["outcome"], r["stdout"][-1500:])
        assert not r["wdt_expired"], kb
        _check_contactor(r, kb)
        crash_file = os.path.join(root, "crash.txt")
        if r["outcome"] == "reset":
            # The crash path recorded why before it reset the chip ...
            with open(crash_file, "rb") as f:
                assert b"MemoryError" in f.read(), kb
            # ... and the next boot either reports it or, out of heap again, resets again
            # (main.py stops after its crash-loop limit: tests/system/test_boot_crashloop.py).
            again = run_device(root, REBOOT, heap="%dK" % kb)
            assert again["outcome"] in SAFE_OUTCOMES, (kb, again["stdout"][-1500:])
            assert not [t for t, v in again["contactor"] if v == 1], kb      # no EV: never
            assert again["levels"][str(CONTACTOR)] == 0, kb
            if again["outcome"] == "time up":
                assert "INTERNAL_ERROR" in again["faults"], (kb, again["faults"])
        elif r["outcome"] == "time up":
            # Completed: the contactor cycled for the EV.
            assert [t for t, v in r["contactor"] if v == 1], (kb, r["contactor"])
        outcomes[kb] = r["outcome"]
    # The walk covers all three endings: it really went from enough heap to far too little.
    assert outcomes[LARGEST_KB] == "time up"
    assert "reset" in outcomes.values()
    assert outcomes[SMALLEST_KB] != "time up"
    print(json.dumps(outcomes))


@pytest.mark.parametrize("kb", [LARGEST_KB])
def test_the_walk_would_see_a_contactor_left_closed(tmp_path, kb):
    # The check itself: a history where the contactor stays closed past C -> B fails it.
    r = run_device(_fsroot(tmp_path, kb), SESSION, heap="%dK" % kb)
    bad = dict(r, contactor=r["contactor"][:-1])            # drop the opening
    with pytest.raises(AssertionError):
        _check_contactor(bad, kb)

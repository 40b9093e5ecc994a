"""Crash loops: boot.py and main.py on the MicroPython unix port with the fake ESP32
(tests/system/devicerun.py), carrying RTC memory from one simulated reset to the next.

After bootinfo.CRASH_LIMIT (5) crashes in a row (an exception or a watchdog reset) the next
boot stays at the REPL with the contactor off, the pilot at state F and no watchdog; a
power-on, or a clean run of CLEAN_RUN_MS, gives the application another try.
"""
import os

from test_boot_main import CONTACTOR, HARD, PWRON, WDT, events, fsroot, run_device  # noqa: F401

CRASH_LIMIT = 5
PILOT = 25


def crash_run(fsroot, rtc, cause=HARD):
    return run_device(fsroot, {"reset_cause": cause, "rtc_memory": rtc,
                               "station": {"crash_at_step": 2, "crash_message": "boom again"}})


def test_five_crashes_in_a_row_leave_the_station_at_the_repl(fsroot):
    rtc = ""
    cause = PWRON
    for n in range(CRASH_LIMIT):
        r = crash_run(fsroot, rtc, cause)
        assert r["outcome"] == "reset" and r["reset_count"] == 1, r["stdout"]
        assert r["crashes"] == n                       # counted before this run
        rtc = r["rtc_memory"]
        assert rtc == "cp-crashes:%d" % (n + 1)
        cause = HARD                                   # machine.reset() keeps RTC memory
    assert "after the reset the application stays off" in r["stdout"]

    r = run_device(fsroot, {"reset_cause": HARD, "rtc_memory": rtc,
                            "station": {"steps_before_stop": 5}})
    assert r["outcome"] == "main returned"
    assert r["reset_count"] == 0 and r["wdt_timeout_ms"] == 0
    assert r["steps"] == 0 and r["constructed_with"] is None
    assert "ERROR: 5 crashes in a row (limit 5); the application stays off." in r["stdout"]
    assert "RuntimeError: boom again" in r["stdout"]              # why, from crash.txt
    # boot.py drove the coil off and the pilot to state F; nothing drove them since.
    assert [e[3] for e in events(r, "pin_level", CONTACTOR)] == [0]
    assert [e[3] for e in events(r, "pin_level", PILOT)] == [0]
    assert not events(r, "pwm_init") and not events(r, "wdt_start")

    # Power-on: RTC memory is gone and the application starts again.
    r = run_device(fsroot, {"reset_cause": PWRON, "station": {"steps_before_stop": 3}})
    assert r["outcome"] == "stopped" and r["steps"] == 3 and r["crashes"] == 0


def test_watchdog_resets_count_towards_the_limit(fsroot):
    r = run_device(fsroot, {"reset_cause": WDT, "rtc_memory": "cp-crashes:3",
                            "station": {"hang_at_step": 2, "steps_before_stop": 100}})
    assert r["crashes"] == 4 and r["outcome"] == "reset" and r["wdt_expired"]
    # The watchdog reset that ended that run is the fifth.
    r = run_device(fsroot, {"reset_cause": WDT, "rtc_memory": r["rtc_memory"]})
    assert r["crashes"] == 5
    assert r["outcome"] == "main returned" and r["wdt_timeout_ms"] == 0 and r["steps"] == 0
    assert "5 crashes in a row" in r["stdout"]


def test_a_clean_run_empties_the_count(fsroot):
    # CLEAN_RUN_MS shortened so the simulated run stays short; the stand-in's steps take
    # 20 ms of simulated time plus the pilot bursts.
    r = run_device(fsroot, {"reset_cause": HARD, "rtc_memory": "cp-crashes:4",
                            "bootinfo": {"CLEAN_RUN_MS": 1000},
                            "station": {"steps_before_stop": 100}})
    assert r["outcome"] == "stopped" and r["steps"] == 100
    assert r["now_us"] > 1000 * 1000
    assert r["rtc_memory"] == "cp-crashes:0"
    # A crash before the clean run is over keeps counting.
    r = run_device(fsroot, {"reset_cause": HARD, "rtc_memory": "cp-crashes:4",
                            "bootinfo": {"CLEAN_RUN_MS": 60000},
                            "station": {"crash_at_step": 10, "steps_before_stop": 100}})
    assert r["outcome"] == "reset" and r["rtc_memory"] == "cp-crashes:5"


def test_a_crash_file_that_is_not_utf8_is_reported_not_raised(fsroot):
    with open(os.path.join(fsroot, "crash.txt"), "wb") as f:
        f.write(b"reset_cause=hard\nTraceback\nValueError: \xff\xfe\n")
    r = run_device(fsroot, {"reset_cause": HARD, "station": {"steps_before_stop": 3}})
    assert r["outcome"] == "stopped" and r["steps"] == 3 and r["reset_count"] == 0
    assert "previous run crashed" in r["stdout"] and "ValueError: ??" in r["stdout"]
    assert r["seen_last_crash"].startswith("reset_cause=hard\n")

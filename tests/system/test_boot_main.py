"""boot.py and main.py on the MicroPython unix port with the fake ESP32 machine, in
simulated time: normal start, service mode, the crash path and board-file errors.

Each run is a micropython subprocess (MICROPYPATH from tools.devicefiles) whose working
directory plays the device's filesystem root: board.json, crash.txt and the service flag
live there. tests/system/devicerun.py executes boot.py then main.py like the ESP32 does
and reports the fake machine's event log as JSON.
"""
import json
import os
import shutil
import subprocess

import pytest

from tools.devicefiles import MICROPYTHON, ROOT, micropython_env

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(ROOT, "boards", "reference.json")
CONTACTOR = 26
PWRON, HARD, WDT = 1, 2, 3


def reference():
    with open(REFERENCE) as f:
        return json.load(f)


def run_device(fsroot, scenario=None, board=None, heap=None):
    if board is not None:
        with open(os.path.join(fsroot, "board.json"), "w") as f:
            json.dump(board, f)
    # The scenario lives beside, not inside, the device's filesystem root.
    scenario_file = fsroot.rstrip("/") + ".scenario.json"
    with open(scenario_file, "w") as f:
        json.dump(scenario or {}, f)
    env = micropython_env()
    env["MICROPYPATH"] = HERE + ":" + env["MICROPYPATH"]
    heap_arg = ["-X", "heapsize=" + heap] if heap else []
    r = subprocess.run([MICROPYTHON] + heap_arg + [os.path.join(HERE, "devicerun.py"), ROOT,
                                                   scenario_file],
                       cwd=fsroot, env=env, capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("DEVICERUN ")]
    assert lines, out
    result = json.loads(lines[-1][len("DEVICERUN "):])
    for ln in r.stdout.splitlines():
        if ln.startswith("DEVICERUN+ "):
            result.update(json.loads(ln[len("DEVICERUN+ "):]))
    result["stdout"] = out
    return result


def events(result, kind=None, pin=None):
    return [e for e in result["events"]
            if (kind is None or e[1] == kind) and (pin is None or e[2] == pin)]


@pytest.fixture
def fsroot(tmp_path):
    shutil.copy(REFERENCE, str(tmp_path / "board.json"))
    return str(tmp_path)


def test_normal_start_runs_the_station_with_the_watchdog(fsroot):
    r = run_device(fsroot, {"station": {"steps_before_stop": 5}})
    assert r["outcome"] == "stopped"
    assert r["steps"] == 5
    assert r["constructed_with"] == ["Esp32Board", None]
    assert r["wdt_timeout_ms"] == 8000 and not r["wdt_expired"]
    assert r["reset_count"] == 0
    assert "boot: reset cause power_on" in r["stdout"]
    assert r["seen_reset_cause"] == "power_on"
    assert r["seen_last_crash"] is None
    assert not os.path.exists(os.path.join(fsroot, "crash.txt"))
    # The steps took simulated time (20 ms each, plus the bursts).
    assert r["now_us"] >= 5 * 20000


def test_contactor_is_driven_off_before_anything_else(fsroot):
    r = run_device(fsroot, {"station": {"steps_before_stop": 1}})
    first, second = r["events"][0], r["events"][1]
    assert first[1:] == ["pin_mode", CONTACTOR, 3]       # Pin.OUT
    assert second[1:] == ["pin_level", CONTACTOR, 0]
    assert r["levels"][str(CONTACTOR)] == 0
    # The watchdog starts only after the board is built.
    kinds = [e[1] for e in r["events"]]
    assert kinds.index("wdt_start") > kinds.index("pwm_init")


def test_active_low_contactor_is_driven_high_first(fsroot):
    board = reference()
    board["contactor"]["active_high"] = False
    r = run_device(fsroot, {"station": {"steps_before_stop": 1}}, board=board)
    assert r["events"][1][1:] == ["pin_level", CONTACTOR, 1]
    assert all(e[3] == 1 for e in events(r, "pin_level", CONTACTOR))


def test_service_mode_by_flag_file(fsroot):
    open(os.path.join(fsroot, "service"), "w").close()
    r = run_device(fsroot)
    assert r["service_mode"] is True
    assert r["outcome"] == "main returned"
    assert r["steps"] == 0 and r["constructed_with"] is None
    assert r["wdt_timeout_ms"] == 0
    assert not events(r, "pwm_init")
    assert "SERVICE MODE" in r["stdout"]
    assert r["levels"][str(CONTACTOR)] == 0


def test_service_mode_shows_state_f_on_the_pilot(fsroot):
    # IEC 61851-1: a station that is not available shows state F (steady -12 V), not a
    # floating output stage. Non-inverting stage: pin low is -12 V; inverting: pin high.
    open(os.path.join(fsroot, "service"), "w").close()
    r = run_device(fsroot)
    assert r["service_mode"] is True
    assert [e[3] for e in events(r, "pin_level", 25)] == [0]
    board = reference()
    board["pilot"]["pwm_inverted"] = True
    r = run_device(fsroot, board=board)
    assert [e[3] for e in events(r, "pin_level", 25)] == [1]
    # Contactor first, then the pilot.
    kinds = [(e[1], e[2]) for e in r["events"]]
    assert kinds.index(("pin_level", CONTACTOR)) < kinds.index(("pin_level", 25))


def test_service_mode_by_pin(fsroot):
    r = run_device(fsroot, {"inputs": {"18": 0}})     # jumper pulls GPIO 18 low
    assert r["service_mode"] is True
    assert r["wdt_timeout_ms"] == 0 and r["steps"] == 0
    r = run_device(fsroot, {"inputs": {"18": 1}, "station": {"steps_before_stop": 1}})
    assert r["service_mode"] is False and r["steps"] == 1


def test_crash_opens_contactor_records_and_resets(fsroot):
    r = run_device(fsroot, {"station": {"crash_at_step": 3, "crash_message": "boom in step 3"}})
    assert r["outcome"] == "reset" and r["reset_count"] == 1
    # The station closed the contactor just before dying; the crash path opened it again
    # and put the pilot to state F.
    levels = [e[3] for e in events(r, "pin_level", CONTACTOR)]
    assert levels[-2:] == [1, 0]
    assert r["levels"][str(CONTACTOR)] == 0
    assert r["pilot_duty"] == 0
    # Reset after the delay, with the watchdog fed meanwhile.
    reset_at = events(r, "reset")[0][0]
    assert reset_at - r["crash_at_us"] >= 3000 * 1000
    assert not r["wdt_expired"]
    with open(os.path.join(fsroot, "crash.txt")) as f:
        text = f.read()
    assert "RuntimeError: boom in step 3" in text
    assert "standin_station.py" in text
    assert text.startswith("reset_cause=power_on")

    # Next boot: the reset cause and the previous crash are reported.
    again = run_device(fsroot, {"reset_cause": HARD, "station": {"steps_before_stop": 1}})
    assert "boot: reset cause hard" in again["stdout"]
    assert "previous run crashed" in again["stdout"]
    assert "boom in step 3" in again["stdout"]
    assert "boom in step 3" in again["seen_last_crash"]


def test_crash_file_is_bounded(fsroot):
    r = run_device(fsroot, {"station": {"crash_at_step": 1, "crash_message": "x" * 6000}})
    assert r["outcome"] == "reset"
    size = os.path.getsize(os.path.join(fsroot, "crash.txt"))
    assert 1000 < size <= 2048


def test_run_returning_is_a_crash(fsroot):
    r = run_device(fsroot, {"station": {"steps_before_stop": 2, "return_from_run": True}})
    assert r["outcome"] == "reset"
    with open(os.path.join(fsroot, "crash.txt")) as f:
        assert "Station.run() returned" in f.read()


def test_a_stuck_loop_is_reset_by_the_watchdog(fsroot):
    r = run_device(fsroot, {"station": {"hang_at_step": 2, "steps_before_stop": 100}})
    assert r["outcome"] == "reset" and r["reset_count"] == 1 and r["wdt_expired"]
    reset = events(r, "reset")[0]
    assert reset[3] == WDT
    # Within watchdog_ms (8 s) of the last feed, which came in the step before the hang.
    assert 0 < reset[0] - r["crash_at_us"] <= 8000 * 1000
    assert r["steps"] == 2


def test_watchdog_reset_cause_is_reported(fsroot):
    r = run_device(fsroot, {"reset_cause": WDT, "station": {"steps_before_stop": 1}})
    assert r["seen_reset_cause"] == "watchdog"
    assert "boot: reset cause watchdog" in r["stdout"]


@pytest.mark.parametrize("change, expected", [
    (lambda b: b["pilot"].__setitem__("adc_pin", 15), "pilot.adc_pin: GPIO 15 is on ADC2"),
    (lambda b: b["pp"].__setitem__("adc_pin", 4), "pp.adc_pin: GPIO 4 is on ADC2"),
    (lambda b: b["led"].__setitem__("red_pin", 37), "led.red_pin: GPIO 37 is input-only"),
    (lambda b: b["rs485"].__setitem__("de_pin", 26), "GPIO 26 is already used"),
    (lambda b: b["pilot"].pop("pwm_pin"), "pilot.pwm_pin: required"),
    (lambda b: b["lock"].__setitem__("retries", "2"), "lock.retries: expected an integer"),
])
def test_board_file_errors_stop_cleanly(fsroot, change, expected):
    board = reference()
    change(board)
    r = run_device(fsroot, board=board)
    assert expected in r["stdout"]
    assert r["outcome"] == "main returned"      # stays at the REPL, no reset loop
    assert r["reset_count"] == 0 and r["wdt_timeout_ms"] == 0
    assert r["steps"] == 0
    # boot.py drives no pin from a file that fails validation: the coil pin stays an
    # input and the board's pull-down holds the coil off.
    assert r["levels"][str(CONTACTOR)] is None
    assert not events(r, "pin_mode") and not events(r, "pin_level")
    with open(os.path.join(fsroot, "crash.txt")) as f:
        assert expected in f.read()


def test_ctrl_c_opens_the_contactor_and_returns_to_the_repl(fsroot):
    r = run_device(fsroot, {"station": {"interrupt_at_step": 2}})
    assert r["outcome"] == "main returned" and r["reset_count"] == 0
    assert [e[3] for e in events(r, "pin_level", CONTACTOR)][-2:] == [1, 0]
    assert "stopped (Ctrl-C): contactor open" in r["stdout"]
    assert not os.path.exists(os.path.join(fsroot, "crash.txt"))


def test_unusable_contactor_pin_is_reported_by_boot_and_main(fsroot):
    board = reference()
    board["contactor"]["pin"] = 36            # input-only
    board["contactor"]["mirror_pin"] = None
    board["pilot"]["adc_pin"] = 35
    r = run_device(fsroot, board=board)
    assert "boot: contactor pin not driven" in r["stdout"]
    assert "contactor.pin: GPIO 36 is input-only" in r["stdout"]
    assert r["outcome"] == "main returned" and r["reset_count"] == 0
    assert not events(r, "pin_level")          # nothing was driven at all


def test_a_flash_pin_as_contactor_is_not_driven_by_boot(fsroot):
    # Configuring GPIO 6-11 takes the SPI flash away and the chip restarts, at every boot:
    # boot.py must refuse it before driving anything; main.py then reports the board file.
    board = reference()
    board["contactor"]["pin"] = 7
    r = run_device(fsroot, board=board)
    assert r["outcome"] == "main returned" and r["reset_count"] == 0
    assert "boot: contactor pin not driven" in r["stdout"]
    assert "contactor.pin: GPIO 7 drives the SPI flash" in r["stdout"]
    assert not events(r, "pin_mode", 7)


def test_a_flash_pin_as_service_pin_is_not_read_by_boot(fsroot):
    board = reference()
    board["service"]["pin"] = 9
    r = run_device(fsroot, board=board)
    assert r["outcome"] == "main returned" and r["reset_count"] == 0
    assert "boot: contactor pin not driven (service.pin: GPIO 9 drives the SPI flash)" \
        in r["stdout"]
    assert "ERROR: board file" in r["stdout"]
    assert not events(r, "pin_mode")


def test_missing_board_file(tmp_path):
    r = run_device(str(tmp_path))
    assert "contactor pin not driven" in r["stdout"]
    assert "cannot read" in r["stdout"]
    assert r["outcome"] == "main returned" and r["reset_count"] == 0
    assert not events(r, "pin_mode")


# -- the real firmware.station on the reference board ---------------------------------------
def test_real_station_idles_in_state_a(fsroot):
    r = run_device(fsroot, {"use_standin": False, "run_ms": 2000, "devices": True,
                            "adc": {"36": 2500, "39": 3300}})
    assert r["outcome"] == "time up", r["stdout"]
    assert r["reset_count"] == 0 and not r["wdt_expired"]
    assert not os.path.exists(os.path.join(fsroot, "crash.txt"))
    assert r["pilot_duty"] == 65535                      # steady +12 V: no EV
    assert r["levels"][str(CONTACTOR)] == 0
    assert [r["levels"][p] for p in ("21", "22", "23")] == [0, 1, 0]   # LED_IDLE: green
    assert os.path.isdir(os.path.join(fsroot, "data"))


def test_real_station_charging_session_on_the_fake_esp32(fsroot):
    # EV with a 32 A cable (220 ohm) plugs in at 1 s, requests at 2 s, stops at 6 s.
    r = run_device(fsroot, {"use_standin": False, "run_ms": 8000, "devices": True,
                            "ev": [[1000, "B", 220], [2000, "C", 220], [6000, "B", 220]]})
    assert r["outcome"] == "time up", r["stdout"]
    assert r["reset_count"] == 0 and not r["wdt_expired"]
    duties = [e for e in events(r, "pwm_duty", 25)]
    offer = [e for e in duties if 0 < e[3] < 65535]
    assert offer and offer[0][3] == 533 * 65535 // 1000   # 32 A = 53.3 %
    # The RCD self-test pulsed its test input before the contactor could close.
    rcd_test = [e[0] for e in events(r, "pin_level", 14) if e[3] == 1]
    closes = [t for t, v in r["contactor"] if v == 1]
    opens = [t for t, v in r["contactor"] if v == 0 and t > 0]
    assert rcd_test and closes and rcd_test[0] < closes[0]
    # IEC 61851-1: close within 3 s of C; open within 100 ms of C -> B.
    assert 2000000 < closes[0] <= 5000000
    assert opens and 6000000 <= opens[0] <= 6100000
    assert r["levels"][str(CONTACTOR)] == 0

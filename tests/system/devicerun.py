"""Run boot.py then main.py on the MicroPython unix port as the ESP32 would, against the fake
machine in simulated time, and print what happened as one JSON line:  DEVICERUN {...}

Usage (cwd = the device's filesystem root, a temp dir holding board.json):
    micropython tests/system/devicerun.py REPO_ROOT SCENARIO_FILE
(a file, because the unix port aborts on very long arguments). SCENARIO keys: brief (report only outcome, faults, contactor history, its level, resets and
crashes: what fits a small heap), log_events (slots of the fake's event log, default 8192), reset_cause (int), inputs {pin: level}, adc {pin: mV}, station {module
globals of standin_station}, use_standin (default true: the stand-in station; false: the
real firmware.station), run_ms (end the run at this simulated time), ev [[t_ms, state,
pp_ohms], ...] (an EV per IEC 61851-1 on the reference board's front ends: state "A".."D"
loads the pilot's positive half to 12/9/6/3 V, the diode leaves -12 V), devices (true: the
RCD answers its test input, the mirror contact follows the coil), rtc_memory (ASCII: what
RTC.memory() holds at boot; the result reports it at the end, so a harness can carry it
from one simulated reset to the next), bootinfo {module globals of drivers.bootinfo}.
"""
import gc
import json
import sys

import machine

gc.collect()
_heap_before = gc.mem_alloc()   # the fake machine and its preallocated log are not counted

sim = machine.sim
root = sys.argv[1]
with open(sys.argv[2]) as _f:
    scenario = json.load(_f)

sim.log_capacity = scenario.get("log_events", sim.log_capacity)
sim.reset()
sim.reset_cause = scenario.get("reset_cause", machine.PWRON_RESET)
sim.rtc_memory = scenario.get("rtc_memory", "").encode()
for pin, level in scenario.get("inputs", {}).items():
    sim.set_input(int(pin), level)
for pin, mv in scenario.get("adc", {}).items():
    sim.set_adc(int(pin), mv)

_EV_HIGH_MV = {"A": 12000, "B": 9000, "C": 6000, "D": 3000}
_ev = [(int(t) * 1000, _EV_HIGH_MV[st], int(pp)) for t, st, pp in scenario.get("ev", [])]


def _ev_at(t):
    cur = (0, 12000, 100000)
    for entry in _ev:
        if entry[0] <= t:
            cur = entry
    return cur


def _cp_adc(t):
    # Reference sense divider: ADC mV = 1300 + CP mV / 10.
    high = _ev_at(t)[1]
    return 1300 + (high if sim.pwm_output_high(25, t) else -12000) // 10


def _pp_adc(t):
    ohms = _ev_at(t)[2]
    return 3300 * ohms // (ohms + 1000)


if _ev:
    sim.set_adc(36, _cp_adc)
    sim.set_adc(39, _pp_adc)
if scenario.get("devices"):
    sim.set_adc(34, 1650)                                           # NTC at 25 C
    sim.set_input(27, lambda t: 0 if sim.level(14) == 1 else 1)     # RCD trips on test
    sim.set_input(35, lambda t: 0 if sim.level(26) == 1 else 1)     # mirror follows coil
if scenario.get("run_ms"):
    sim.stop_at_us = scenario["run_ms"] * 1000

from drivers import clock  # noqa: E402

clock.source = sim.clock

import standin_station  # noqa: E402
from drivers import bootinfo  # noqa: E402

for key, value in scenario.get("bootinfo", {}).items():
    setattr(bootinfo, key, value)

for key, value in scenario.get("station", {}).items():
    setattr(standin_station, key, value)
if scenario.get("use_standin", True):
    sys.modules["firmware.station"] = standin_station

outcome = "main returned"
g = {"__name__": "__main__"}
try:
    for name in ("boot.py", "main.py"):
        with open(root + "/" + name) as f:
            code = f.read()
        exec(code, g)
except machine.SimulatedReset:
    outcome = "reset"
except standin_station.StopRun:
    outcome = "stopped"
except machine.SimulationEnd:
    outcome = "time up"
except MemoryError:
    # Out of heap outside main.py's crash path (boot.py, or main.py before its guard): the
    # port prints the traceback and drops to the REPL with the pins as they are.
    outcome = "repl"

_faults = None
_storage = None
if not scenario.get("use_standin", True):
    try:
        # Only when main.py got as far: importing the station now, after a run that ended
        # short of heap, would take the heap the report below needs.
        _station = sys.modules.get("firmware.station")
        if _station is not None and _station.current is not None:
            _cur = _station.current
            _faults = _cur.faults.active_names()
            if scenario.get("report_storage"):
                # report_storage: what the station counted (faults raised since boot by
                # name, storage damage), its loop iterations and its configuration error.
                from firmware import faults as _fmod
                _c = _cur.faults.counts
                _storage = {"raised": {_fmod.names(1 << k)[0]: _c[k] for k in range(len(_c))
                                       if _c[k] and _fmod.names(1 << k)},
                            "damage": _cur.storage_damage(),
                            "iterations": _cur.iterations,
                            "config_error": _cur.config_error,
                            "max_current_ma": _cur.cfg["max_current_ma"]}
            _cur = None
            _station.current = None
    except MemoryError:
        _faults = ["?"]
g.clear()          # the device's objects go: the report must fit what a small heap has left
gc.collect()
_heap_after = gc.mem_alloc()

if scenario.get("brief"):
    # What a heap test needs, written piece by piece.
    print("DEVICERUN " + json.dumps({"outcome": outcome, "faults": _faults}))
    if _storage is not None:
        print("DEVICERUN+ " + json.dumps({"storage": _storage, "now_us": sim.now_us,
                                          "wdt_timeout_ms": sim.wdt_timeout_ms,
                                          "first_levels": sim.history(26)[:4]}))
    print("DEVICERUN+ " + json.dumps({"contactor": sim.history(26)}))
    print("DEVICERUN+ " + json.dumps({"levels": {"26": sim.level(26)},
                                      "reset_count": sim.reset_count,
                                      "wdt_expired": sim.wdt_expired,
                                      "crashes": bootinfo.crashes}))
    sys.exit(0)

print("DEVICERUN " + json.dumps({
    "outcome": outcome,
    "heap_used": _heap_after - _heap_before,
    "faults": _faults,
    "events": [list(e) for e in sim.events()],
    "now_us": sim.now_us,
    "reset_count": sim.reset_count,
    "wdt_timeout_ms": sim.wdt_timeout_ms,
    "wdt_expired": sim.wdt_expired,
    "service_mode": bootinfo.service_mode,
    "reset_cause": bootinfo.reset_cause,
    "crashes": bootinfo.crashes,
    "rtc_memory": bytes(sim.rtc_memory).decode(),
    "steps": standin_station.steps,
    "crash_at_us": standin_station.crash_at_us,
    "seen_last_crash": standin_station.seen_last_crash,
    "seen_reset_cause": standin_station.seen_reset_cause,
    "constructed_with": standin_station.constructed_with,
    "levels": {str(p): sim.level(p) for p in (4, 14, 21, 22, 23, 26, 32, 33)},
    "contactor": sim.history(26),
    "pilot_duty": sim.pwm(25).duty_u16() if sim.pwm(25) is not None else None,
}))

"""The whole station with the OCPP 1.6J backend, on the ESP32 stand-in, driven line by line
by tests/system/test_ocpp_*.py and tools/bench_ocpp.py (the central system runs there).

    micropython [-X heapsize=N] tests/system/ocpp_station.py OPTIONS.json

Options: store (data directory), config (station settings), start_wh (meter register),
firmware_pool (bytes: see below). The station runs on the simulator's board
(tools/pilotsim/simboard.py) in simulated time, with a Modbus meter double on its RS-485 bus
whose registers follow the simulated energy (tests/system/ocpp_rig.py). Each stdin line is
one JSON command; each is answered with one JSON line (a snapshot):
    {"do": "run", "ms": N, "until": NAME, "paced": bool}   step N ms (or until NAME holds)
    {"do": "ev", "plugged": bool, "charge": bool}           the EV: plugged, requesting (C)
    {"do": "power", "w": W}                                 the EV's draw while the contacts close
    {"do": "tag", "id": TAG}                                a card at the reader
    {"do": "powercut"}                                      the station loses power, restarts
    {"do": "heap"}                                          {"alloc", "free"} after gc.collect()
    {"do": "clock", "shift_s": N}                           the board's clock set N s on (NTP)
    {"do": "modules"}                                       {"modules": sorted(sys.modules)}
    {"do": "quit"}
Time: simulated time runs as fast as the station computes, except 1:1 with wall time while
the backend waits for the central system (a CALL in flight, connecting) or `paced` is set.

The heap (tools/bench_rig.py HarnessRoom, as the MQTT bench): on an ESP32 the board is C
code and hardware, no GC heap. With `firmware_pool` the process is started with a heap
larger than the figure under test; the harness (this file's rig: the SimBoard, the pilot
model, the meter double, tools/bench_rig.py) is imported and built first and measured, and
a ballast block leaves the firmware exactly `firmware_pool` bytes, the pool of
`-X heapsize=<figure>`. The first line says {"ready": true, "harness": B, "ballast": B,
"pool": B}. Counted as firmware, to err on the safe side: the interpreter's start-up heap,
this file's code, the options, the firmware modules the harness builds on (imported before
the harness is measured) and the command and answer lines (they churn in the firmware's
share).
"""
import gc
import json
import sys

# Counted as firmware: the modules the harness builds on (SimBoard's base class, the
# Modbus CRC of the meter double, the filesystem).
import firmware.board  # noqa: F401
import firmware.modbus  # noqa: F401
import firmware.storage  # noqa: F401

# Input registers, u32 big-endian: voltage dV L1..L3, current mA L1..L3, power W, import Wh.
METER_MAP = ('{"fc": 4, "max_regs": 80, "max_gap": 80, "phases": 3,'
             ' "voltage": [0, "u32", 1, 1], "current": [6, "u32", 1, 1],'
             ' "power": [12, "i32", 1, 1], "import": [14, "u32", 1, 1]}')


def _options():
    # The run's parameters, counted as firmware (the config dict is the Station's input).
    with open(sys.argv[1]) as f:
        opts = json.load(f)
    cfg = {"meter_map": "custom", "meter_custom_map": METER_MAP}
    cfg.update(opts.get("config", {}))
    opts["config"] = cfg
    return opts


def main():
    opts = _options()
    gc.collect()
    start = gc.mem_alloc()
    # The harness: its modules and objects, measured apart.
    from tools.bench_rig import ROOM, say
    import ocpp_rig          # tests/system, beside this file: compiled onto the heap here
    ROOM.start = start
    rig = ocpp_rig.Rig(opts)
    ROOM.reserve(opts.get("firmware_pool"))
    rig.start()
    say({"ready": True, "harness": ROOM.harness, "ballast": ROOM.ballast_bytes,
         "pool": ROOM.firmware_pool()})
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        cmd = json.loads(line)
        if cmd["do"] == "quit":
            break
        try:
            out = rig.do(cmd)
        except Exception as e:  # noqa: BLE001 - reported to the test
            sys.print_exception(e)
            out = {"error": "%s: %s" % (type(e).__name__, e)}
        cmd = line = None
        # Written piece by piece (json.dump to the stream): no string of the whole answer.
        say(out)


main()

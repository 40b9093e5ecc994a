"""The whole station with the OCPP 1.6J backend, on the ESP32 stand-in, driven line by line
by tests/system/test_ocpp_*.py and tools/bench_ocpp.py (the central system runs there).

    micropython [-X heapsize=N] tests/system/ocpp_station.py OPTIONS.json

Options: store (data directory), config (station settings, the meter's map among them:
tests/system/ocpp_cs.py), start_wh (meter register), firmware_pool (bytes: see below).
The station runs on the simulator's board (tools/pilotsim/simboard.py) in simulated time,
with a Modbus meter double on its RS-485 bus whose registers follow the simulated energy
(tests/system/ocpp_rig.py). Each stdin line is one JSON command; each is answered with one
JSON line (a snapshot):
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
larger than the figure under test; the harness (tests/system/ocpp_rig.py: the SimBoard, the
pilot model, the meter double, the command loop; tools/bench_rig.py) is imported and built
first and measured, and a ballast block leaves the firmware exactly `firmware_pool` bytes,
the pool of `-X heapsize=<figure>`. The first line says {"ready": true, "harness": B,
"ballast": B, "pool": B}. Counted as firmware, to err on the safe side: the interpreter's
start-up heap, this file's few lines, the options (the station's config among them), the
firmware modules the harness builds on (imported before the harness is measured) and the
command and answer lines (they churn in the firmware's share). This file is compiled onto
the heap from source (not frozen), so it is kept to what must come first.
"""
import gc
import json
import sys

# Counted as firmware: the modules the harness builds on (SimBoard's base class, the
# Modbus CRC of the meter double, the filesystem), and the run's parameters.
import firmware.board  # noqa: F401
import firmware.modbus  # noqa: F401
import firmware.storage  # noqa: F401

with open(sys.argv[1]) as _f:
    _OPTS = json.load(_f)
_f = None
gc.collect()
_START = gc.mem_alloc()
# The harness: its code (compiled here, beside this file) and objects, measured apart.
import ocpp_rig  # noqa: E402
ocpp_rig.main(_OPTS, _START)

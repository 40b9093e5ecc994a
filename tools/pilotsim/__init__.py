"""Pilot-signal simulator and software-in-the-loop bench.

The firmware runs unchanged on the MicroPython unix port with `SimBoard` (simboard.py) in
place of the ESP32 board; `model.py` is the CP/PP circuit; scenarios (scenario.py,
docs/scenarios.md) script the EV, faults, meter and backend. `python -m tools.pilotsim`
is the host-side entry point (run, demo, check, bench).

Only model.py, simboard.py, scenario.py and runner.py are imported on the unix port; keep
this file free of CPython-only imports.
"""

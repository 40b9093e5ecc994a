# pytest configuration shared by all tests: the project root and the fake ESP32 modules
# (machine, esp32, network) are importable, as they are on the unix port's MICROPYPATH, and
# so is umqtt.simple from micropython-lib (appended, so that micropython-lib's own `logging`
# never shadows the standard library's).
import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
for p in (ROOT, os.path.join(ROOT, "tests", "fakes")):
    if p not in sys.path:
        sys.path.insert(0, p)
_MPLIB = os.path.join(ROOT, "build", "standin", "lib")
if _MPLIB not in sys.path:
    sys.path.append(_MPLIB)

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


def pytest_collection_finish(session):
    # What collection imported (pytest, hypothesis, matplotlib, every test module: ~110,000
    # objects) lives for the whole run: freeze it out of the cyclic collector. The firmware
    # calls gc.collect() after every failed service iteration and when memory runs low, as
    # it must on the ESP32; on CPython each call would otherwise walk all of it (~70 ms of
    # CPU, more under load), and a test of 1000 failing iterations took minutes.
    import gc
    gc.collect()
    gc.freeze()

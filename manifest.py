# The production image's frozen code: the charge-point firmware plus the micropython-lib
# packages it needs, in the versions MicroPython's own tree pins (v1.28.0: umqtt.simple 1.7.0,
# logging 0.6.2). The same file is frozen into
#   - the ESP32 image (boards/CHARGER_ESP32, `make firmware`): the port's own boards/manifest.py
#     comes first, as for ESP32_GENERIC;
#   - the 32-bit unix stand-in the tests run on (tools/standin.py, through
#     tools/standin_manifest.py): the unix port has no boards/manifest.py.
#
# Frozen, the bytecode stays in flash and needs no heap: the only route for an ESP32 without
# PSRAM (docs/performance.md). boot.py and main.py stay on the filesystem: the port runs them
# by name, and a technician can replace them without a new build. The technician's diag is
# frozen too: loaded from a .mpy file its bytecode would take some 15 KB of a 56 KB heap.
# Paths are relative to this file.
try:
    include("$(PORT_DIR)/boards/manifest.py")
except Exception:  # ManifestFileError / OSError: a port without one (the unix stand-in)
    pass
require("umqtt.simple")
require("logging")
package("firmware")
package("drivers")
module("diag.py")
module("diag_check.py")
module("diag_records.py")
module("diag_support.py")

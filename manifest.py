# Freeze the charge-point firmware into a custom MicroPython build for the ESP32:
#
#   cd micropython/ports/esp32
#   make BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/this/repo/manifest.py
#   make BOARD=ESP32_GENERIC FROZEN_MANIFEST=... PORT=/dev/ttyUSB0 deploy
#
# Then only boot.py, main.py, diag.mpy and the board file go onto the filesystem:
#   python -m tools.deploy deploy --port /dev/ttyUSB0 --frozen
# (it also removes firmware/ and drivers/ trees there: '' precedes '.frozen' on sys.path,
# so stale files on the filesystem would shadow the frozen modules).
#
# Paths are relative to this file. boot.py and main.py stay on the filesystem: the port
# runs them by name, and a technician can replace them without a new build.
include("$(PORT_DIR)/boards/manifest.py")
require("logging")
package("firmware")
package("drivers")

# What the ESP32 stand-in (tools/standin.py) freezes: the production manifest, unchanged, and
# what stands for the hardware around it, which on the device takes no heap:
#   - the fakes of the ESP32's C modules (tests/fakes: machine, esp32, network);
#   - the host-side harness that plays the board, the EV and the meter (tools/: SimBoard, the
#     pilot model, the bench rigs), so that a heap figure measured on the stand-in is the
#     firmware's, not the harness's bytecode.
# Paths are relative to this file.
include("../manifest.py")
module("machine.py", base_path="../tests/fakes")
module("esp32.py", base_path="../tests/fakes")
module("network.py", base_path="../tests/fakes")
package("tools", base_path="..")

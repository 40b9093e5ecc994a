# The charge-point controller on an ESP32-WROOM-32E (4 MiB flash, no PSRAM): the generic
# ESP32 configuration (as boards/ESP32_GENERIC) plus this board's safety settings.
# Build it from the MicroPython source:
#   cd ports/esp32 && make BOARD_DIR=/path/to/repo/boards/CHARGER_ESP32 [BOARD_VARIANT=...]
# (or `make firmware` in the repository).
set(SDKCONFIG_DEFAULTS
    boards/sdkconfig.base
    boards/sdkconfig.ble
    ${MICROPY_BOARD_DIR}/sdkconfig.board
)

# The charge-point firmware is frozen in: the repository's manifest.py, two levels up from
# this folder. Frozen bytecode stays in flash; loaded from .mpy files (over 130 KB of them,
# docs/performance.md) it would not fit the ~110 KB heap of a module without PSRAM.
# FROZEN_MANIFEST=... on the make command line still wins.
get_filename_component(MICROPY_FROZEN_MANIFEST ${MICROPY_BOARD_DIR}/../../manifest.py ABSOLUTE)

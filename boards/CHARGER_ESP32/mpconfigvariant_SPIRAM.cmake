# ESP32-WROVER-E: the same chip with PSRAM, for the heap (the firmware stays frozen).
set(SDKCONFIG_DEFAULTS
    ${SDKCONFIG_DEFAULTS}
    boards/sdkconfig.spiram
)

list(APPEND MICROPY_DEF_BOARD
    MICROPY_HW_BOARD_NAME="Charge point controller with SPIRAM"
)

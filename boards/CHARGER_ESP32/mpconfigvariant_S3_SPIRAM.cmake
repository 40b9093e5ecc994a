# ESP32-S3 with quad PSRAM (e.g. ESP32-S3-WROOM-1-N8R2), as boards/ESP32_GENERIC_S3 with
# this board's safety settings. Octal-PSRAM modules (N8R8, N16R8) would need
# boards/sdkconfig.spiram_oct instead of sdkconfig.spiram_sx.
set(IDF_TARGET esp32s3)

set(SDKCONFIG_DEFAULTS
    boards/sdkconfig.base
    boards/sdkconfig.ble
    boards/sdkconfig.spiram_sx
    ${MICROPY_BOARD_DIR}/sdkconfig.board
    ${MICROPY_BOARD_DIR}/sdkconfig.s3
)

list(APPEND MICROPY_DEF_BOARD
    MICROPY_HW_BOARD_NAME="Charge point controller with SPIRAM"
    MICROPY_HW_MCU_NAME="ESP32S3"
    # The REPL stays on UART0 (GPIO 43/44) behind the PCB's USB-UART bridge, as on the
    # ESP32 boards, so mpremote and the technician's cable work the same; native USB too.
    MICROPY_HW_ENABLE_UART_REPL=1
)

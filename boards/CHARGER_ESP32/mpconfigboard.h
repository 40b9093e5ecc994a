// The charge-point controller. Both can be set by a variant's mpconfigvariant_*.cmake;
// sys.implementation._machine shows them, which is how `make flash` tells this image from
// a stock one when it reads the version back.

#ifndef MICROPY_HW_BOARD_NAME
#define MICROPY_HW_BOARD_NAME "Charge point controller"
#endif

#ifndef MICROPY_HW_MCU_NAME
#define MICROPY_HW_MCU_NAME "ESP32"
#endif

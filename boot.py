# boot.py: runs first after every reset. Minimal on purpose.
#
# 1. The contactor: drive the coil pin to its off level only when /board.json passes the
#    full validation (drivers/boardfile.py); otherwise touch no pin at all. Between reset
#    and here every GPIO floats and the coil driver's pull resistor to its off level (a
#    board requirement, docs/board.md) holds the coil off; it still does when the file is
#    missing, damaged, not JSON, or has a polarity that is not a clean true/false or a pin
#    used twice. Guessing an off level from such a file energised the coil.
# 2. Put the pilot to state F (steady -12 V) until the board is built (valid file only).
# 3. Report the reset cause and any crash the previous run left, and decide service mode
#    (flag file /service or the service pin held): main.py then starts neither the
#    application nor the watchdog, leaving a plain REPL.
import machine

_board = None
_coil = None
_off = 0
try:
    from drivers.boardfile import load

    _board = load("board.json")
    _off = 0 if _board["contactor"]["active_high"] else 1
    # The port sets the level before the direction: the pin never drives the other level.
    _coil = machine.Pin(_board["contactor"]["pin"], machine.Pin.OUT, value=_off)
except Exception as _e:
    _board = None
    print("boot: contactor pin not driven (%s); the board's pull resistor holds the coil off"
          % (_e.args[0] if _e.args else repr(_e),))

# Until the board is built (and for good in service mode) the pilot shows state F, steady
# -12 V (IEC 61851-1: EVSE not available), instead of a floating output stage.
if _board is not None:
    try:
        _p = _board["pilot"]
        machine.Pin(_p["pwm_pin"], machine.Pin.OUT, value=1 if _p["pwm_inverted"] else 0)
    except Exception as _e:
        print("boot: pilot pin not driven (%r)" % (_e,))

try:
    from drivers import bootinfo

    bootinfo.start(_board, _coil, _off)
except Exception as _e:
    print("boot: start-up report failed:", _e)

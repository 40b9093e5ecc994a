# boot.py: runs first after every reset. Minimal on purpose.
#
# 1. Drive the contactor coil off before anything that could fail: the pin and its polarity
#    come straight from /board.json with only built-in modules. If even that fails, the coil
#    driver's pull resistor to its off level (a board requirement, docs/board.md) keeps it off.
# 2. Put the pilot to state F (steady -12 V) until the board is built.
# 3. Report the reset cause and any crash the previous run left, and decide service mode
#    (flag file /service or the service pin held): main.py then starts neither the
#    application nor the watchdog, leaving a plain REPL.
import machine

_board = None
_contactor = None
_contactor_off = 0
try:
    import json

    with open("board.json") as _f:
        _board = json.load(_f)
    _c = _board["contactor"]
    _contactor_off = 0 if _c.get("active_high", True) else 1
    if 6 <= _c["pin"] <= 11:
        # The SPI flash: configuring it would stop the chip at every boot.
        raise ValueError("GPIO %d drives the SPI flash" % _c["pin"])
    _contactor = machine.Pin(_c["pin"], machine.Pin.OUT, value=_contactor_off)
except Exception as _e:
    print("boot: contactor pin not driven (%r); relying on the board's pull resistor" % (_e,))

# Until the board is built (and for good in service mode) the pilot shows state F, steady
# -12 V (IEC 61851-1: EVSE not available), instead of a floating output stage.
try:
    _p = _board["pilot"]
    if _contactor is not None and not 6 <= _p["pwm_pin"] <= 11:
        machine.Pin(_p["pwm_pin"], machine.Pin.OUT, value=1 if _p.get("pwm_inverted") else 0)
except Exception as _e:
    print("boot: pilot pin not driven (%r)" % (_e,))

try:
    from drivers import bootinfo

    bootinfo.start(_board, _contactor, _contactor_off)
except Exception as _e:
    print("boot: start-up report failed:", _e)

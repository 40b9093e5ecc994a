"""Status LED: one RGB LED (or any subset of its three colours) showing a board.LED_*
pattern as a colour and a blink rhythm. show() is called every tick: it animates the blink
from the clock and only touches a pin when its level changes."""
from firmware import board as _b

RED = 1
GREEN = 2
BLUE = 4

# Indexed by board.LED_*: (colour bits, on_ms, off_ms); off_ms 0 = steady.
PATTERNS = {
    _b.LED_OFF: (0, 0, 0),
    _b.LED_IDLE: (GREEN, 1, 0),
    _b.LED_CONNECTED: (BLUE, 1, 0),
    _b.LED_CHARGING: (BLUE, 1000, 500),
    _b.LED_PAUSED: (RED | GREEN, 1, 0),
    _b.LED_FAULT: (RED, 250, 250),
    _b.LED_UNAVAILABLE: (RED, 1, 0),
    _b.LED_BOOT: (RED | GREEN | BLUE, 1, 0),
}


class StatusLed:
    def __init__(self, red, green, blue, active_high, clock):
        self._pins = (red, green, blue)
        self._on = 1 if active_high else 0
        self._off = 0 if active_high else 1
        self._ticks_ms = clock.ticks_ms
        # A single-colour LED shows every non-black colour.
        present = 0
        for i in range(3):
            if self._pins[i] is not None:
                present |= 1 << i
        self._single = present in (RED, GREEN, BLUE)
        self._present = present
        self._table = []
        for p in range(len(PATTERNS)):
            colour, on_ms, off_ms = PATTERNS[p]
            if self._single and colour:
                colour = present
            self._table.append((colour, on_ms, off_ms))
        self._lit = -1
        self.pattern = _b.LED_OFF
        self._write(0)

    def _write(self, colour):
        if colour == self._lit:
            return
        pins = self._pins
        for i in range(3):
            if pins[i] is not None:
                pins[i].value(self._on if colour & (1 << i) else self._off)
        self._lit = colour

    def show(self, pattern):
        """[tick]"""
        if pattern < 0 or pattern >= len(self._table):
            raise ValueError("unknown LED pattern")
        self.pattern = pattern
        colour, on_ms, off_ms = self._table[pattern]
        if off_ms and self._ticks_ms() % (on_ms + off_ms) >= on_ms:
            colour = 0
        self._write(colour)

"""RS-485 half duplex over a machine.UART: the ESP32 UART has no RS-485 mode in MicroPython,
so the transceiver's DE/RE pin is driven here around every frame.

write(): DE on, write, wait until the UART reports the frame sent (flush, then txdone),
wait one more character time for the last stop bit to leave the shift register, DE off.
A Modbus request (8 bytes) keeps the caller ~10 ms at 9600 baud; this is the only bounded
wait on the meter path. The object is the stream of firmware/board.py meter_uart().
"""


class Rs485:
    def __init__(self, uart, de, de_active_high, clock, baudrate=9600, parity=None):
        self._uart = uart
        self._de = de
        self._de_on = 1 if de_active_high else 0
        self._de_off = 0 if de_active_high else 1
        self._sleep_us = clock.sleep_us
        de.value(self._de_off)
        self._set_timing(baudrate, parity)

    def _set_timing(self, baudrate, parity):
        self.baudrate = baudrate
        self.parity = parity
        bits = 10 if parity is None else 11          # start + 8 data (+ parity) + stop
        self.char_us = (bits * 1000000 + baudrate - 1) // baudrate

    def configure(self, baudrate, parity=None):
        """Change the line settings (parity None, 0 even, 1 odd as machine.UART)."""
        self._uart.init(baudrate=baudrate, bits=8, parity=parity, stop=1)
        self._set_timing(baudrate, parity)

    def set_de(self, on):
        self._de.value(self._de_on if on else self._de_off)

    def write(self, buf):
        uart = self._uart
        self._de.value(self._de_on)
        try:
            n = uart.write(buf)
            uart.flush()
            # flush() may return with the FIFO empty but the shifter busy; bounded poll.
            spins = len(buf) + 2
            while not uart.txdone() and spins:
                self._sleep_us(self.char_us)
                spins -= 1
            self._sleep_us(self.char_us)
        finally:
            self._de.value(self._de_off)
        return n

    def read(self, n=None):
        return self._uart.read() if n is None else self._uart.read(n)

    def readinto(self, buf, n=None):
        return self._uart.readinto(buf) if n is None else self._uart.readinto(buf, n)

    def any(self):
        return self._uart.any()

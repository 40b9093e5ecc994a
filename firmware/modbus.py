"""Modbus RTU master: a non-blocking state machine over any UART-like stream.

The charge point's control loop must never wait on the meter, so a transaction is started
with `start_read` / `start_write_*` and then advanced by `poll(now_ms)` once per loop
iteration. `poll` only reads what the stream's `any()` reports, never blocks on the slave,
and takes the time as an argument, so tests drive it with simulated time.

The stream needs write(buf), any() and readinto(buf); `de(on)` (optional) drives the RS-485
driver-enable pin: True before a request is written, False once it has been flushed (the
ESP32 UART has no RS-485 mode). Flushing an 8-byte read request takes about 8 ms at
9600 baud: the only wait, bounded by our own frame length, and skipped when there is no DE
pin to turn around (auto-direction transceivers).

Frames follow the Modbus over Serial Line spec (V1.02): slave id, function code, data, CRC-16
sent low byte first; >= 3.5 character times of silence between frames, fixed at 1.75 ms
above 19200 baud. Every reply is checked (slave id, function, byte count / echo, CRC);
garbage, other slaves' frames and truncated frames are skipped and counted, never raised.
"""

from firmware.compat import const, ticks_diff, ticks_ms, sleep_ms

# Public poll results.
IDLE = const(0)
PENDING = const(1)
DONE = const(2)
ERROR = const(3)

# Why a transaction failed (`ModbusMaster.error`).
ERR_NONE = const(0)
ERR_TIMEOUT = const(1)      # no byte of a reply before the response timeout
ERR_CRC = const(2)          # a reply with our header whose CRC did not match
ERR_EXCEPTION = const(3)    # the slave answered with an exception (see exception_code)
ERR_BAD_FRAME = const(4)    # truncated or malformed reply, or only garbage / other slaves

ERROR_NAMES = ("none", "timeout", "crc", "exception", "bad_frame")

# Exception codes (Modbus Application Protocol V1.1b3, section 7).
ILLEGAL_FUNCTION = const(1)
ILLEGAL_DATA_ADDRESS = const(2)
ILLEGAL_DATA_VALUE = const(3)
SLAVE_DEVICE_FAILURE = const(4)

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "slave device failure",
}

FC_READ_HOLDING = const(3)
FC_READ_INPUT = const(4)
FC_WRITE_SINGLE = const(6)
FC_WRITE_MULTIPLE = const(16)

# Protocol limits (Modbus Application Protocol V1.1b3, 6.3/6.4/6.12).
MAX_READ_REGISTERS = const(125)
MAX_WRITE_REGISTERS = const(123)
_MAX_ADU = const(256)          # largest RTU frame: 1 address + 253 PDU + 2 CRC
_FIRST_SLAVE = const(1)
_LAST_SLAVE = const(247)

# States of the transaction.
_S_IDLE = const(0)
_S_SEND = const(1)      # request built, waiting for the inter-frame silence
_S_WAIT = const(2)      # request sent, collecting the reply
_S_DONE = const(3)
_S_ERROR = const(4)


class ModbusError(Exception):
    """A transaction failed (blocking helpers only). `kind` is one of ERR_*."""

    def __init__(self, kind, exception_code=0):
        self.kind = kind
        self.exception_code = exception_code
        if kind == ERR_EXCEPTION:
            msg = "exception %d (%s)" % (exception_code,
                                         EXCEPTION_NAMES.get(exception_code, "unknown"))
        else:
            msg = ERROR_NAMES[kind]
        super().__init__(msg)


# CRC-16/MODBUS by table, one lookup per byte instead of eight shifts (a 157-byte reply is
# checked in about a millisecond of bytecode on the ESP32 rather than ten). The table is two
# bytes literals, low and high halves: frozen, they stay in flash and take no heap (an
# array built at import took 512 bytes of a 56 KB heap). tests/unit/test_modbus.py checks
# them against the polynomial.
_CRC_LO = (
    b"\x00\xc1\x81\x40\x01\xc0\x80\x41\x01\xc0\x80\x41\x00\xc1\x81\x40"
    b"\x01\xc0\x80\x41\x00\xc1\x81\x40\x00\xc1\x81\x40\x01\xc0\x80\x41"
    b"\x01\xc0\x80\x41\x00\xc1\x81\x40\x00\xc1\x81\x40\x01\xc0\x80\x41"
    b"\x00\xc1\x81\x40\x01\xc0\x80\x41\x01\xc0\x80\x41\x00\xc1\x81\x40"
    b"\x01\xc0\x80\x41\x00\xc1\x81\x40\x00\xc1\x81\x40\x01\xc0\x80\x41"
    b"\x00\xc1\x81\x40\x01\xc0\x80\x41\x01\xc0\x80\x41\x00\xc1\x81\x40"
    b"\x00\xc1\x81\x40\x01\xc0\x80\x41\x01\xc0\x80\x41\x00\xc1\x81\x40"
    b"\x01\xc0\x80\x41\x00\xc1\x81\x40\x00\xc1\x81\x40\x01\xc0\x80\x41"
    b"\x01\xc0\x80\x41\x00\xc1\x81\x40\x00\xc1\x81\x40\x01\xc0\x80\x41"
    b"\x00\xc1\x81\x40\x01\xc0\x80\x41\x01\xc0\x80\x41\x00\xc1\x81\x40"
    b"\x00\xc1\x81\x40\x01\xc0\x80\x41\x01\xc0\x80\x41\x00\xc1\x81\x40"
    b"\x01\xc0\x80\x41\x00\xc1\x81\x40\x00\xc1\x81\x40\x01\xc0\x80\x41"
    b"\x00\xc1\x81\x40\x01\xc0\x80\x41\x01\xc0\x80\x41\x00\xc1\x81\x40"
    b"\x01\xc0\x80\x41\x00\xc1\x81\x40\x00\xc1\x81\x40\x01\xc0\x80\x41"
    b"\x01\xc0\x80\x41\x00\xc1\x81\x40\x00\xc1\x81\x40\x01\xc0\x80\x41"
    b"\x00\xc1\x81\x40\x01\xc0\x80\x41\x01\xc0\x80\x41\x00\xc1\x81\x40"
)
_CRC_HI = (
    b"\x00\xc0\xc1\x01\xc3\x03\x02\xc2\xc6\x06\x07\xc7\x05\xc5\xc4\x04"
    b"\xcc\x0c\x0d\xcd\x0f\xcf\xce\x0e\x0a\xca\xcb\x0b\xc9\x09\x08\xc8"
    b"\xd8\x18\x19\xd9\x1b\xdb\xda\x1a\x1e\xde\xdf\x1f\xdd\x1d\x1c\xdc"
    b"\x14\xd4\xd5\x15\xd7\x17\x16\xd6\xd2\x12\x13\xd3\x11\xd1\xd0\x10"
    b"\xf0\x30\x31\xf1\x33\xf3\xf2\x32\x36\xf6\xf7\x37\xf5\x35\x34\xf4"
    b"\x3c\xfc\xfd\x3d\xff\x3f\x3e\xfe\xfa\x3a\x3b\xfb\x39\xf9\xf8\x38"
    b"\x28\xe8\xe9\x29\xeb\x2b\x2a\xea\xee\x2e\x2f\xef\x2d\xed\xec\x2c"
    b"\xe4\x24\x25\xe5\x27\xe7\xe6\x26\x22\xe2\xe3\x23\xe1\x21\x20\xe0"
    b"\xa0\x60\x61\xa1\x63\xa3\xa2\x62\x66\xa6\xa7\x67\xa5\x65\x64\xa4"
    b"\x6c\xac\xad\x6d\xaf\x6f\x6e\xae\xaa\x6a\x6b\xab\x69\xa9\xa8\x68"
    b"\x78\xb8\xb9\x79\xbb\x7b\x7a\xba\xbe\x7e\x7f\xbf\x7d\xbd\xbc\x7c"
    b"\xb4\x74\x75\xb5\x77\xb7\xb6\x76\x72\xb2\xb3\x73\xb1\x71\x70\xb0"
    b"\x50\x90\x91\x51\x93\x53\x52\x92\x96\x56\x57\x97\x55\x95\x94\x54"
    b"\x9c\x5c\x5d\x9d\x5f\x9f\x9e\x5e\x5a\x9a\x9b\x5b\x99\x59\x58\x98"
    b"\x88\x48\x49\x89\x4b\x8b\x8a\x4a\x4e\x8e\x8f\x4f\x8d\x4d\x4c\x8c"
    b"\x44\x84\x85\x45\x87\x47\x46\x86\x82\x42\x43\x83\x41\x81\x80\x40"
)


def crc16(buf, start=0, end=None):
    """CRC-16/MODBUS: init 0xFFFF, reflected polynomial 0xA001. Allocates nothing."""
    if end is None:
        end = len(buf)
    lo = _CRC_LO
    hi = _CRC_HI
    crc = 0xFFFF
    for i in range(start, end):
        n = (crc ^ buf[i]) & 0xFF
        crc = (crc >> 8) ^ (lo[n] | hi[n] << 8)
    return crc


def silence_us(baud, bits_per_char=10):
    """The 3.5-character inter-frame gap in microseconds (fixed 1750 us above 19200 baud,
    Modbus over Serial Line V1.02, 2.5.1.1)."""
    if baud > 19200:
        return 1750
    return (35 * bits_per_char * 1000000) // (10 * baud)


def bits_per_char(parity="N", stop_bits=1):
    """Bits on the wire per character: start + 8 data + parity + stop."""
    return 1 + 8 + (0 if parity == "N" else 1) + stop_bits


class ModbusMaster:
    """One RTU master on one bus. All buffers are allocated here, once."""

    def __init__(self, stream, baud=9600, parity="N", stop_bits=1, timeout_ms=300,
                 retries=1, de=None):
        if baud <= 0:
            raise ValueError("baud must be positive")
        if timeout_ms <= 0:
            raise ValueError("timeout_ms must be positive")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if parity not in ("N", "E", "O"):
            raise ValueError("parity must be N, E or O")
        self._stream = stream
        self._de = de
        self.baud = baud
        self.timeout_ms = timeout_ms
        self.retries_allowed = retries
        self.char_us = bits_per_char(parity, stop_bits) * 1000000 // baud
        self.silence_us = silence_us(baud, bits_per_char(parity, stop_bits))
        # Compare whole milliseconds strictly greater, so at least silence_us really passed.
        self.silence_ms = (self.silence_us + 999) // 1000
        self._tx = bytearray(_MAX_ADU)
        self._tx_len = 0
        self._tx_mv = memoryview(self._tx)
        self._rx = bytearray(_MAX_ADU)
        self._rx_mv = memoryview(self._rx)
        self._rx_len = 0
        self._state = _S_IDLE
        self._slave = 0
        self._fc = 0
        self._addr = 0
        self._count = 0
        self._expect = 0            # length of a normal reply
        self._tries_left = 0
        self._sent_ms = 0
        self._limit_ms = 0          # response timeout + both frames' time on the wire
        self._last_bus_ms = None    # last time a byte went either way
        self._last_rx_ms = 0
        self._crc_suspect = False   # a complete frame with our header failed its CRC
        self.error = ERR_NONE
        self.exception_code = 0
        self.data_start = 0         # reply data: self.rx[data_start:data_start + data_len]
        self.data_len = 0
        # Counters (monotonic; see stats()).
        self.requests = 0
        self.replies = 0
        self.timeouts = 0
        self.crc_errors = 0
        self.exceptions = 0
        self.bad_frames = 0
        self.retries = 0

    # -- starting a transaction --------------------------------------------------------
    def start_read(self, slave, fc, addr, count):
        """Queue a read of `count` registers (FC03 holding / FC04 input) at `addr`."""
        if fc != FC_READ_HOLDING and fc != FC_READ_INPUT:
            raise ValueError("read function must be 3 or 4")
        if count < 1 or count > MAX_READ_REGISTERS:
            raise ValueError("count must be 1..125")
        self._check(slave, addr, count)
        self._header(slave, fc, addr, count)
        self._begin(slave, fc, addr, count, 6, 5 + 2 * count)

    def start_write_single(self, slave, addr, value):
        """Queue an FC06 write of one 16-bit register."""
        if value < 0 or value > 0xFFFF:
            raise ValueError("register value must be 0..65535")
        self._check(slave, addr, 1)
        self._header(slave, FC_WRITE_SINGLE, addr, value)
        self._begin(slave, FC_WRITE_SINGLE, addr, 1, 6, 8)

    def start_write_multiple(self, slave, addr, values):
        """Queue an FC16 write of consecutive 16-bit registers."""
        count = len(values)
        if count < 1 or count > MAX_WRITE_REGISTERS:
            raise ValueError("FC16 writes 1..123 registers")
        self._check(slave, addr, count)
        for v in values:
            if v < 0 or v > 0xFFFF:
                raise ValueError("register value must be 0..65535")
        self._header(slave, FC_WRITE_MULTIPLE, addr, count)
        tx = self._tx
        tx[6] = 2 * count
        i = 7
        for v in values:
            tx[i] = v >> 8
            tx[i + 1] = v & 0xFF
            i += 2
        self._begin(slave, FC_WRITE_MULTIPLE, addr, count, i, 8)

    def _header(self, slave, fc, addr, word):
        # Every request this master sends starts: slave, function, address, one word.
        tx = self._tx
        tx[0] = slave
        tx[1] = fc
        tx[2] = addr >> 8
        tx[3] = addr & 0xFF
        tx[4] = word >> 8
        tx[5] = word & 0xFF

    def _check(self, slave, addr, count):
        if self._state == _S_SEND or self._state == _S_WAIT:
            raise ValueError("a transaction is already in progress")
        if slave < _FIRST_SLAVE or slave > _LAST_SLAVE:
            raise ValueError("slave address must be 1..247")
        if addr < 0 or addr + count > 0x10000:
            raise ValueError("register address out of range")

    def _begin(self, slave, fc, addr, count, n, expect):
        crc = crc16(self._tx, 0, n)
        self._tx[n] = crc & 0xFF
        self._tx[n + 1] = crc >> 8
        self._tx_len = n + 2
        # The response timeout covers the slave's latency; the request's and the reply's
        # own transmission time come on top (a 76-register reply takes 163 ms at 9600).
        self._limit_ms = self.timeout_ms + ((n + 2 + expect) * self.char_us + 999) // 1000
        self._slave = slave
        self._fc = fc
        self._addr = addr
        self._count = count
        self._expect = expect
        self._tries_left = self.retries_allowed
        self.error = ERR_NONE
        self.exception_code = 0
        self.data_len = 0
        self._state = _S_SEND

    @property
    def busy(self):
        return self._state == _S_SEND or self._state == _S_WAIT

    @property
    def request(self):
        """The request frame as sent (for tools and tests)."""
        return bytes(self._tx_mv[:self._tx_len])

    # -- advancing it ------------------------------------------------------------------
    def poll(self, now_ms):
        """Advance the transaction; never waits on the slave. Returns IDLE, PENDING, DONE
        or ERROR (DONE / ERROR repeat until the next start)."""
        state = self._state
        if state == _S_SEND:
            if self._last_bus_ms is not None:
                # Negative: the last activity is more than 2**29 ms back (ticks wrapped).
                quiet = ticks_diff(now_ms, self._last_bus_ms)
                if 0 <= quiet <= self.silence_ms:
                    return PENDING
            self._send(now_ms)
            return PENDING
        if state == _S_WAIT:
            return self._receive(now_ms)
        if state == _S_DONE:
            return DONE
        if state == _S_ERROR:
            return ERROR
        return IDLE

    def _send(self, now_ms):
        # Whatever is still in the receiver (a reply that came after its timeout) would be
        # taken for the answer to this request: drop it now.
        if self._drain():
            self.bad_frames += 1
        de = self._de
        if de is not None:
            de(True)
        self._stream.write(self._tx_mv[:self._tx_len])
        if de is not None:
            # The transceiver must stop driving the bus before the slave answers.
            flush = getattr(self._stream, "flush", None)
            if flush is not None:
                flush()
            de(False)
        self.requests += 1
        self._rx_len = 0
        self._crc_suspect = False
        self._sent_ms = now_ms
        self._last_bus_ms = now_ms
        self._state = _S_WAIT

    def _drain(self):
        dropped = False
        stream = self._stream
        n = stream.any()
        while n:
            got = stream.readinto(self._rx_mv[:min(n, _MAX_ADU)])
            if not got:
                break
            dropped = True
            n = stream.any()
        return dropped

    def _receive(self, now_ms):
        stream = self._stream
        n = stream.any()
        if n:
            room = _MAX_ADU - self._rx_len
            if room == 0:
                # A full buffer without our reply in it: keep the newest half.
                self._discard(_MAX_ADU // 2)
                self.bad_frames += 1
                room = _MAX_ADU - self._rx_len
            if n > room:
                n = room
            got = stream.readinto(self._rx_mv[self._rx_len:self._rx_len + n])
            if got:
                self._rx_len += got
                self._last_rx_ms = now_ms
                self._last_bus_ms = now_ms
                result = self._scan()
                if result != PENDING:
                    return result
        elapsed = ticks_diff(now_ms, self._sent_ms)
        if self._crc_suspect and ticks_diff(now_ms, self._last_rx_ms) > self.silence_ms:
            # The slave answered and then fell silent: the frame is over and it was damaged.
            self.crc_errors += 1
            return self._fail(ERR_CRC)
        if elapsed >= self._limit_ms:
            if self._crc_suspect:
                self.crc_errors += 1
                return self._fail(ERR_CRC)
            if self._rx_len:
                # Something arrived but never became our reply: truncated or noise.
                self.bad_frames += 1
                return self._fail(ERR_BAD_FRAME)
            self.timeouts += 1
            return self._fail(ERR_TIMEOUT)
        return PENDING

    def _scan(self):
        """Look for a complete, valid frame in the receive buffer."""
        rx = self._rx
        fc = self._fc
        i = 0
        while i + 1 < self._rx_len:
            addr = rx[i]
            func = rx[i + 1]
            if addr < _FIRST_SLAVE or addr > _LAST_SLAVE or (func & 0x7F) != fc:
                i += 1
                continue
            ours = addr == self._slave
            if func & 0x80:
                length = 5
            elif fc == FC_READ_HOLDING or fc == FC_READ_INPUT:
                if i + 2 >= self._rx_len:
                    return PENDING
                bc = rx[i + 2]
                if ours and bc != 2 * self._count:
                    i += 1
                    continue
                if bc & 1 or bc > 250:
                    i += 1
                    continue
                length = 5 + bc
            else:
                length = 8
            if i + length > self._rx_len:
                if ours:
                    return PENDING
                # Possibly the start of another slave's frame, possibly noise that looks
                # like one: our reply may still be inside, so keep looking.
                i += 1
                continue
            end = i + length
            crc = crc16(rx, i, end - 2)
            if rx[end - 2] != crc & 0xFF or rx[end - 1] != crc >> 8:
                if ours:
                    self._crc_suspect = True
                i += 1
                continue
            if not ours:
                # A valid frame for another slave (or an echo of a request on the bus).
                self.bad_frames += 1
                self._discard(end)
                i = 0
                continue
            if i > 0:
                self.bad_frames += 1     # bytes before our reply
            return self._accept(i, length)
        return PENDING

    def _accept(self, i, length):
        rx = self._rx
        self.replies += 1
        if rx[i + 1] & 0x80:
            self.exceptions += 1
            self.exception_code = rx[i + 2]
            self._state = _S_ERROR
            self.error = ERR_EXCEPTION
            return ERROR
        if self._fc == FC_WRITE_SINGLE or self._fc == FC_WRITE_MULTIPLE:
            # The reply echoes address and value (FC06) or address and count (FC16).
            j = 2
            while j < 6:
                if rx[i + j] != self._tx[j]:
                    self.bad_frames += 1
                    return self._fail(ERR_BAD_FRAME)
                j += 1
            self.data_start = i + 2
            self.data_len = 4
        else:
            self.data_start = i + 3
            self.data_len = rx[i + 2]
        self._state = _S_DONE
        return DONE

    def _fail(self, kind):
        if kind != ERR_EXCEPTION and self._tries_left > 0:
            self._tries_left -= 1
            self.retries += 1
            self._state = _S_SEND
            return PENDING
        self.error = kind
        self._state = _S_ERROR
        return ERROR

    def _discard(self, n):
        rx = self._rx
        left = self._rx_len - n
        for j in range(left):
            rx[j] = rx[n + j]
        self._rx_len = left

    def cancel(self):
        """Abandon the transaction (the reply, if any, is dropped before the next request)."""
        self._state = _S_IDLE

    # -- results -----------------------------------------------------------------------
    @property
    def rx(self):
        """The receive buffer; the reply data is rx[data_start:data_start + data_len]."""
        return self._rx

    def register(self, i):
        """The i-th 16-bit register of the last read reply (big-endian on the wire)."""
        j = self.data_start + 2 * i
        return (self._rx[j] << 8) | self._rx[j + 1]

    def registers(self):
        """All registers of the last read reply as a new list (allocates: tools only)."""
        return [self.register(i) for i in range(self.data_len // 2)]

    def stats(self):
        return {
            "requests": self.requests,
            "replies": self.replies,
            "timeouts": self.timeouts,
            "crc_errors": self.crc_errors,
            "exceptions": self.exceptions,
            "bad_frames": self.bad_frames,
            "retries": self.retries,
        }

    # -- blocking convenience (technician tool, host tests; never the control loop) ----
    def _run(self, clock, sleep):
        while True:
            status = self.poll(clock())
            if status == DONE:
                return
            if status == ERROR:
                raise ModbusError(self.error, self.exception_code)
            sleep(1)

    def read_registers(self, slave, fc, addr, count, clock=ticks_ms, sleep=sleep_ms):
        """Read and return `count` registers as a list of ints; raises ModbusError."""
        self.start_read(slave, fc, addr, count)
        self._run(clock, sleep)
        return self.registers()

    def write_register(self, slave, addr, value, clock=ticks_ms, sleep=sleep_ms):
        self.start_write_single(slave, addr, value)
        self._run(clock, sleep)

    def write_registers(self, slave, addr, values, clock=ticks_ms, sleep=sleep_ms):
        self.start_write_multiple(slave, addr, values)
        self._run(clock, sleep)

"""Byte-stream test doubles for the Modbus master and the meter service (both runtimes).

`ScriptedStream` is a UART-like stream whose incoming bytes the test scripts by simulated
time; it logs writes and DE changes in order. `SlaveStream` is a small RTU slave over a
register image that answers through a ScriptedStream, with the faults a real bus shows.
The system tests run the same code against pymodbus; these doubles exist for the edge
cases that need exact timing and byte-level control.
"""
from firmware.modbus import crc16


def with_crc(frame):
    frame = bytearray(frame)
    c = crc16(frame)
    frame.append(c & 0xFF)
    frame.append(c >> 8)
    return bytes(frame)


class SimClock:
    def __init__(self, start=0):
        self.now = start

    def __call__(self):
        return self.now

    def advance(self, ms):
        self.now += ms


class ScriptedStream:
    """write/any/readinto/flush/set_de; incoming bytes become visible at their time.

    `log`: keep every write and DE change (for the tests that check them). A double that
    stands in for a meter over a long run is made with log=False: the logs grow by four
    entries per poll, on the heap of the firmware under test (a station polled its meter
    once a second and, after 1 024 s, failed to grow the event list to 32 KB)."""

    def __init__(self, clock, log=True):
        self.clock = clock
        self.log = log
        self.events = []          # ("de", on) / ("write", bytes) / ("flush",)
        self.writes = []
        self._incoming = []       # [due_ms, bytearray]
        self.on_write = None

    def set_de(self, on):
        if self.log:
            self.events.append(("de", on))

    def flush(self):
        if self.log:
            self.events.append(("flush",))

    def write(self, buf):
        data = bytes(buf)
        if self.log:
            self.events.append(("write", data))
            self.writes.append(data)
        if self.on_write is not None:
            self.on_write(data)
        return len(data)

    def feed(self, data, after_ms=0):
        """Make `data` readable `after_ms` from now."""
        self._incoming.append([self.clock.now + after_ms, bytearray(data)])

    def _ready(self):
        n = 0
        for due, data in self._incoming:
            if due - self.clock.now > 0:
                break
            n += len(data)
        return n

    def any(self):
        return self._ready()

    def readinto(self, buf, nbytes=None):
        want = len(buf) if nbytes is None else nbytes
        got = 0
        while got < want and self._incoming and self._incoming[0][0] - self.clock.now <= 0:
            chunk = self._incoming[0][1]
            take = min(len(chunk), want - got)
            buf[got:got + take] = chunk[:take]
            got += take
            if take == len(chunk):
                self._incoming.pop(0)
            else:
                self._incoming[0][1] = chunk[take:]
        return got or None

    def read(self, n):
        buf = bytearray(n)
        got = self.readinto(buf)
        return bytes(buf[:got]) if got else None


class SlaveStream(ScriptedStream):
    """An RTU slave over `regs` ({address: u16}) for FC03/04/06/16.

    Faults for the next `fault_count` replies (None = all): "crc" (last byte flipped),
    "silent" (no reply), "exception" (code `exception_code`), "other_slave" (the reply comes
    from slave + 1), "truncated" (half the frame), "garbage" (noise before the frame).
    `delay_ms` delays every reply. Registers missing from `regs` answer exception 02.
    """

    def __init__(self, clock, regs=None, slave=1, fcs=(3, 4), log=True):
        super().__init__(clock, log)
        self.regs = regs if regs is not None else {}
        self.slave = slave
        self.fcs = fcs
        self.delay_ms = 2
        self.fault = None
        self.fault_count = None
        self.exception_code = 4
        self.requests = []
        self.on_write = self._answer

    def set_fault(self, fault, count=None, code=4):
        self.fault = fault
        self.fault_count = count
        self.exception_code = code

    def _answer(self, req):
        if len(req) < 8 or crc16(req) != 0:
            return
        if self.log:
            self.requests.append(req)
        if req[0] != self.slave:
            return
        fc = req[1]
        addr = (req[2] << 8) | req[3]
        if fc in (3, 4):
            count = (req[4] << 8) | req[5]
            body = bytearray([self.slave, fc, 2 * count])
            for a in range(addr, addr + count):
                if fc not in self.fcs or a not in self.regs:
                    body = bytearray([self.slave, fc | 0x80, 2 if fc in self.fcs else 1])
                    break
                body.append(self.regs[a] >> 8)
                body.append(self.regs[a] & 0xFF)
        elif fc == 6:
            self.regs[addr] = (req[4] << 8) | req[5]
            body = bytearray(req[:6])
        elif fc == 16:
            count = (req[4] << 8) | req[5]
            for k in range(count):
                self.regs[addr + k] = (req[7 + 2 * k] << 8) | req[8 + 2 * k]
            body = bytearray(req[:6])
        else:
            body = bytearray([self.slave, fc | 0x80, 1])
        frame = bytearray(with_crc(body))
        fault = self.fault
        if fault is not None:
            if self.fault_count is not None:
                self.fault_count -= 1
                if self.fault_count <= 0:
                    self.fault = None
            if fault == "silent":
                return
            if fault == "crc":
                frame[-1] ^= 0x5A
            elif fault == "exception":
                frame = bytearray(with_crc(bytes([self.slave, fc | 0x80, self.exception_code])))
            elif fault == "other_slave":
                frame = bytearray(with_crc(bytes([self.slave + 1]) + bytes(frame[1:-2])))
            elif fault == "truncated":
                frame = frame[:len(frame) // 2]
            elif fault == "garbage":
                frame = bytearray(b"\x00\xff\x13\x37\x01") + frame
        self.feed(frame, self.delay_ms)

"""What the unix-port benchmarks share: the line channel to tools/bench.py, the meter
stream that tells the pacer when an answer is owed, and a Station on a SimBoard.

Runs on the MicroPython unix port (and imports on CPython). Kept small: everything here is
on the heap the heap benchmark measures.
"""
import gc
import json
import sys
import time

from firmware.compat import ticks_diff
from firmware.storage import OsFs, Store
from tools.pilotsim.simboard import SimBoard


def say(record):
    """One JSON line to tools/bench.py, written piece by piece (json.dump to the stream):
    the result line is larger than the free blocks of a heap the session just filled."""
    json.dump(record, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()


def ask(record):
    """A request that waits for tools/bench.py's answer line ("ok")."""
    say(record)
    answer = sys.stdin.readline().strip()
    if answer != "ok":
        raise RuntimeError("bench refused %s: %s" % (record.get("req"), answer))


class HeapProbe:
    """Narrows the heap-peak bound inside a loop iteration. While armed (the collector is
    off), every call the firmware makes to the board's clock, the filesystem or the meter
    UART first reads gc.mem_alloc() (everything live at the last collection plus all that
    was allocated since, an upper bound of the heap in use at any moment in between) and
    then collects. The peak of those readings bounds the iteration piece by piece."""

    def __init__(self):
        self.armed = False
        self.peak = 0
        self.samples = 0

    def sample(self):
        if self.armed:
            a = gc.mem_alloc()
            if a > self.peak:
                self.peak = a
            self.samples += 1
            gc.collect()


PROBE = HeapProbe()


class ProbingFs(OsFs):
    """The real filesystem, sampling the heap before every operation."""

    def open(self, path, mode):
        PROBE.sample()
        return OsFs.open(self, path, mode)

    def sync(self, f):
        PROBE.sample()
        OsFs.sync(self, f)

    def rename(self, old, new):
        PROBE.sample()
        OsFs.rename(self, old, new)

    def remove(self, path):
        PROBE.sample()
        OsFs.remove(self, path)

    def stat(self, path):
        PROBE.sample()
        return OsFs.stat(self, path)

    def listdir(self, path):
        PROBE.sample()
        return OsFs.listdir(self, path)

    def mkdir(self, path):
        PROBE.sample()
        OsFs.mkdir(self, path)


class ProbingBoard(SimBoard):
    """The SimBoard, sampling the heap whenever the firmware reads its clock."""

    def ticks_ms(self):
        PROBE.sample()
        return SimBoard.ticks_ms(self)


class WatchedUart:
    """The meter stream, remembering whether a request is waiting for its answer."""

    def __init__(self, uart):
        self.uart = uart
        self.pending = False

    def write(self, buf):
        PROBE.sample()
        self.pending = True
        return self.uart.write(buf)

    def any(self):
        PROBE.sample()
        n = self.uart.any()
        if n:
            self.pending = False
        return n

    def readinto(self, buf, nbytes=None):
        got = self.uart.readinto(buf) if nbytes is None else self.uart.readinto(buf, nbytes)
        if got:
            self.pending = False
        return got

    def read(self, n=-1):
        data = self.uart.read(n)
        if data:
            self.pending = False
        return data

    def flush(self):
        pass

    def set_de(self, on):
        pass


class Pacer:
    """SimBoard.pacer: simulated time runs as fast as the firmware computes, except while
    a real peer owes an answer. A Modbus request in flight waits (in wall time, at most the
    simulated step) for the first byte of the reply, so meter_timeout_ms keeps its meaning
    against the real pymodbus peer; until the link has been online once the clock runs 1:1
    with wall time, so the first connection is not timed out by a clock racing ahead.
    Later reconnections run unpaced (loopback answers within a simulated step or two)."""

    def __init__(self, uart=None):
        self.uart = uart
        self.station = None
        self.paced_ms = 0

    def __call__(self, ms):
        u = self.uart
        link = self.station.link if self.station is not None else None
        if u is not None and u.pending:
            start = time.ticks_ms()
            while not u.uart.any() and ticks_diff(time.ticks_ms(), start) < ms:
                time.sleep_us(200)
            self.paced_ms += ms
        elif link is not None and not link.online and not link.connects:
            time.sleep_ms(ms)
            self.paced_ms += ms


class Rig:
    """The hardware side of a run: the SimBoard (with the meter on a TcpUart to the
    pymodbus peer), its pacer and the filesystem the Store uses. Built before the firmware
    is imported, so that what it holds can be measured apart (HarnessRoom). `probe`: the
    board's clock and the filesystem call PROBE.sample() (see HeapProbe)."""

    def __init__(self, storage, meter_port=None, board_class=None, probe=False):
        uart = None
        if meter_port:
            from tools.tcpuart import TcpUart
            uart = WatchedUart(TcpUart("127.0.0.1", meter_port))
        cls = board_class or (ProbingBoard if probe else SimBoard)
        self.storage = storage
        self.board = cls(meter_uart=uart, storage=storage)
        self.pacer = Pacer(uart)
        self.board.pacer = self.pacer
        self.fs = ProbingFs() if probe else OsFs()

    def station(self, config):
        from firmware.station import Station
        station = Station(self.board, config=config, store=Store(self.storage, self.fs))
        self.pacer.station = station
        return station


def build(storage, config, meter_port=None, board_class=None, probe=False):
    """(station, board, pacer): a Rig and the Station on it."""
    rig = Rig(storage, meter_port, board_class, probe)
    return rig.station(config), rig.board, rig.pacer


class HarnessRoom:
    """Gives the firmware the heap of an ESP32 although the harness shares the process.

    On an ESP32 the board (pins, ADC, PWM, UART) is the `machine` module and hardware: C
    code and registers, no GC heap. On the stand-in the SimBoard, the pilot model, the TCP
    UART, this module and the lock-step channel stand for it and live in the same heap.
    So the process is started with a heap larger than the figure under test (`room`), the
    harness is imported and built first, what it then holds is measured (`begin()` before,
    `reserve()` after, each after a collection), and one block (the ballast) takes the
    rest of the excess: the firmware's modules and data then have exactly the pool that
    `-X heapsize=<figure>` gives (`pool`, measured by tools/bench.py from a process of that
    size), whatever the harness's size. Counted as firmware, to err on the safe side: the
    interpreter's own start-up heap, the firmware modules the harness builds on (imported
    before `begin()`), the run's parameters, and everything the harness allocates later
    (its JSON lines, the EV model's arithmetic), which churns in the firmware's share.
    The ballast is one block right after the harness; the firmware's share is the small
    holes the harness left plus one free run, as on a board where boot.py ran first."""

    def __init__(self):
        self.start = 0
        self.harness = 0
        self.ballast = None
        self.ballast_bytes = 0

    def begin(self):
        gc.collect()
        self.start = gc.mem_alloc()

    def reserve(self, pool=None):
        """Measures the harness; with `pool`, leaves the firmware that many bytes."""
        gc.collect()
        self.harness = gc.mem_alloc() - self.start
        if pool is None:
            return self.firmware_pool()
        excess = gc.mem_free() - (pool - (gc.mem_alloc() - self.harness))
        if excess < 0:
            raise RuntimeError("the harness (%d B) does not fit the room given for it"
                               % self.harness)
        free0 = gc.mem_free()
        # One block when the heap has the run for it; else (the simulator's runner leaves
        # its heap in pieces) the largest pieces that fit, placed first fit as the allocator
        # places everything. A bytearray of n bytes takes one 16-byte block for the object
        # and n/16 for the data; bytearray(0) only the first. The list is made first.
        self.ballast = [None] * 32
        left = excess - (free0 - gc.mem_free())
        piece = left
        k = 0
        while left >= 16 and k < len(self.ballast):
            piece = min(piece, left)
            try:
                self.ballast[k] = bytearray(piece - 16)
            except MemoryError:
                piece = max(16, (piece // 2) & ~15)
                continue
            k += 1
            left = excess - (free0 - gc.mem_free())
        self.ballast_bytes = free0 - gc.mem_free()
        return self.firmware_pool()

    def firmware_pool(self):
        """The pool the firmware has: what is neither the harness nor the ballast."""
        return gc.mem_alloc() + gc.mem_free() - self.harness - self.ballast_bytes


ROOM = HarnessRoom()


def read_json(path):
    with open(path) as f:
        return json.load(f)

"""The fault and event history on flash: what a technician reads after a reboot.

The charge controller's events (firmware/events.py: state changes, contactor movements,
offers, faults raised and cleared, self-tests, wake-ups, lock) and the station's own
milestones (boot, a stop at the REPL, a shutdown) are kept as small fixed records in a
ring of SEGMENTS files of PER_SEGMENT records each ("hist0" .. "hist3": between 192 and
256 records survive, about 7 KB of flash). Each record says when it happened twice:

  utc   seconds since 1970-01-01 UTC when the clock was set (NTP), else 0
  up    the uptime of boot `boot` in tenths of a second (always)

Record layout (RECORD bytes, little-endian): seq u32, utc u32, up u32, boot u16, kind u8,
flags u8, a i32, b i32, check u16, reserved u16. `seq` numbers every record ever written;
record `seq` lives in segment (seq // PER_SEGMENT) % SEGMENTS at index seq % PER_SEGMENT.
`check` is the low 16 bits of the CRC-32 of the bytes before it: a record torn by a power
cut, or flash that was never written, fails it and is skipped.

Wear: records collect in a RAM buffer of BUFFER records (224 bytes, allocated once) and go
to flash in one append when the buffer is full (at most every MIN_GAP_MS), FLUSH_MS after
the first buffered record, and at a stop (shutdown, Ctrl-C). Nothing is written per tick;
a burst beyond the rate limit is counted and logged as one HK_LOST record. On littlefs an
append rewrites at most the segment's last block; a new segment starts by truncating the
oldest. Reading walks the segments newest first and keeps only the records asked for.
"""
import struct
from binascii import crc32

from firmware.compat import const, ticks_diff
from firmware.storage import StorageError

SEGMENTS = const(4)
PER_SEGMENT = const(64)
RECORD = const(28)
BUFFER = const(8)
FLUSH_MS = const(60000)
MIN_GAP_MS = const(5000)
_FMT = "<IIIHBBii"           # the bytes the check covers (24)
_CHECKED = const(24)
F_UTC = const(1)             # flags: utc is valid

# Kinds beyond firmware.events' EV_* (0..7).
HK_BOOT = const(32)          # a = RESET_CAUSES index, b = 1 when the previous run crashed
HK_STOP = const(33)          # a = STOP_REASONS index
HK_LOST = const(34)          # a = records not logged (rate limit or flash failure)

RESET_CAUSES = ("unknown", "power_on", "hard", "watchdog", "deep_sleep", "soft")
STOP_REASONS = ("other", "interrupted at the REPL (Ctrl-C)", "service mode", "reboot",
                "crash")


def cause_index(name):
    return RESET_CAUSES.index(name) if name in RESET_CAUSES else 0


def stop_index(reason):
    for i, key in enumerate(("other", "interrupted", "service", "reboot", "crash")):
        if key == reason:
            return i
    return 0


def segment_name(i):
    return "hist%d" % i


def _check(buf, off):
    return crc32(bytes(buf[off:off + _CHECKED])) & 0xFFFF


def _valid(buf, off):
    if off + RECORD > len(buf):
        return False
    return struct.unpack_from("<H", buf, off + _CHECKED)[0] == _check(buf, off) \
        and buf[off:off + RECORD] != b"\xff" * RECORD


def _unpack(buf, off):
    """(seq, utc, up_ds, boot, kind, a, b) of the record at `off`."""
    seq, utc, up, boot, kind, flags, a, b = struct.unpack_from(_FMT, buf, off)
    return (seq, utc if flags & F_UTC else None, up, boot, kind, a, b)


def _read_segment(store, i):
    try:
        f = store.fs.open(store.path(segment_name(i)), "rb")
    except OSError:
        return b""
    try:
        return f.read()
    except OSError:
        return b""
    finally:
        f.close()


def _last_seq(data):
    """The seq of the last valid record in a segment's bytes, or -1."""
    off = (len(data) // RECORD - 1) * RECORD
    while off >= 0:
        if _valid(data, off):
            return struct.unpack_from("<I", data, off)[0]
        off -= RECORD
    return -1


def read(store, n=10, kinds=None, pending=()):
    """Up to `n` newest records (oldest first) as (seq, utc or None, up_ds, boot, kind, a,
    b), only those whose kind is in `kinds` when given. `pending`: records not yet on flash
    (History.pending()), newer than any stored one."""
    out = []
    for rec in reversed(pending):
        if len(out) >= n:
            break
        if kinds is None or rec[4] in kinds:
            out.append(rec)
    order = []
    for i in range(SEGMENTS):
        data = _read_segment(store, i)
        last = _last_seq(data)
        if last >= 0:
            order.append((last, i))
        data = None
    order.sort()
    order.reverse()
    newest = None
    for last, i in order:
        if len(out) >= n:
            break
        data = _read_segment(store, i)
        off = (len(data) // RECORD - 1) * RECORD
        while off >= 0 and len(out) < n:
            if _valid(data, off):
                rec = _unpack(data, off)
                # A segment left from an older lap holds records older than the newer
                # segments' first: the ring order is the seq order.
                if newest is None or rec[0] < newest:
                    newest = rec[0]
                    if kinds is None or rec[4] in kinds:
                        out.append(rec)
            off -= RECORD
    out.reverse()
    return out


class History:
    """The station's writer. `add()` packs into the preallocated buffer (a few small ints
    allocated at most: not for the safety tick, for the event drain after it)."""

    def __init__(self, store, boot=0, wall_time=None, now_ms=0):
        self.store = store
        self.boot = boot & 0xFFFF
        self._wall = wall_time
        self._buf = bytearray(BUFFER * RECORD)
        self._n = 0
        self._first_ms = 0
        self._flushed_ms = None
        self._up_s = 0
        self._up_ms = 0
        self._at = now_ms
        self.lost = 0          # records not logged since boot
        self._lost_unlogged = 0
        self.writes = 0        # flash appends since boot
        self.error = None      # the last flash failure, else None
        self.seq = self._next_seq()

    def _next_seq(self):
        best = -1
        best_i = 0
        for i in range(SEGMENTS):
            data = _read_segment(self.store, i)
            last = _last_seq(data)
            if last > best:
                best = last
                best_i = i
            data = None
        if best < 0:
            return 0
        # The newest segment must end exactly after its last valid record: a torn append
        # (power cut) is cut away once here, so later appends stay aligned.
        data = _read_segment(self.store, best_i)
        keep = (best % PER_SEGMENT + 1) * RECORD
        if len(data) != keep:
            try:
                self._write(best_i, data[:keep], "wb")
            except StorageError as e:
                self.error = str(e)
        return best + 1

    # -- time ---------------------------------------------------------------------------
    def _advance(self, now_ms):
        d = ticks_diff(now_ms, self._at)
        if d > 0:
            self._up_ms += d
            if self._up_ms >= 1000:
                self._up_s += self._up_ms // 1000
                self._up_ms %= 1000
        self._at = now_ms

    def uptime_ds(self, now_ms):
        """Uptime in tenths of a second."""
        self._advance(now_ms)
        return self._up_s * 10 + self._up_ms // 100

    # -- writing ------------------------------------------------------------------------
    def add(self, kind, a=0, b=0, now_ms=0, t_ms=None):
        """Log one record; `t_ms` (ticks) when it happened, if before `now_ms`."""
        age = ticks_diff(now_ms, t_ms) if t_ms is not None else 0
        if age < 0:
            age = 0
        if self._n >= BUFFER and not self._flush_allowed(now_ms):
            self.lost += 1
            self._lost_unlogged += 1
            return False
        if self._n >= BUFFER:
            self.flush(now_ms)
            if self._n >= BUFFER:          # the flash refused: the oldest waits, this goes
                self.lost += 1
                self._lost_unlogged += 1
                return False
        if self._lost_unlogged and self._n < BUFFER - 1:
            lost = self._lost_unlogged
            self._lost_unlogged = 0
            self._pack(HK_LOST, lost, 0, now_ms, 0)
        self._pack(kind, a, b, now_ms, age)
        return True

    def _pack(self, kind, a, b, now_ms, age_ms):
        up = self.uptime_ds(now_ms) - age_ms // 100
        if up < 0:
            up = 0
        wall = self._wall() if self._wall is not None else None
        flags = 0
        utc = 0
        if wall is not None:
            utc = wall - (age_ms + 500) // 1000
            flags = F_UTC
        if not self._n:
            self._first_ms = now_ms
        off = self._n * RECORD
        struct.pack_into(_FMT, self._buf, off, self.seq, utc, up, self.boot, kind & 0xFF,
                         flags, a, b)
        struct.pack_into("<HH", self._buf, off + _CHECKED, _check(self._buf, off), 0)
        self.seq += 1
        self._n += 1

    def _flush_allowed(self, now_ms):
        return self._flushed_ms is None or ticks_diff(now_ms, self._flushed_ms) >= MIN_GAP_MS

    def tick(self, now_ms):
        """Called every loop iteration: counts the uptime, and writes the buffer when it is
        full or FLUSH_MS old (never more often than MIN_GAP_MS). Allocation-free when there
        is nothing to write."""
        self._advance(now_ms)
        if not self._n or not self._flush_allowed(now_ms):
            return False
        if self._n >= BUFFER or ticks_diff(now_ms, self._first_ms) >= FLUSH_MS:
            return self.flush(now_ms)
        return False

    def flush(self, now_ms=None):
        """Append the buffered records to their segments. True when written."""
        if not self._n:
            return True
        if now_ms is not None:
            self._flushed_ms = now_ms
        first = self.seq - self._n
        i = 0
        try:
            while i < self._n:
                seq = first + i
                seg = (seq // PER_SEGMENT) % SEGMENTS
                # The records of this batch that fall into the same segment: one append.
                room = PER_SEGMENT - seq % PER_SEGMENT
                take = min(room, self._n - i)
                chunk = bytes(self._buf[i * RECORD:(i + take) * RECORD])
                self._write(seg, chunk, "wb" if seq % PER_SEGMENT == 0 else "ab")
                i += take
        except StorageError as e:
            self.error = str(e)
            # Keep what was not written: the buffer moves up, retried after MIN_GAP_MS.
            rest = self._n - i
            self._buf[0:rest * RECORD] = self._buf[i * RECORD:self._n * RECORD]
            self._n = rest
            return False
        self._n = 0
        self.error = None
        return True

    def _write(self, seg, data, mode):
        fs = self.store.fs
        path = self.store.path(segment_name(seg))
        try:
            f = fs.open(path, mode)
        except OSError as e:
            raise StorageError("%s: cannot open (%s)" % (path, e))
        try:
            f.write(data)
            fs.sync(f)
        except OSError as e:
            raise StorageError("%s: write failed (%s)" % (path, e))
        finally:
            f.close()
            # Like every Store write: the safety tick gets its turn after the operation
            # (a segment append may cost an erase, tens of ms on NOR flash).
            self.store.op_done()
        self.writes += 1

    # -- reading ------------------------------------------------------------------------
    def pending(self):
        """The buffered records (not yet on flash), oldest first."""
        return [_unpack(self._buf, k * RECORD) for k in range(self._n)]

    def records(self, n=10, kinds=None):
        return read(self.store, n, kinds, self.pending())

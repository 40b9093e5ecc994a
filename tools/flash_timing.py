"""How long flash writes take, in simulated time: a wrapper over any filesystem with the
interface of firmware.storage.OsFs (PowerCutFs, FailingFs, OsFs) that advances a simulated
clock by the time each operation holds the CPU on an ESP32's SPI NOR flash under littlefs.

The ESP32 runs littlefs from the main task and an erase or program blocks it (flash and the
instruction cache share the SPI bus), so nothing else runs meanwhile, not even the safety
tick. Typical NOR figures (W25Q32/GD25Q32 data sheets, as on ESP32-WROOM modules):
    sector erase (4 KB)   ~45 ms         ERASE_US
    page program (256 B)  ~0.5 ms        PROGRAM_US
littlefs is copy-on-write: a file's data committed by flush/close goes to freshly erased
blocks, and an append copies the partly filled last block to a new one (lfs_ctz_extend).
The model is the pessimistic form of that:
  - a data commit (flush, sync or close of a file opened for writing, with bytes written
    since its last commit) erases max(1, ceil(n / 4096)) sectors and programs the bytes
    committed plus the copied tail of the last block, in pages;
  - every metadata commit (open for writing, the commit of a data write, rename, remove,
    mkdir) programs one page, and every COMPACT_EVERY-th compacts the metadata pair: one
    more erase.
Reads are not charged (SPI reads run at megabytes per second).

`advance_ms(ms)` moves the simulated clock; the fractions of a millisecond are carried
over. `before_op(fs)`, when set, is called as each charged operation begins (before its
time passes): a test changes the world there to land a stimulus inside a flash operation.
`busy_us` is the total charged, `erases` and `pages` the counts, `ops` the operations and
`longest_us` the longest single one.
"""

ERASE_US = 45000
PROGRAM_US = 500
SECTOR = 4096
PAGE = 256
COMPACT_EVERY = 16


def _ceil(n, d):
    return (n + d - 1) // d


class _TimedFile:
    def __init__(self, fs, f, path, size_before):
        self._fs = fs
        self._f = f
        self._path = path
        self._size = size_before
        self._pending = 0

    def read(self, *a):
        return self._f.read(*a)

    def seek(self, *a):
        return self._f.seek(*a)

    def tell(self):
        return self._f.tell()

    def fileno(self):
        return self._f.fileno()

    def write(self, data):
        n = self._f.write(data)
        self._pending += len(data)
        return n

    def _charge(self):
        if self._pending:
            tail = self._size % SECTOR
            n = self._pending
            self._size += n
            self._pending = 0
            self._fs._charge(max(1, _ceil(n, SECTOR)), _ceil(n + tail, PAGE) + 1)

    def flush(self):
        self._f.flush()
        self._charge()

    def close(self):
        self._f.close()
        self._charge()

    def __enter__(self):
        return self

    def __exit__(self, *args):
        self.close()


class FlashTimingFs:
    def __init__(self, inner, advance_ms, erase_us=ERASE_US, program_us=PROGRAM_US):
        self.inner = inner
        self.advance_ms = advance_ms
        self.erase_us = erase_us
        self.program_us = program_us
        self.busy_us = 0
        self.longest_us = 0
        self.erases = 0
        self.pages = 0
        self.ops = 0
        self.before_op = None
        self._meta = 0
        self._carry_us = 0

    def _charge(self, erases, pages):
        # One operation: `erases` sectors, `pages` pages, and its metadata commit.
        if self.before_op is not None:
            self.before_op(self)
        self._meta += 1
        if self._meta % COMPACT_EVERY == 0:
            erases += 1
        us = erases * self.erase_us + pages * self.program_us
        self.erases += erases
        self.pages += pages
        self.ops += 1
        self.busy_us += us
        if us > self.longest_us:
            self.longest_us = us
        self._carry_us += us
        ms = self._carry_us // 1000
        if ms:
            self._carry_us -= ms * 1000
            self.advance_ms(ms)

    def _meta_commit(self):
        self._charge(0, 1)

    # -- the OsFs interface ---------------------------------------------------------------
    def open(self, path, mode):
        if "r" in mode and "+" not in mode:
            return self.inner.open(path, mode)
        size = 0
        if "a" in mode:
            try:
                size = self.inner.stat(path)[6]
            except OSError:
                size = 0
        f = self.inner.open(path, mode)
        self._meta_commit()
        return _TimedFile(self, f, path, size)

    def sync(self, f):
        f.flush()
        # The inner filesystem's own sync (fsync on CPython) has nothing left to commit.

    def rename(self, old, new):
        self.inner.rename(old, new)
        self._meta_commit()

    def remove(self, path):
        self.inner.remove(path)
        self._meta_commit()

    def stat(self, path):
        return self.inner.stat(path)

    def listdir(self, path):
        return self.inner.listdir(path)

    def mkdir(self, path):
        self.inner.mkdir(path)
        self._meta_commit()

"""Crash-safe files on flash: whole files replaced atomically, and append-only journals.

The station loses power whenever the site does, so every file must read back as either
its old or its new contents, and a record that was reported written must stay written.

Store.write_atomic(name, data) writes `name.tmp`, flushes it to the medium, closes it and
renames it over `name`. The file starts with a header (magic, length, CRC-32), so a torn,
truncated or bit-flipped copy is recognised rather than parsed:
  - `name` intact            -> it is the value; a leftover `name.tmp` is a write that never
                                finished (rolled back) and is removed.
  - `name` missing or broken,
    `name.tmp` intact        -> the crash fell between removing the old file and the rename
                                (FAT renames over an existing file that way): rolled forward.
  - neither intact           -> StorageError; missing both -> None.

Journal(store, name) is an append-only file of framed records:
    0xA5, kind ('R' record / 'C' commit), length (u16 big-endian), CRC-32 (u32 big-endian)
    over kind + length + payload, then the payload.
An append is one write and one flush. At the first use after boot the journal is scanned:
a torn tail (the append that was in flight when power failed) is dropped and cut away by an
atomic rewrite; a damaged record inside the file (flash corruption, not a power cut) is
skipped and the next valid frame is found by its magic and CRC, so nothing else is lost
(a payload longer than 4 KB is CRC-checked in chunks before it is read whole, so a damaged
length field cannot exhaust the heap).
rewrite() writes `name.tmp` ending in a commit frame and renames it over the journal; a
temp file without its commit frame is never promoted.

Durability per platform:
  - littlefs (the ESP32's default): a file's data and size are committed by flush()
    (lfs_file_sync) and by close(); rename() is atomic. MicroPython has no os.fsync, so
    flush + close is the commit point there; os.sync() is called where the port has it.
  - POSIX (unix port, CPython on the host): flush + os.fsync on CPython; the unix port
    has no fsync, which only matters on a host power loss, not for the tests.
  - FAT: rename over an existing file is remove + rename; read() rolls forward (above).

Nothing here is for the control tick: every call does file I/O and allocates.

Flash time: an erase of a 4 KB NOR sector blocks the CPU for tens of ms and one session end
makes a dozen flash operations, so a loop that ran the safety tick only between its slow
parts once saw a C->B change 875 ms late. Store.pause, when set, is called after every
flash operation (each commit, rename, remove): the station runs its safety tick there when
one is due, so a pilot change waits for at most one flash operation (docs/performance.md).
"""
import io
import json
import struct
from binascii import crc32

try:
    import os
except ImportError:  # pragma: no cover - every port has os; kept for frozen minimal builds
    os = None

try:
    from errno import ENOENT, EEXIST
except ImportError:  # pragma: no cover
    ENOENT = 2
    EEXIST = 17

from firmware.compat import const

_FILE_MAGIC = b"CPF1"
_FILE_HDR = const(12)                 # magic(4) + length u32 + crc32 u32
_REC_MAGIC = const(0xA5)
_KIND_RECORD = const(0x52)            # 'R'
_KIND_COMMIT = const(0x43)            # 'C'
_REC_HDR = const(8)                   # magic, kind, length u16, crc32 u32
MAX_RECORD = 65535                    # a record's payload, bytes (u16 length field)
_SCAN_CHUNK = const(128)
_DIRECT_READ = const(4096)            # longer payloads are CRC-checked in chunks before reading
_CHECK_CHUNK = const(512)
# Store.write_json writes the file in pieces of this size, and Store.read(view=True) reads
# a file that fits into the same buffer: 1 KB holds a session record (about 800 B).
_JSON_PIECE = const(1024)
TMP_SUFFIX = ".tmp"


class StorageError(OSError):
    """The medium failed, or a file is damaged with no intact copy left. args[0] says which."""


def _crc(data, value=0):
    return crc32(data, value) & 0xFFFFFFFF


def _errno(e):
    code = getattr(e, "errno", None)
    if code is None and e.args:
        code = e.args[0]
    return code


def _as_bytes(data, what):
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise ValueError("%s: expected bytes, got %s" % (what, type(data).__name__))


class _JsonSink(io.IOBase):
    """json.dump's target: collects what it is given in the store's piece buffer `buf` and,
    a piece at a time, counts its length and CRC and, with `out` (a file), writes it. The
    first `skip` bytes of the buffer (a header put there first) are written, not counted.
    Store.write_json encodes twice, once to learn the header and once into the file, so a
    record written as JSON never needs a block of its size: on the ESP32 json.dumps grows
    its string by reallocation, and its final block is the one a fragmented heap lacks
    (docs/performance.md, Heap). json.dump writes token by token (a quote, a key, a colon):
    nothing is computed per token, as a CRC of 32 bits is a new int object each time on a
    32-bit port and a session record has some 500 tokens."""

    def __init__(self, buf, out=None, crc=0, skip=0):
        self.buf = buf
        self.out = out
        self.n = 0
        self.crc = crc
        self.used = skip
        self.skip = skip

    def write(self, chunk):
        # CPython's json writes str; MicroPython's a bytearray over its own memory, valid
        # only during the call: copied here, never kept by reference.
        if isinstance(chunk, str):
            chunk = chunk.encode()
        k = len(chunk)
        if self.used + k > len(self.buf):
            self.flush()
        if k > len(self.buf):
            self._emit(chunk)
        else:
            self.buf[self.used:self.used + k] = chunk
            self.used += k
        return k

    def _emit(self, data):
        self.n += len(data)
        self.crc = _crc(data, self.crc)
        if self.out is not None:
            self.out.write(data)

    def flush(self):
        if self.used:
            view = memoryview(self.buf)
            self.n += self.used - self.skip
            self.crc = _crc(view[self.skip:self.used], self.crc)
            if self.out is not None:
                self.out.write(view[:self.used])
            self.used = self.skip = 0


def _dump(value, sink):
    # A function writes its JSON itself: an object too wide to build as a dict first
    # (firmware/session.py _Session.dump_json).
    if callable(value):
        value(sink)
    else:
        json.dump(value, sink)


def _check_name(name):
    if not isinstance(name, str) or not name or "/" in name or name.endswith(TMP_SUFFIX) \
            or name in (".", ".."):
        raise ValueError("storage: bad file name %r" % (name,))


try:
    _fsync = os.fsync          # CPython
except AttributeError:
    _fsync = None
try:
    _os_sync = os.sync         # MicroPython ports with a block cache (FAT on SD)
except AttributeError:
    _os_sync = None


class OsFs:
    """The real filesystem: os and open(). The interface the storage layer uses; a test
    double with the same methods can cut the power between any two of them."""

    def open(self, path, mode):
        return open(path, mode)

    def sync(self, f):
        # littlefs commits on flush; fsync is the POSIX equivalent where it exists.
        f.flush()
        if _fsync is not None:
            _fsync(f.fileno())
        elif _os_sync is not None:
            _os_sync()

    def rename(self, old, new):
        os.rename(old, new)
        if _fsync is not None:
            # POSIX: the rename itself is durable only once its directory is synced.
            try:
                # CPython only: MicroPython's os has no fsync, so _fsync is None there.
                fd = os.open(new.rsplit("/", 1)[0] if "/" in new else ".",
                             os.O_RDONLY)  # pyright: ignore[reportAttributeAccessIssue]
            except (OSError, AttributeError):
                return
            try:
                _fsync(fd)
            except OSError:
                pass
            finally:
                os.close(fd)

    def remove(self, path):
        os.remove(path)

    def stat(self, path):
        return os.stat(path)

    def listdir(self, path):
        return os.listdir(path)

    def mkdir(self, path):
        os.mkdir(path)


class Store:
    """Named files in one directory, each replaced atomically and checked by CRC on read."""

    def __init__(self, root, fs=None):
        if not isinstance(root, str) or not root:
            raise ValueError("storage: root must be a directory path")
        self.fs = fs if fs is not None else OsFs()
        self.pause = None      # called after each flash operation (see the module docstring)
        self.ops = 0           # flash operations made (firmware/flashsched.py counts on it)
        self.root = root.rstrip("/") if root != "/" else ""
        self._make_root()
        # write_json's piece buffer: made with the store, before the station's other
        # long-lived objects, and reused; made per write it was itself the block a
        # fragmented heap lacked.
        self._piece = bytearray(_JSON_PIECE)

    def _make_root(self):
        prefix = "/" if self.root.startswith("/") else ""
        path = ""
        for part in self.root.split("/"):
            if not part:
                continue
            path = (path + "/" + part) if path else prefix + part
            try:
                self.fs.mkdir(path)
            except OSError as e:
                # An existing directory reports EEXIST (or EISDIR/EPERM on some ports).
                if _errno(e) != EEXIST and not self._exists(path):
                    raise StorageError("storage: cannot create %s (errno %s)" % (path, _errno(e)))

    def path(self, name):
        _check_name(name)
        return self.root + "/" + name

    # -- helpers shared with Journal -----------------------------------------------------
    def op_done(self):
        """A flash operation has just finished (a writer outside this module calls it too):
        counted, and Store.pause runs."""
        self.ops = (self.ops + 1) & 0x3FFFFFFF    # a small int, whatever the uptime
        if self.pause is not None:
            self.pause()

    def _read_raw(self, path, into=None):
        # into: a buffer to read the file into when it fits (a memoryview of it returned).
        try:
            f = self.fs.open(path, "rb")
        except OSError as e:
            if _errno(e) == ENOENT:
                return None
            raise StorageError("%s: cannot open (errno %s)" % (path, _errno(e)))
        try:
            # The size first: read() of unknown length grows its buffer in steps, and on a
            # fragmented heap the step above the file's size may be the block that is missing.
            n = f.seek(0, 2)
            f.seek(0)
            if into is not None and n <= len(into) and hasattr(f, "readinto"):
                mv = memoryview(into)[:n]
                got = f.readinto(mv)
                return mv if got == n else mv[:got or 0]
            return f.read(n)
        except OSError as e:
            raise StorageError("%s: read failed (errno %s)" % (path, _errno(e)))
        finally:
            f.close()

    def _exists(self, path):
        try:
            self.fs.stat(path)
            return True
        except OSError:
            return False

    def _discard(self, path):
        try:
            self.fs.remove(path)
        except OSError as e:
            if _errno(e) != ENOENT:
                raise StorageError("%s: cannot remove (errno %s)" % (path, _errno(e)))
            return
        self.op_done()

    def _replace(self, tmp, path):
        try:
            self.fs.rename(tmp, path)
        except OSError as e:
            if _errno(e) != EEXIST:
                raise StorageError("%s: rename failed (errno %s)" % (path, _errno(e)))
            # Filesystems that refuse to rename over a file: remove, then rename. A crash
            # in between leaves only the complete temp file, which read() rolls forward.
            self._discard(path)
            try:
                self.fs.rename(tmp, path)
            except OSError as e2:
                raise StorageError("%s: rename failed (errno %s)" % (path, _errno(e2)))
        self.op_done()

    def _write_file(self, path, chunks):
        # `chunks` is an iterable of bytes, or a function that writes to the open file; all
        # of it is on the medium when this returns.
        try:
            f = self.fs.open(path, "wb")
        except OSError as e:
            raise StorageError("%s: cannot create (errno %s)" % (path, _errno(e)))
        done = False
        try:
            if callable(chunks):
                chunks(f)
            else:
                for chunk in chunks:
                    f.write(chunk)
            self.fs.sync(f)
            done = True
        except OSError as e:
            raise StorageError("%s: write failed (errno %s)" % (path, _errno(e)))
        finally:
            _close(f, path, done)
        self.op_done()

    # -- public --------------------------------------------------------------------------
    def write_atomic(self, name, data):
        """Replace `name` with `data` (bytes): afterwards a reader sees the old or the new
        contents in full, whatever moment the power fails."""
        path = self.path(name)
        data = _as_bytes(data, name)
        header = _FILE_MAGIC + struct.pack(">II", len(data), _crc(data))
        tmp = path + TMP_SUFFIX
        self._write_file(tmp, (header, data))
        self._replace(tmp, path)

    def json_sum(self, value):
        """(length, CRC) of the JSON text of `value`, without making the text. Here and in
        write_json and Journal.append_json, `value` may be a function that writes its JSON
        to the stream it is given, for an object too wide to build first."""
        first = _JsonSink(self._piece)
        _dump(value, first)
        first.flush()
        return first.n, first.crc

    def write_json(self, name, value, summed=None):
        """write_atomic(name, the JSON text of value) without the text in memory at once:
        the pieces json.dump makes go to the file as they come (see _JsonSink). `summed`:
        json_sum(value) when the caller has it already."""
        n, crc = summed or self.json_sum(value)
        path = self.path(name)
        tmp = path + TMP_SUFFIX

        def fill(f):
            # The header in the first piece: a record that fits is one write, as before.
            again = _JsonSink(self._piece, f, skip=_FILE_HDR)
            again.buf[:_FILE_HDR] = _FILE_MAGIC + struct.pack(">II", n, crc)
            _dump(value, again)
            again.flush()
            if again.n != n or again.crc != crc:
                raise ValueError("%s: changed while written" % name)
        self._write_file(tmp, fill)
        self._replace(tmp, path)

    def read(self, name, view=False):
        """The contents last written by write_atomic, or None when there are none.
        Raises StorageError when the file is damaged and no intact copy exists.
        view=True: a memoryview into the file as read instead of a copy of the contents
        (a record's payload is written to the network as it is: one block, not two); a
        file that fits the store's piece buffer is read into it, so the view is valid until
        the next read, JSON write or json_sum (no block of the record's size per read)."""
        path = self.path(name)
        tmp = path + TMP_SUFFIX
        raw = self._read_raw(path, self._piece if view else None)
        if raw is not None:
            data = _unframe_file(raw, view)
            if data is not None:
                if self._exists(tmp):
                    self._discard(tmp)     # an unfinished write: rolled back
                return data
        tmp_raw = self._read_raw(tmp)
        if tmp_raw is not None:
            data = _unframe_file(tmp_raw, view)
            if data is not None:
                self._replace(tmp, path)   # the old copy is gone: roll forward
                return data
            self._discard(tmp)
        if raw is not None:
            raise StorageError("%s: damaged (bad header or CRC) and no intact copy" % name)
        return None

    def remove(self, name):
        """Delete `name` (and any unfinished write of it). Missing is not an error."""
        path = self.path(name)
        self._discard(path + TMP_SUFFIX)
        self._discard(path)

    def exists(self, name):
        path = self.path(name)
        return self._exists(path) or self._exists(path + TMP_SUFFIX)

    def size(self, name):
        """Bytes on the medium (0 when missing)."""
        try:
            return self.fs.stat(self.path(name))[6]
        except OSError:
            return 0

    def names(self):
        """Stored names (temp files excluded)."""
        try:
            entries = self.fs.listdir(self.root or "/")
        except OSError as e:
            raise StorageError("%s: cannot list (errno %s)" % (self.root, _errno(e)))
        return [n for n in entries if not n.endswith(TMP_SUFFIX)]


def _close(f, what, check):
    # close() commits on littlefs, so its failure matters after a good write; after a
    # failed one it must not hide the first error.
    try:
        f.close()
    except OSError as e:
        if check:
            raise StorageError("%s: close failed (errno %s)" % (what, _errno(e)))


def _unframe_file(raw, view=False):
    if len(raw) < _FILE_HDR or bytes(raw[:4]) != _FILE_MAGIC:
        return None
    length, crc = struct.unpack(">II", raw[4:_FILE_HDR])
    data = memoryview(raw)[_FILE_HDR:]
    if len(data) != length or _crc(data) != crc:
        return None
    return data if view else bytes(data)


def _frame(kind, payload):
    head = struct.pack(">BH", kind, len(payload))
    return struct.pack(">B", _REC_MAGIC) + head + struct.pack(">I", _crc(payload, _crc(head))) + payload


class Journal:
    """Append-only records with a CRC each; see the module docstring for the format."""

    def __init__(self, store, name):
        self.store = store
        self.name = name
        self.path = store.path(name)
        self.tmp = self.path + TMP_SUFFIX
        self._ready = False
        self.dropped_bytes = 0     # damaged bytes cut away at the last recovery
        self.tail_torn = False     # the last recovery found a torn tail
        self.cut_failures = 0      # damage that could not be cut away (full, read-only flash)
        self.damaged_bytes_total = 0   # every damaged byte found since boot (diagnostics)

    # -- reading -------------------------------------------------------------------------
    def _parse_at(self, f, pos):
        """(kind, payload, next_pos) for a valid frame at pos, else None."""
        f.seek(pos)
        head = f.read(_REC_HDR)
        if len(head) < _REC_HDR or head[0] != _REC_MAGIC:
            return None
        kind, length, crc = struct.unpack(">BHI", head[1:])
        if kind != _KIND_RECORD and kind != _KIND_COMMIT:
            return None
        head_crc = _crc(head[1:4])
        if length > _DIRECT_READ:
            # A damaged length field claims up to 64 KB: reading that much at once to find
            # the CRC wrong would exhaust the ESP32's heap at boot. Check it chunk by chunk.
            value = head_crc
            left = length
            while left:
                chunk = f.read(left if left < _CHECK_CHUNK else _CHECK_CHUNK)
                if not chunk:
                    return None
                value = _crc(chunk, value)
                left -= len(chunk)
            if value != crc:
                return None
            f.seek(pos + _REC_HDR)
        payload = f.read(length) if length else b""
        if len(payload) < length or _crc(payload, head_crc) != crc:
            return None
        return kind, payload, pos + _REC_HDR + length

    def _next_magic(self, f, pos):
        while True:
            f.seek(pos)
            chunk = f.read(_SCAN_CHUNK)
            if not chunk:
                return -1
            i = chunk.find(b"\xa5")
            if i >= 0:
                return pos + i
            pos += len(chunk)

    def _frames(self, path, stats=None):
        """Yield (kind, payload) of every valid frame in `path`; damaged stretches are
        skipped. `stats` (a list [junk_bytes, torn_tail]) is filled in when given."""
        try:
            f = self.store.fs.open(path, "rb")
        except OSError as e:
            if _errno(e) == ENOENT:
                return
            raise StorageError("%s: cannot open (errno %s)" % (self.name, _errno(e)))
        try:
            pos = 0
            while True:
                rec = self._parse_at(f, pos)
                if rec is None:
                    f.seek(pos)
                    if not f.read(1):
                        return                   # clean end of file
                    bad = pos
                    q = self._next_magic(f, pos + 1)
                    while q >= 0:
                        rec = self._parse_at(f, q)
                        if rec is not None:
                            break
                        q = self._next_magic(f, q + 1)
                    if rec is None:
                        if stats is not None:
                            f.seek(0, 2)
                            stats[0] += f.tell() - bad
                            stats[1] = True
                        return
                    if stats is not None:
                        stats[0] += q - bad
                yield rec[0], rec[1]
                pos = rec[2]
        except OSError as e:
            raise StorageError("%s: read failed (errno %s)" % (self.name, _errno(e)))
        finally:
            f.close()

    def _has_commit(self, path):
        last = None
        for kind, _payload in self._frames(path):
            last = kind
        return last == _KIND_COMMIT

    def _recover(self):
        if self._ready:
            return
        st = self.store
        if st._exists(self.tmp):
            try:
                if st._exists(self.path) or not self._has_commit(self.tmp):
                    st._discard(self.tmp)        # an unfinished rewrite: the old file stands
                else:
                    st._replace(self.tmp, self.path)  # removed old, crashed before rename
            except StorageError:
                self.cut_failures += 1           # read-only: the journal file stands as is
        stats = [0, False]
        for _frame_ in self._frames(self.path, stats):
            pass
        self.dropped_bytes = stats[0]
        self.tail_torn = stats[1]
        self.damaged_bytes_total += stats[0]
        if stats[0]:
            # Cut the damage away so later appends follow a clean record boundary. On a
            # flash that refuses the rewrite (full, read-only) the records stay readable
            # all the same: reading skips the damaged stretch, and a frame appended after
            # it is found by its magic and CRC. Hiding every record for want of the cut
            # would lose them for this boot.
            try:
                self._swap((p for k, p in self._frames(self.path) if k == _KIND_RECORD))
            except StorageError:
                self.cut_failures += 1
        self._ready = True

    def records(self):
        """Yield each record's payload in order (streamed: one record in memory at a time)."""
        self._recover()
        for kind, payload in self._frames(self.path):
            if kind == _KIND_RECORD:
                yield payload

    def replay(self):
        """Every record's payload, in order. The first call after boot drops a torn tail."""
        return list(self.records())

    # -- writing -------------------------------------------------------------------------
    def append(self, payload):
        """Add one record; it is on the medium when this returns."""
        payload = _as_bytes(payload, self.name)
        if len(payload) > MAX_RECORD:
            raise ValueError("%s: record of %d bytes exceeds %d" % (self.name, len(payload), MAX_RECORD))
        self._recover()
        frame = _frame(_KIND_RECORD, payload)
        self._append_with(lambda f: f.write(frame))

    def append_json(self, value):
        """append(the JSON text of value) without the text in memory at once: json.dump
        runs three times, for the length, for the CRC (which covers the header) and into
        the file through the store's piece buffer (see _JsonSink, Store.write_json)."""
        n = self.store.json_sum(value)[0]
        if n > MAX_RECORD:
            raise ValueError("%s: record of %d bytes exceeds %d" % (self.name, n, MAX_RECORD))
        head = struct.pack(">BH", _KIND_RECORD, n)
        piece = self.store._piece
        summed = _JsonSink(piece, crc=_crc(head))
        _dump(value, summed)
        summed.flush()
        crc = summed.crc
        self._recover()

        def fill(f):
            sink = _JsonSink(piece, f, _crc(head), _REC_HDR)
            piece[0] = _REC_MAGIC
            piece[1:_REC_HDR] = head + struct.pack(">I", crc)
            _dump(value, sink)
            sink.flush()
            if sink.n != n or sink.crc != crc:
                raise ValueError("%s: changed while written" % self.name)
        self._append_with(fill)

    def _append_with(self, write):
        fs = self.store.fs
        try:
            f = fs.open(self.path, "ab")
        except OSError as e:
            raise StorageError("%s: cannot open for append (errno %s)" % (self.name, _errno(e)))
        done = False
        try:
            write(f)
            fs.sync(f)
            done = True
        except OSError as e:
            raise StorageError("%s: append failed (errno %s)" % (self.name, _errno(e)))
        finally:
            # A failed write or close may leave a partial frame: rescan before the next append.
            self._ready = False
            _close(f, self.name, done)
            self._ready = done
        self.store.op_done()

    def _swap(self, payloads):
        def chunks():
            for p in payloads:
                p = _as_bytes(p, self.name)
                if len(p) > MAX_RECORD:
                    raise ValueError("%s: record of %d bytes exceeds %d" % (self.name, len(p), MAX_RECORD))
                yield _frame(_KIND_RECORD, p)
            yield _frame(_KIND_COMMIT, b"")
        self.store._write_file(self.tmp, chunks())
        self.store._replace(self.tmp, self.path)

    def rewrite(self, payloads):
        """Replace the whole journal with `payloads` (an iterable of bytes, which may stream
        from this journal's own records()) in one atomic step."""
        self._recover()
        self._swap(payloads)

    def size(self):
        """Bytes on the medium."""
        return self.store.size(self.name)

"""A flash filesystem that loses power on command, for crash-safety tests of firmware/storage.

Implements the interface of firmware.storage.OsFs (open, sync, rename, remove, stat, listdir,
mkdir) over an in-memory "medium". Runs on CPython and on the MicroPython unix port.

Durability model (pessimistic; littlefs itself is copy-on-write and never tears a file):
  - open(path, "wb") truncates the file on the medium at once; "ab" creates it.
  - write() only fills the file's buffer; flush(), sync() and close() put the buffer on the
    medium (as lfs_file_sync does on littlefs).
  - rename() and remove() are atomic.
Every mutating call is one numbered operation. With cut_at=k the power fails at operation k:
that operation does not happen (tear=False), or a data operation lands half of its bytes
(tear=True); afterwards every call raises PowerCut, so no cleanup code can "save" the data.
restart() gives the filesystem as the next boot sees it.
"""
from errno import ENOENT, EEXIST


class PowerCut(BaseException):
    """The supply failed. BaseException, so that no `except Exception` in firmware hides it."""


class _File:
    def __init__(self, fs, path, mode):
        self.fs = fs
        self.path = path
        self.mode = mode
        self.buf = b""
        self.pos = 0
        self.closed = False

    # reading works on the medium as it is now
    def read(self, n=-1):
        data = self.fs.medium[self.path]
        if n is None or n < 0:
            out = bytes(data[self.pos:])
        else:
            out = bytes(data[self.pos:self.pos + n])
        self.pos += len(out)
        return out

    def seek(self, offset, whence=0):
        if whence == 2:
            self.pos = len(self.fs.medium[self.path]) + offset
        elif whence == 1:
            self.pos += offset
        else:
            self.pos = offset
        return self.pos

    def tell(self):
        return self.pos

    def write(self, data):
        if "r" in self.mode:
            raise OSError(9, "EBADF")
        self.fs._op("write " + self.path)
        self.buf += bytes(data)
        return len(data)

    def _commit(self, what):
        medium = self.fs.medium
        if not isinstance(medium[self.path], bytearray):
            medium[self.path] = bytearray(medium[self.path])   # grown in place: less heap

        def half():
            medium[self.path].extend(self.buf[:len(self.buf) // 2])
        self.fs._op(what + " " + self.path, half if self.buf else None)
        medium[self.path].extend(self.buf)
        self.buf = b""

    def flush(self):
        if "r" not in self.mode:
            self._commit("flush")

    def close(self):
        if self.closed:
            return
        if "r" not in self.mode:
            self._commit("close")
        self.closed = True

    def fileno(self):
        return -1

    def __enter__(self):
        return self

    def __exit__(self, *args):
        self.close()


class PowerCutFs:
    def __init__(self, medium=None, dirs=None, cut_at=None, tear=False):
        self.medium = {} if medium is None else medium     # path -> bytes/bytearray on the medium
        self.dirs = set() if dirs is None else dirs
        self.cut_at = cut_at
        self.tear = tear
        self.ops = 0
        self.log = []
        self.dead = False

    def _op(self, what, half=None):
        if self.dead:
            raise PowerCut("already off")
        self.ops += 1
        self.log.append(what)
        if self.cut_at is not None and self.ops >= self.cut_at:
            self.dead = True
            if self.tear and half is not None:
                half()
            raise PowerCut("power cut at operation %d (%s)" % (self.ops, what))

    def restart(self):
        """The filesystem as the next boot finds it (a fresh object, power on)."""
        return PowerCutFs({p: bytearray(d) for p, d in self.medium.items()}, set(self.dirs))

    def _dir_of(self, path):
        i = path.rfind("/")
        return path[:i] if i > 0 else ("/" if i == 0 else "")

    def _check_dir(self, path):
        d = self._dir_of(path)
        if d and d != "/" and d not in self.dirs:
            raise OSError(ENOENT, "no such directory: " + d)

    # -- the OsFs interface ---------------------------------------------------------------
    def open(self, path, mode):
        if "r" in mode and "+" not in mode:
            if self.dead:
                raise PowerCut("already off")
            if path not in self.medium:
                raise OSError(ENOENT, "no such file: " + path)
            return _File(self, path, mode)
        self._check_dir(path)
        self._op("open %s %s" % (mode, path))
        if "w" in mode or path not in self.medium:
            self.medium[path] = bytearray()
        return _File(self, path, mode)

    def sync(self, f):
        f.flush()

    def rename(self, old, new):
        if old not in self.medium:
            raise OSError(ENOENT, "no such file: " + old)
        self._check_dir(new)
        self._op("rename %s %s" % (old, new))
        self.medium[new] = self.medium.pop(old)

    def remove(self, path):
        if path not in self.medium:
            raise OSError(ENOENT, "no such file: " + path)
        self._op("remove " + path)
        del self.medium[path]

    def stat(self, path):
        if self.dead:
            raise PowerCut("already off")
        if path in self.dirs:
            return (0x4000, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        if path not in self.medium:
            raise OSError(ENOENT, "no such file: " + path)
        return (0x8000, 0, 0, 0, 0, 0, len(self.medium[path]), 0, 0, 0)

    def listdir(self, path):
        prefix = path.rstrip("/") + "/"
        return [p[len(prefix):] for p in self.medium if p.startswith(prefix) and "/" not in p[len(prefix):]]

    def mkdir(self, path):
        if path in self.dirs:
            raise OSError(EEXIST, "exists: " + path)
        self._op("mkdir " + path)
        self.dirs.add(path)


class FailingFs(PowerCutFs):
    """A flash that refuses writes: every mutating operation (open for writing, write,
    flush/close of written data, rename, remove, mkdir) whose description contains one of
    `paths` raises OSError(err) while `failing` is True (ENOSPC: full, EROFS: read-only,
    EIO: worn). Reads keep working. `attempts` counts every mutating call, refused or not,
    and `refused` the refused ones: what the flash would have seen."""

    def __init__(self, medium=None, dirs=None, paths=("",), err=28, failing=True):
        PowerCutFs.__init__(self, medium, dirs)
        self.paths = tuple(paths)
        self.err = err
        self.failing = failing
        self.attempts = 0
        self.refused = 0

    def _op(self, what, half=None):
        self.attempts += 1
        if self.failing:
            for p in self.paths:
                if p in what:
                    self.refused += 1
                    raise OSError(self.err, "refused: " + what)
        PowerCutFs._op(self, what, half)

    def restart(self):
        return FailingFs({p: bytearray(d) for p, d in self.medium.items()}, set(self.dirs),
                         self.paths, self.err, self.failing)

"""A filesystem in RAM with the interface of firmware.storage.OsFs: the station's degraded
mode when the flash cannot be used at boot (a full or read-only flash, a damaged journal
that cannot be rewritten). What it holds is lost at the next reset, so the station raises
STORAGE_ERROR while it runs on it; it keeps charging control, the backend link and the
records of this boot going meanwhile.

Small on purpose: whole files as bytearrays, only what Store and Journal call.
"""
from errno import EEXIST, ENOENT

_S_IFDIR = 0x4000
_S_IFREG = 0x8000


class _File:
    def __init__(self, data, writable):
        self._data = data
        self._pos = len(data) if writable == "a" else 0
        self._writable = writable

    def read(self, n=-1):
        end = len(self._data) if n is None or n < 0 else self._pos + n
        out = bytes(self._data[self._pos:end])
        self._pos += len(out)
        return out

    def write(self, data):
        if not self._writable:
            raise OSError(9, "EBADF")
        self._data[self._pos:self._pos + len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset, whence=0):
        base = len(self._data) if whence == 2 else (self._pos if whence == 1 else 0)
        self._pos = base + offset
        return self._pos

    def tell(self):
        return self._pos

    def flush(self):
        pass

    def close(self):
        pass

    def fileno(self):
        return -1

    def __enter__(self):
        return self

    def __exit__(self, *args):
        self.close()


class RamFs:
    def __init__(self):
        self.files = {}          # path -> bytearray
        self.dirs = set()

    def open(self, path, mode):
        if "r" in mode:
            if path not in self.files:
                raise OSError(ENOENT, path)
            return _File(self.files[path], None)
        if "w" in mode or path not in self.files:
            self.files[path] = bytearray()
        return _File(self.files[path], "a" if "a" in mode else "w")

    def sync(self, f):
        pass

    def rename(self, old, new):
        if old not in self.files:
            raise OSError(ENOENT, old)
        self.files[new] = self.files.pop(old)

    def remove(self, path):
        if path not in self.files:
            raise OSError(ENOENT, path)
        del self.files[path]

    def stat(self, path):
        if path in self.dirs:
            return (_S_IFDIR, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        if path not in self.files:
            raise OSError(ENOENT, path)
        return (_S_IFREG, 0, 0, 0, 0, 0, len(self.files[path]), 0, 0, 0)

    def listdir(self, path):
        prefix = path.rstrip("/") + "/"
        n = len(prefix)
        return [p[n:] for p in self.files if p.startswith(prefix) and "/" not in p[n:]]

    def mkdir(self, path):
        if path in self.dirs:
            raise OSError(EEXIST, path)
        self.dirs.add(path)

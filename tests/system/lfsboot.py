"""One boot of the real boot.py and main.py on a littlefs image (os.VfsLfs2, the ESP32's
filesystem), after damaging the image as the scenario says; then what is on the image.

    micropython tests/system/lfsboot.py REPO_ROOT SCENARIO_FILE

Runs on the stand-in (tests/fakes on MICROPYPATH), started by tests/system/flash_campaign.py.
The image is a host file holding the block device's bytes (4 KB blocks, the ESP32's sector
size), read and written in place; it is mounted at /flash, which becomes the device's
filesystem root (boot.py and main.py find board.json there, the station its data/
directory). Block erases cost simulated time as on SPI NOR flash.

SCENARIO: every key of tests/system/devicerun.py (which runs boot.py and main.py and prints
its DEVICERUN report), plus
  image      host path of the image file (the block device: changed in place)
  blocks     when the image file does not exist: format one of this many blocks
  files      {path: text} written before the damage (set-up: a board file, a config)
  damage     [[op, path, arg], ...] applied before the boot (see DAMAGE)
  readonly   mount the image read-only for the boot
Then prints  LFSBOOT {"inventory": ..., "damage": [...]}  (the image read back read-only).
"""
import json
import os
import sys

MOUNT = "/flash"
BLOCK = 4096
ERASE_US = 45000            # one 4 KB sector erase on SPI NOR (tests/fakes/flash_timing.py)
FRAME_HALF = b"\xa5R\x02\x00\x12\x34\x56\x78half-a-rec"   # a journal append cut by a power cut

repo = sys.argv[1]
with open(sys.argv[2]) as _f:
    scenario = json.load(_f)

import machine  # noqa: E402  (the fake: simulated time)


class ImageBlockDevice:
    """The extended block-device protocol of MicroPython's docs (library/os.html) over the
    host's image file (not the heap: the station keeps the heap an ESP32 has); each erase
    advances simulated time by ERASE_US (the CPU waits on the flash)."""

    def __init__(self, path):
        self.f = open(path, "r+b")
        self.f.seek(0, 2)
        self.blocks = self.f.tell() // BLOCK
        self.erases = 0

    def readblocks(self, block_num, buf, offset=0):
        self.f.seek(block_num * BLOCK + offset)
        self.f.readinto(buf)

    def writeblocks(self, block_num, buf, offset=None):
        if offset is None:
            self.ioctl(6, block_num)
            offset = 0
        self.f.seek(block_num * BLOCK + offset)
        self.f.write(buf)

    def ioctl(self, op, arg):
        if op == 4:
            return self.blocks
        if op == 5:
            return BLOCK
        if op == 6:
            self.erases += 1
            sim = machine.sim
            # Never past the end of the run: the clock raises SimulationEnd there, which
            # must not unwind through littlefs in the middle of an operation.
            if sim.stop_at_us is None or sim.now_us + ERASE_US < sim.stop_at_us:
                sim.advance_us(ERASE_US)
            return 0
        return 0


def _rand(seed):
    # A small LCG: the same bytes on CPython and MicroPython for a seed.
    x = seed & 0x7FFFFFFF

    def nxt():
        nonlocal x
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        return x >> 16
    return nxt


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def _is_dir(path):
    try:
        return os.stat(path)[0] & 0x4000 != 0
    except OSError:
        return False


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _rmtree(path):
    if _is_dir(path):
        for name in os.listdir(path):
            _rmtree(path + "/" + name)
        os.rmdir(path)
    elif _exists(path):
        os.remove(path)


def damage(op, path, arg):
    """Apply one damage to MOUNT/path. Returns a short text of what was done."""
    p = MOUNT + "/" + path if path else MOUNT
    if op == "fill":
        # Fill the flash: a filler file grows until littlefs says no space (ENOSPC).
        n = 0
        chunk = b"\xff" * BLOCK
        try:
            with open(MOUNT + "/filler.bin", "ab") as f:
                while True:
                    f.write(chunk)
                    n += 1
                    if n % 4 == 0:
                        f.flush()
        except OSError:
            pass
        return "filled (%d KB)" % (n * BLOCK // 1024)
    if op == "unfill":
        _rmtree(MOUNT + "/filler.bin")
        return "filler removed"
    if op == "write":
        # arg: text (written as UTF-8) or a list of byte values (any bytes at all)
        _rmtree(p)
        _write(p, arg.encode() if isinstance(arg, str) else bytes(arg))
        return "written"
    if op == "store":
        # A file as the firmware writes it (header and CRC intact) holding `arg`: content the
        # CRC cannot catch (a config of [] or null).
        from firmware.storage import Store
        _rmtree(p)
        parent, name = p.rsplit("/", 1)
        Store(parent).write_atomic(name, arg.encode() if isinstance(arg, str) else bytes(arg))
        return "stored"
    if op == "remove":
        _rmtree(p)
        return "removed"
    if not _exists(p) or _is_dir(p):
        return "absent"
    data = _read(p)
    if op == "truncate":
        keep = len(data) * arg // 1000
        _write(p, data[:keep])
        return "truncated %d -> %d" % (len(data), keep)
    if op == "flip":
        if not data:
            return "empty"
        b = bytearray(data)
        i = len(b) * arg // 1000
        if i >= len(b):
            i = len(b) - 1
        b[i] ^= 0x10
        _write(p, b)
        return "bit flipped at %d" % i
    if op == "garbage":
        r = _rand(arg)
        n = len(data) if data else 64
        _write(p, bytes(r() & 0xFF for _ in range(n)))
        return "replaced by %d bytes of garbage" % n
    if op == "nonutf8":
        mid = len(data) // 2
        _write(p, data[:mid] + b"\xff\xfe\xc3\x28" + data[mid:])
        return "made not UTF-8"
    if op == "torn":
        with open(p, "ab") as f:
            f.write(FRAME_HALF)
        return "torn append"
    if op == "dir":
        _rmtree(p)
        os.mkdir(p)
        _write(p + "/x", b"x")
        return "replaced by a directory"
    raise ValueError("unknown damage %r" % op)


def _walk(path, out, prefix=""):
    for name in sorted(os.listdir(path)):
        full = path + "/" + name
        rel = prefix + name
        if _is_dir(full):
            out[rel] = "dir"
            _walk(full, out, rel + "/")
        else:
            out[rel] = os.stat(full)[6]


def _journal_entries(store, name):
    from firmware.storage import Journal, StorageError
    out = []
    try:
        for payload in Journal(store, name).records():
            try:
                out.append(json.loads(payload))
            except ValueError:
                out.append(None)
    except (StorageError, OSError, ValueError):
        out.append(None)
    return out


def inventory():
    """What is on the image: files, pending session records, the live session, the outbox's
    session records, the counters. Read with the image mounted read-only."""
    from firmware.storage import Store
    inv = {"files": {}}
    _walk(MOUNT, inv["files"])
    if not _is_dir(MOUNT + "/data"):
        return inv
    store = Store(MOUNT + "/data")
    pending = []
    acked = []
    for e in _journal_entries(store, "sessions.jnl"):
        if not isinstance(e, dict):
            continue
        if e.get("k") == "done" and isinstance(e.get("r"), dict):
            sid = e["r"].get("id")
            if sid not in pending:
                pending.append(sid)
        elif e.get("k") == "ack" and e.get("id") in pending:
            pending.remove(e["id"])
            acked.append(e["id"])
    inv["pending"] = pending
    inv["live"] = _framed_json("data/session.live", "id")
    held = {}
    for e in _journal_entries(store, "outbox.jnl"):
        if not isinstance(e, dict):
            continue
        if e.get("o") == "p" and e.get("k") == "session":
            held[e.get("s")] = e.get("i")
        elif e.get("o") in ("a", "x"):
            held.pop(e.get("s"), None)
    inv["outbox_sessions"] = sorted(v for v in held.values() if isinstance(v, str))
    inv["counted_sessions"] = _framed_json("data/counters.json", "sessions")
    return inv


def _framed_json(path, key):
    # A file written by Store.write_atomic, read without Store (no repair on the way).
    from firmware.storage import _unframe_file
    try:
        data = _unframe_file(_read(MOUNT + "/" + path))
        return json.loads(data)[key] if data is not None else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


# -- the image ------------------------------------------------------------------------------
image = scenario["image"]
fresh = not _exists(image)
if fresh:
    with open(image, "wb") as _f:
        _zero = bytes(BLOCK)
        for _ in range(scenario.get("blocks", 128)):
            _f.write(_zero)
bdev = ImageBlockDevice(image)
if fresh:
    os.VfsLfs2.mkfs(bdev)
os.mount(os.VfsLfs2(bdev), MOUNT)
for path, text in scenario.get("files", {}).items():
    if path.startswith("data/"):
        damage("store", path, text)           # the station's files: as its Store writes them
    else:
        _write(MOUNT + "/" + path, text.encode())
done = [damage(op, path, arg) for op, path, arg in scenario.get("damage", [])]
os.umount(MOUNT)
os.mount(os.VfsLfs2(bdev), MOUNT, readonly=bool(scenario.get("readonly")))
os.chdir(MOUNT)
bdev.erases = 0

# -- the boot: devicerun runs boot.py and main.py and prints its report -------------------------
first_step = [None]
if scenario.get("first_step"):
    # When the station's control loop first runs (the end of the boot), in simulated ms.
    import firmware.station as _fst  # noqa: E402
    _orig_step = _fst.Station.step

    def _step(self):
        if first_step[0] is None:
            first_step[0] = machine.sim.now_us // 1000
        return _orig_step(self)
    _fst.Station.step = _step
# devicerun reads sys.argv[1] (the repository) and sys.argv[2] (the scenario): as given.
raised = None
try:
    import devicerun  # noqa: F401,E402
except SystemExit:                 # its brief report ends so
    pass
except Exception as e:             # noqa: BLE001 - reported: nothing may escape a boot
    raised = "%s: %s" % (type(e).__name__, e)
os.chdir("/")
try:
    os.umount(MOUNT)
except OSError:
    pass
os.mount(os.VfsLfs2(bdev), MOUNT, readonly=True)
inv = inventory()
os.umount(MOUNT)
bdev.f.close()
print("LFSBOOT " + json.dumps({"inventory": inv, "damage": done, "raised": raised,
                               "erases": bdev.erases, "first_step_ms": first_step[0]}))

"""Which files go onto the device, and how to run them on MicroPython here.

Two runtimes:
- MICROPYTHON, the ESP32 stand-in (tools/standin.py): MicroPython v1.28.0's unix port, 32-bit,
  with the production manifest and the fakes of the ESP32's C modules frozen. The reference:
  every MicroPython test runs on it.
- MICROPYTHON64, PyPI's 64-bit unix port: it has `ssl`, which the stand-in's source lacks, so
  the TLS tests run there (with the same micropython-lib tree on MICROPYPATH).

On the stand-in, firmware/ and drivers/ must come from the frozen image, as on the device. The
first entry of sys.path is "" (or the script's folder), so a run must not start in the
repository root: run it in host_tree(), which holds everything else of the repository.
"""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE_DIRS = ("firmware", "drivers")
DEVICE_TOP = ("boot.py", "main.py", "diag.py", "diag_check.py", "diag_records.py",
              "diag_support.py")
MICROPYTHON = os.path.join(ROOT, "build", "standin", "unix", "micropython")
MICROPYTHON64 = os.path.join(ROOT, ".venv", "bin", "micropython")
MPLIB = os.path.join(ROOT, "build", "standin", "lib")
HOST_TREE = os.path.join(ROOT, "build", "standin", "tree")
# The heap of an ESP32 without PSRAM (ports/esp32/mpconfigport.h): the first area, and the
# whole after the split heap has grown once.
HEAP_FIRST = "56K"
HEAP_GROWN = "112K"


def device_files():
    """Relative paths of every .py file that is copied to (or frozen into) the device."""
    files = []
    for d in DEVICE_DIRS:
        for dirpath, _dirs, names in os.walk(os.path.join(ROOT, d)):
            for n in names:
                if n.endswith(".py"):
                    files.append(os.path.relpath(os.path.join(dirpath, n), ROOT))
    files += [f for f in DEVICE_TOP if os.path.exists(os.path.join(ROOT, f))]
    return sorted(files)


def host_tree():
    """A folder that mirrors the repository (symlinks) without the frozen packages, to run
    the stand-in in. Returns its path."""
    os.makedirs(HOST_TREE, exist_ok=True)
    skip = set(DEVICE_DIRS) | {".git", ".venv", ".hypothesis"}
    for name in os.listdir(ROOT):
        link = os.path.join(HOST_TREE, name)
        if name in skip or os.path.lexists(link):
            continue
        try:
            os.symlink(os.path.join(ROOT, name), link)
        except FileExistsError:
            pass            # another process of the same run made it first
    return HOST_TREE


def micropython_path(fakes=True, runtime=None):
    """MICROPYPATH: frozen modules first, then the fake ESP32 modules (frozen in the
    stand-in; on the 64-bit port they shadow its own minimal `machine`), the repository
    (host_tree() on the stand-in) and the micropython-lib modules."""
    parts = [".frozen"]
    if fakes:
        parts.append(os.path.join(ROOT, "tests", "fakes"))
    parts += [ROOT if runtime == MICROPYTHON64 else host_tree(), MPLIB]
    return ":".join(parts)


_built = []


def ensure_standin():
    """Bring the stand-in up to date once per process (its frozen firmware and harness are
    only as new as its last build; make's no-op run takes well under a second)."""
    if not _built:
        from tools import standin
        standin.build()
        _built.append(True)


def micropython_env(fakes=True, base=None, runtime=None):
    if runtime != MICROPYTHON64:
        ensure_standin()
    env = dict(os.environ if base is None else base)
    env["MICROPYPATH"] = micropython_path(fakes, runtime)
    return env


def mp_cwd():
    """The working directory for a stand-in run (see the module's docstring)."""
    return host_tree()

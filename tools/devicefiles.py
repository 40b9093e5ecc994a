"""Which files go onto the device, and how to run them on the MicroPython unix port."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE_DIRS = ("firmware", "drivers")
DEVICE_TOP = ("boot.py", "main.py", "diag.py")
MICROPYTHON = os.path.join(ROOT, ".venv", "bin", "micropython")


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


def micropython_path(fakes=True):
    """MICROPYPATH for the unix port: the fake ESP32 modules (which shadow the port's own
    minimal `machine`), the project root, and the micropython-lib modules."""
    parts = [".frozen"]
    if fakes:
        parts.append(os.path.join(ROOT, "tests", "fakes"))
    parts += [ROOT, os.path.join(ROOT, "build", "mplib")]
    return ":".join(parts)


def micropython_env(fakes=True, base=None):
    env = dict(os.environ if base is None else base)
    env["MICROPYPATH"] = micropython_path(fakes)
    return env

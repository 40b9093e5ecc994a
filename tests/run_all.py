"""`make test`: build the ESP32 stand-in (tools/standin.py; incremental), compile every
device file with mpy-cross, run the tests on CPython (pytest: host tools, and the system tests,
which run the firmware on the stand-in against real peers), run the hardware-free unit tests on
the stand-in (32-bit MicroPython v1.28.0, the production manifest frozen), then print one
summary line that names every runtime and its counts.

Exits non-zero when anything fails or nothing ran.
"""
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
sys.path.insert(0, ROOT)

from tools import standin  # noqa: E402
from tools.devicefiles import MICROPYTHON, device_files, micropython_env, mp_cwd  # noqa: E402


def mpy_cross_all():
    out_dir = os.path.join(ROOT, "build", "mpy")
    failed = []
    files = device_files()
    for path in files:
        target = os.path.join(out_dir, path[:-3] + ".mpy")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        r = subprocess.run([os.path.join(VENV_BIN, "mpy-cross"), "-o", target, path],
                           cwd=ROOT, capture_output=True, text=True)
        if r.returncode:
            failed.append(path)
            sys.stdout.write("mpy-cross: %s\n%s" % (path, r.stderr))
    return len(files), failed


def run_pytest(extra):
    # A private report file: several runs may share the checkout.
    fd, xml = tempfile.mkstemp(prefix="pytest-", suffix=".xml")
    os.close(fd)
    os.remove(xml)
    cmd = [os.path.join(VENV_BIN, "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "--junitxml", xml] + (extra or ["tests"])
    rc = subprocess.call(cmd, cwd=ROOT)
    counts = {"passed": 0, "failed": 0, "skipped": 0, "unix64": 0}
    if os.path.exists(xml):
        root = ET.parse(xml).getroot()
        os.remove(xml)
        # The TLS tests run the firmware on PyPI's 64-bit port (the stand-in has no mbedtls).
        counts["unix64"] = sum(1 for tc in root.iter("testcase")
                               if "[unix64" in tc.get("name", "") and len(tc) == 0)
        suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
        for s in suites:
            total = int(s.get("tests", 0))
            failed = int(s.get("failures", 0)) + int(s.get("errors", 0))
            skipped = int(s.get("skipped", 0))
            counts["failed"] += failed
            counts["skipped"] += skipped
            counts["passed"] += total - failed - skipped
    elif rc:
        counts["failed"] += 1
    if rc not in (0, 5) and counts["failed"] == 0:
        counts["failed"] += 1  # pytest itself failed (collection error, crash)
    return counts


def run_micropython(files):
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    env = micropython_env()
    for path in files:
        print("micropython:", path, flush=True)
        try:
            # The unit tests' own fixtures (fake filesystems, large records) need more heap
            # than an ESP32 has; the station-level runs in tests/system use its heap.
            r = subprocess.run([MICROPYTHON, "-X", "heapsize=4M", "tests/mprun.py", path],
                               cwd=mp_cwd(), env=env, capture_output=True, text=True, timeout=600)
            out = r.stdout + r.stderr
        except subprocess.TimeoutExpired as e:
            out = "TIMEOUT\n" + (e.stdout or b"").decode(errors="replace")
            r = None
        m = re.search(r"MPRUN passed=(\d+) failed=(\d+) skipped=(\d+)", out)
        if not m:
            counts["failed"] += 1
            sys.stdout.write(out[-4000:])
            continue
        p, f, s = (int(x) for x in m.groups())
        counts["passed"] += p
        counts["failed"] += f
        counts["skipped"] += s
        if f or (r is not None and r.returncode):
            sys.stdout.write(out[-8000:])
            if not f:
                counts["failed"] += 1
    return counts


def main(argv):
    selected = argv[1:]
    try:
        standin.build()
    except standin.SetupError as e:
        print("stand-in: %s" % e)
        print("SUMMARY FAILED: the ESP32 stand-in did not build")
        return 1
    n_files, mpy_failed = mpy_cross_all()
    print("mpy-cross: %d device files, %d failed" % (n_files, len(mpy_failed)), flush=True)
    py = run_pytest(selected)
    unit_dir = os.path.join(ROOT, "tests", "unit")
    mp_files = sorted("tests/unit/" + f for f in os.listdir(unit_dir)
                      if f.startswith("test_") and f.endswith(".py"))
    if selected:
        mp_files = [f for f in mp_files if any(f.startswith(s) or s.startswith(f) for s in selected)]
    mp = run_micropython(mp_files)
    ok = (not mpy_failed and py["failed"] == 0 and mp["failed"] == 0
          and py["passed"] > 0 and (mp["passed"] > 0 or not mp_files))
    print("SUMMARY %s: mpy-cross %d/%d files | pytest on CPython (system tests drive the"
          " stand-in; %d pass on the 64-bit unix port: TLS) %d passed, %d failed, %d skipped"
          " | stand-in (MicroPython v1.28.0, 32-bit, frozen) %d passed, %d failed, %d skipped"
          % ("OK" if ok else "FAILED", n_files - len(mpy_failed), n_files, py["unix64"],
             py["passed"], py["failed"], py["skipped"], mp["passed"], mp["failed"], mp["skipped"]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""`make test`: build the ESP32 stand-in (tools/standin.py; incremental), compile every
device file with mpy-cross, run the tests on CPython (pytest: host tools, and the system tests,
which run the firmware on the stand-in against real peers), run the hardware-free unit tests on
the stand-in (32-bit MicroPython v1.28.0, the production manifest frozen), then print one
summary line that names every runtime and its counts.

    tests/run_all.py [-j N] [tests/unit/test_x.py ...]

With N jobs (default 2, one per core of the reference machine; TEST_JOBS=N sets it too)
pytest runs its files on N workers (pytest-xdist, a file to a worker so that module fixtures
are made once per file as before) while the stand-in's unit files run beside it, N/2 at a
time, the longest (by the last run's times, build/unit-times.json) first. -j 1 runs
everything one after another, as before. The counts do not depend on N.

Exits non-zero when anything fails or nothing ran.
"""
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
sys.path.insert(0, ROOT)

from tools import standin  # noqa: E402
from tools.devicefiles import MICROPYTHON, device_files, micropython_env, mp_cwd  # noqa: E402


def mpy_cross_all(jobs=1):
    out_dir = os.path.join(ROOT, "build", "mpy")
    files = device_files()

    def one(path):
        target = os.path.join(out_dir, path[:-3] + ".mpy")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        r = subprocess.run([os.path.join(VENV_BIN, "mpy-cross"), "-o", target, path],
                           cwd=ROOT, capture_output=True, text=True)
        return path, r

    failed = []
    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        for path, r in pool.map(one, files):
            if r.returncode:
                failed.append(path)
                sys.stdout.write("mpy-cross: %s\n%s" % (path, r.stderr))
    return len(files), failed


def run_pytest(extra, jobs=1):
    # A private report file: several runs may share the checkout.
    fd, xml = tempfile.mkstemp(prefix="pytest-", suffix=".xml")
    os.close(fd)
    os.remove(xml)
    cmd = [os.path.join(VENV_BIN, "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "--junitxml", xml]
    if jobs > 1:
        # loadfile: a module's tests share one worker, so module-scoped fixtures (a broker,
        # a built image) are made once per file as in a serial run.
        cmd += ["-n", str(jobs), "--dist", "loadfile"]
    cmd += extra or ["tests"]
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


def _run_unit_file(path, env):
    """One unit file on the stand-in: (its output, its return code or None on a timeout)."""
    try:
        # The unit tests' own fixtures (fake filesystems, large records) need more heap
        # than an ESP32 has; the station-level runs in tests/system use its heap.
        r = subprocess.run([MICROPYTHON, "-X", "heapsize=4M", "tests/mprun.py", path],
                           cwd=mp_cwd(), env=env, capture_output=True, text=True, timeout=600)
        return r.stdout + r.stderr, r.returncode
    except subprocess.TimeoutExpired as e:
        return "TIMEOUT\n" + (e.stdout or b"").decode(errors="replace"), None


# How long each unit file took on the stand-in last time: the pool starts the longest first,
# so that no long file starts last and runs alone (a new file counts as long).
TIMES = os.path.join(ROOT, "build", "unit-times.json")


def _load_times():
    try:
        with open(TIMES) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _save_times(times):
    tmp = "%s.%d" % (TIMES, os.getpid())
    try:
        with open(tmp, "w") as f:
            json.dump(times, f, sort_keys=True)
        os.replace(tmp, TIMES)
    except OSError:
        pass


def run_micropython(files, jobs=1, out=sys.stdout):
    """Each unit file in its own stand-in process, `jobs` at a time; the report of each file
    is written in the files' order, whatever order they finish in."""
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    env = micropython_env()
    times = _load_times()

    def timed(path):
        t0 = time.monotonic()
        result = _run_unit_file(path, env)
        times[path] = round(time.monotonic() - t0, 1)
        return result

    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        longest_first = sorted(files, key=lambda f: -times.get(f, 1e9))
        futures = {path: pool.submit(timed, path) for path in longest_first}
        for path in files:
            text, rc = futures[path].result()
            out.write("micropython: %s\n" % path)
            m = re.search(r"MPRUN passed=(\d+) failed=(\d+) skipped=(\d+)", text)
            if not m:
                counts["failed"] += 1
                out.write(text[-4000:])
                continue
            p, f, s = (int(x) for x in m.groups())
            counts["passed"] += p
            counts["failed"] += f
            counts["skipped"] += s
            if f or rc:
                out.write(text[-8000:])
                if not f:
                    counts["failed"] += 1
            out.flush()
    _save_times(times)
    return counts


class _Buffer:
    """What the stand-in phase reports while pytest has the terminal; shown after it."""

    def __init__(self):
        self.parts = []

    def write(self, text):
        self.parts.append(text)

    def flush(self):
        pass

    def text(self):
        return "".join(self.parts)


def _jobs(argv):
    jobs = int(os.environ.get("TEST_JOBS") or 2)
    rest = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "-j" and i + 1 < len(argv):
            jobs = int(argv[i + 1])
            i += 2
            continue
        if a.startswith("-j") and a[2:].isdigit():
            jobs = int(a[2:])
        else:
            rest.append(a)
        i += 1
    return max(1, jobs), rest


def main(argv):
    jobs, selected = _jobs(argv[1:])
    try:
        standin.build()
    except standin.SetupError as e:
        print("stand-in: %s" % e)
        print("SUMMARY FAILED: the ESP32 stand-in did not build")
        return 1
    n_files, mpy_failed = mpy_cross_all(jobs)
    print("mpy-cross: %d device files, %d failed" % (n_files, len(mpy_failed)), flush=True)
    unit_dir = os.path.join(ROOT, "tests", "unit")
    mp_files = sorted("tests/unit/" + f for f in os.listdir(unit_dir)
                      if f.startswith("test_") and f.endswith(".py"))
    if selected:
        mp_files = [f for f in mp_files if any(f.startswith(s) or s.startswith(f) for s in selected)]
    if jobs > 1:
        # The stand-in phase beside pytest: the stand-in is built, and every unit file
        # writes only below its own unique names.
        buf = _Buffer()
        mp_result = {}
        # Half the jobs: pytest's workers have the other half, and the system tests among
        # them wait on real peers in real time (they must not starve).
        mp_jobs = max(1, jobs // 2)
        mp_thread = threading.Thread(
            target=lambda: mp_result.update(run_micropython(mp_files, mp_jobs, buf)))
        mp_thread.start()
        py = run_pytest(selected, jobs)
        mp_thread.join()
        sys.stdout.write(buf.text())
        mp = mp_result or {"passed": 0, "failed": 1, "skipped": 0}
    else:
        py = run_pytest(selected)
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

"""The ESP32 stand-in: MicroPython v1.28.0's unix port built 32-bit from source, with the
production manifest (manifest.py) frozen, so that the tests run the code an ESP32 image runs.

    python -m tools.standin build     # incremental; prints the binary's path
    python -m tools.standin path      # the binary's path (built or not)
    python -m tools.standin info      # version, word size, frozen modules

Where the source comes from, first match wins:
  1. MICROPY_SRC=/path/to/micropython  (a checkout of the v1.28.0 tag with lib/micropython-lib)
  2. build/micropython-1.28.0          (unpacked by an earlier run)
  3. ../shared/upstream/micropython-1.28.0-src.tar.xz, when this checkout sits beside it
     (an offline copy of the same tree; its sha256 is checked)
  4. git clone --depth 1 -b v1.28.0 https://github.com/micropython/micropython
     plus the lib/micropython-lib submodule

The only change to the source tree is the project's fixes to MicroPython itself
(tools/mp_patches.py, the same ones `make firmware` applies to the ESP32 image's tree); mpy-cross
and the unix port build into build/standin/. The build is make's own, so a changed firmware file refreezes in seconds
and an unchanged tree rebuilds nothing.

What differs from an ESP32 (docs/performance.md, "The stand-in"): the port (unix: no Wi-Fi,
its own socket module), the heap (one fixed area: `-X heapsize=56K` is the ESP32's first
area, 112K the grown one), no TLS (the source has no mbedtls; TLS tests run on the 64-bit
PyPI port). The fake `machine`, `esp32` and `network` (tests/fakes) are frozen too: on the
ESP32 they are C modules that take no heap.
"""
import hashlib
import os
import subprocess
import sys

from tools import mp_patches

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build", "standin")
BINARY = os.path.join(BUILD, "unix", "micropython")
MANIFEST = os.path.join(ROOT, "tools", "standin_manifest.py")
TAG = "v1.28.0"
UNPACKED = os.path.join(ROOT, "build", "micropython-1.28.0")
TARBALL = os.path.join(os.path.dirname(ROOT), "shared", "upstream", "micropython-1.28.0-src.tar.xz")
TARBALL_SHA256 = "9e4bfdc181c1d46035fce10c4e7b0dcc2e7592c40c700ac82174a6db853be12a"
REPO = "https://github.com/micropython/micropython"

# The unix port as close to the ESP32 as it builds here: 32-bit objects and small ints, no FFI
# or btree (the ESP32 image has neither), no TLS (no mbedtls in the source tree).
UNIX_FLAGS = ["VARIANT=standard", "MICROPY_FORCE_32BIT=1", "MICROPY_PY_FFI=0",
              "MICROPY_PY_BTREE=0", "MICROPY_PY_SSL=0", "MICROPY_SSL_MBEDTLS=0"]

# ESP32 heap areas (ports/esp32/mpconfigport.h MICROPY_GC_INITIAL_HEAP_SIZE; split heap auto
# grows it once on a WROOM-32 without PSRAM).
HEAP_FIRST = 56 * 1024
HEAP_GROWN = 112 * 1024


class SetupError(Exception):
    pass


def _run(cmd, **kw):
    # The unpacked source sits inside this repository's build/: without a ceiling,
    # makeversionhdr.py would take this repository's commit for MicroPython's version.
    env = dict(os.environ)
    env["GIT_CEILING_DIRECTORIES"] = ":".join(
        os.path.dirname(os.path.realpath(p)) for p in (UNPACKED, _SRC[0] or UNPACKED))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, **kw)
    if r.returncode:
        raise SetupError("%s failed:\n%s" % (" ".join(cmd), (r.stdout + r.stderr)[-3000:]))
    return r.stdout


def _is_source(path):
    return (os.path.isfile(os.path.join(path, "py", "mkrules.mk"))
            and os.path.isdir(os.path.join(path, "ports", "unix"))
            and os.path.isfile(os.path.join(path, "lib", "micropython-lib", "micropython",
                                            "umqtt.simple", "umqtt", "simple.py")))


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_SRC = [None]


def source_dir():
    """The MicroPython v1.28.0 source tree, unpacked or cloned on first use."""
    _SRC[0] = _source_dir()
    return _SRC[0]


def _source_dir():
    env = os.environ.get("MICROPY_SRC")
    if env:
        env = os.path.abspath(env)
        if not _is_source(env):
            raise SetupError("MICROPY_SRC=%s is not a MicroPython source tree with "
                             "lib/micropython-lib (git submodule update --init "
                             "lib/micropython-lib)" % env)
        return env
    if _is_source(UNPACKED):
        return UNPACKED
    os.makedirs(os.path.dirname(UNPACKED), exist_ok=True)
    if os.path.isfile(TARBALL):
        if _sha256(TARBALL) != TARBALL_SHA256:
            raise SetupError("%s: sha256 mismatch" % TARBALL)
        print("standin: unpacking %s" % os.path.relpath(TARBALL, ROOT), flush=True)
        _run(["tar", "xJf", TARBALL, "-C", os.path.dirname(UNPACKED)])
    else:
        print("standin: cloning MicroPython %s" % TAG, flush=True)
        _run(["git", "clone", "-q", "--depth", "1", "-b", TAG, REPO, UNPACKED])
        _run(["git", "-C", UNPACKED, "submodule", "update", "-q", "--init", "--depth", "1",
              "lib/micropython-lib"])
    if not _is_source(UNPACKED):
        raise SetupError("%s: not a MicroPython source tree" % UNPACKED)
    return UNPACKED


# micropython-lib modules for runs that do not freeze them (the 64-bit port, which runs the
# TLS tests) and the test runner's unittest, all from the same tree as the frozen ones.
MPLIB = os.path.join(ROOT, "build", "standin", "lib")
MPLIB_FILES = (("micropython/umqtt.simple/umqtt/simple.py", "umqtt/simple.py"),
               ("python-stdlib/logging/logging.py", "logging.py"),
               ("python-stdlib/unittest/unittest/__init__.py", "unittest/__init__.py"))


def install_mplib(src):
    import shutil
    marker = os.path.join(MPLIB, ".from-" + TAG)
    if os.path.exists(marker):
        return
    shutil.rmtree(MPLIB, ignore_errors=True)
    for rel, dst in MPLIB_FILES:
        target = os.path.join(MPLIB, dst)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(src, "lib", "micropython-lib", rel), target)
    open(os.path.join(MPLIB, "umqtt", "__init__.py"), "w").close()
    open(marker, "w").close()


def build(quiet=True):
    """Build (or bring up to date) the stand-in; returns the binary's path. One build at a
    time in a checkout: pytest's workers and the unit-test pool each make sure of it."""
    import fcntl
    os.makedirs(BUILD, exist_ok=True)
    with open(os.path.join(BUILD, ".build-lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build(quiet)


def _build(quiet):
    src = source_dir()
    mp_patches.apply(src, log=None if quiet else print)
    install_mplib(src)
    jobs = "-j%d" % max(1, min(4, os.cpu_count() or 1))
    cross_build = os.path.join(BUILD, "mpy-cross")
    cross = os.path.join(cross_build, "mpy-cross")
    if not os.path.exists(cross):
        print("standin: building mpy-cross", flush=True)
    _run(["make", "-C", os.path.join(src, "mpy-cross"), jobs, "BUILD=" + cross_build])
    if os.path.exists(BINARY) and os.path.getsize(BINARY) == 0:
        os.remove(BINARY)       # a link killed half-way: make would take it as up to date
    if not os.path.exists(BINARY) and not quiet:
        print("standin: building the 32-bit unix port", flush=True)
    _run(["make", "-C", os.path.join(src, "ports", "unix"), jobs] + UNIX_FLAGS
         + ["BUILD=" + os.path.join(BUILD, "unix"),
            "MICROPY_MPYCROSS=" + cross, "FROZEN_MANIFEST=" + MANIFEST])
    return BINARY


# What the production manifest freezes, as the stand-in's build froze it (bytecode, constants
# and qstrs of each module, the .mpy that mpy-tool turned into flash data).
PRODUCTION_FROZEN = ("firmware", "drivers", "umqtt", "logging.mpy")


def frozen_sizes():
    """{frozen .mpy path: bytes} of the production manifest's modules in the last build."""
    base = os.path.join(BUILD, "unix", "frozen_mpy")
    out = {}
    for name in PRODUCTION_FROZEN:
        path = os.path.join(base, name)
        if os.path.isfile(path):
            out[name] = os.path.getsize(path)
        for dirpath, _dirs, files in os.walk(path):
            for f in files:
                full = os.path.join(dirpath, f)
                out[os.path.relpath(full, base)] = os.path.getsize(full)
    return out


def main(argv):
    cmd = argv[1] if len(argv) > 1 else "build"
    try:
        if cmd == "build":
            print(build(quiet=False))
        elif cmd == "path":
            print(BINARY)
        elif cmd == "info":
            code = ("import sys, gc; gc.collect(); print(sys.version, sys.implementation._machine,"
                    " 'maxsize', sys.maxsize, 'heap', gc.mem_alloc() + gc.mem_free())")
            print(_run([build(), "-X", "heapsize=%d" % HEAP_FIRST, "-c", code]).strip())
        else:
            print(__doc__)
            return 2
    except SetupError as e:
        print("standin: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

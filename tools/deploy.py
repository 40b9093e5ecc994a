"""Compile the device files and put them on an ESP32.

    python -m tools.deploy check                       # mpy-cross over every device file
    python -m tools.deploy deploy --port /dev/ttyUSB0  # compile, copy, mip logging, reset
    python -m tools.deploy deploy --port P --board boards/reference.json --dry-run

`check` prints each file's .mpy size and, on its last line, the total. `deploy` compiles
into build/deploy, puts the chip into service mode (the watchdog would otherwise reset it
mid-copy), removes the old firmware/ and drivers/ trees on the device (a stale .py would
shadow its new .mpy, because MicroPython prefers .py), copies the .mpy trees and diag.mpy,
boot.py and main.py as source (the port runs them by name) and the board file as
/board.json, installs
micropython-lib's logging with mip, leaves service mode and resets. `--dry-run` prints the
mpremote commands instead of running them; `--frozen` is for a build with manifest.py
frozen in. Without `--frozen` it first asks the board for its heap and refuses, naming the
frozen route, when the .mpy firmware would not fit (MPY_HEAP_NEED_BYTES): the .mpy route is
for modules with PSRAM.
"""
import argparse
import os
import shlex
import shutil
import subprocess
import sys

from tools.devicefiles import ROOT, device_files

VENV_BIN = os.path.join(ROOT, ".venv", "bin")
MPY_CROSS = os.path.join(VENV_BIN, "mpy-cross")
MPREMOTE = os.path.join(VENV_BIN, "mpremote")
OUT_DIR = os.path.join(ROOT, "build", "mpy")
# A fresh tree per deploy, so no .mpy of a deleted module reaches the device.
STAGE_DIR = os.path.join(ROOT, "build", "deploy")
DEFAULT_BOARD = os.path.join("boards", "reference.json")
# Run by name by the ESP32 port, so they stay source files.
RUN_AS_SOURCE = ("boot.py", "main.py")


def compile_all(files=None, out_dir=OUT_DIR, log=print):
    """mpy-cross every device file into out_dir. Returns ([(path, mpy_size)], [failed])."""
    sizes = []
    failed = []
    for path in files if files is not None else device_files():
        target = os.path.join(out_dir, path[:-3] + ".mpy")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        r = subprocess.run([MPY_CROSS, "-o", target, path], cwd=ROOT,
                           capture_output=True, text=True)
        if r.returncode:
            failed.append(path)
            log("FAILED %s\n%s" % (path, r.stderr.rstrip()))
            continue
        sizes.append((path, os.path.getsize(target)))
    return sizes, failed


def check(log=print, out_dir=OUT_DIR):
    sizes, failed = compile_all(out_dir=out_dir, log=log)
    for path, size in sizes:
        log("%7d  %s" % (size, path[:-3] + ".mpy"))
    total = sum(s for _p, s in sizes)
    log("total: %d files, %d bytes .mpy%s"
        % (len(sizes), total, ", %d FAILED" % len(failed) if failed else ""))
    return 1 if failed else 0


# Runs on the device before the copy: remove the old code trees, keep data/ and board.json
# (deploy_commands() appends the stale top-level sources).
_CLEAN_SCRIPT = (
    "import os\n"
    "def rm(p):\n"
    "    try:\n"
    "        if os.stat(p)[0] & 0x4000:\n"
    "            for n in os.listdir(p):\n"
    "                rm(p + '/' + n)\n"
    "            os.rmdir(p)\n"
    "        else:\n"
    "            os.remove(p)\n"
    "    except OSError:\n"
    "        pass\n"
    "rm('firmware')\n"
    "rm('drivers')\n"
    "try:\n"
    "    os.mkdir('data')\n"
    "except OSError:\n"
    "    pass\n"
)


def deploy_commands(port, board_file, files, mip=True, frozen=False, flag="service",
                    stage_dir=STAGE_DIR):
    """The mpremote command lines (lists) that put `files` (device paths) on the device.

    A running station has started the watchdog, which cannot be stopped and would reset the
    chip in the middle of the copy: so first the service flag file is written and the chip
    reset into service mode (no application, no watchdog), and the flag goes last.
    `frozen`: the packages are in the firmware image (manifest.py): copy only the top-level
    files and the board file."""
    base = [MPREMOTE, "connect", port]
    # A top-level module goes over as .mpy: an older name.py there would shadow it. Frozen,
    # it is in the image, and any copy on the filesystem would shadow that ("" comes first
    # on sys.path).
    stale = [f for f in files if "/" not in f and f not in RUN_AS_SOURCE]
    if frozen:
        stale += [f[:-3] + ".mpy" for f in stale]
    clean = _CLEAN_SCRIPT + "".join("rm(%r)\n" % f for f in stale)
    cmds = [base + ["exec", 'open("%s", "w").close()' % flag, "+", "reset"],
            base + ["sleep", "3", "+", "exec", clean]]
    if frozen:
        files = [f for f in files if f in RUN_AS_SOURCE]
        mip = False     # logging is frozen too (require("logging"))
    tops = sorted({f.split("/")[0] for f in files if "/" in f})
    for top in tops:
        cmds.append(base + ["fs", "cp", "-r", os.path.join(stage_dir, top), ":"])
    for f in files:
        if "/" in f:
            continue
        if f in RUN_AS_SOURCE:
            cmds.append(base + ["fs", "cp", os.path.join(ROOT, f), ":" + f])
        else:
            mpy = f[:-3] + ".mpy"
            cmds.append(base + ["fs", "cp", os.path.join(stage_dir, mpy), ":" + mpy])
    cmds.append(base + ["fs", "cp", board_file, ":board.json"])
    if mip:
        # mpremote fetches the package on the host: the device needs no network.
        cmds.append(base + ["mip", "install", "logging"])
    cmds.append(base + ["exec", 'import os; os.remove("%s")' % flag, "+", "reset"])
    return cmds


# Heap the firmware needs when it is loaded as .mpy files (bytecode in the heap): the import
# and a whole session, measured on the 32-bit stand-in (docs/performance.md, "Heap"), plus a
# margin for fragmentation. A board without PSRAM has about 112 KB: frozen image only.
MPY_HEAP_NEED_BYTES = 256 * 1024
# Asks the board for its GC heap and what the heap could still grow into (on an ESP32 the
# split heap grows from the IDF data heap: ports/esp32/gccollect.c, esp32.idf_heap_info).
HEAP_PROBE = ("import gc\ngc.collect()\ngrow = 0\ntry:\n import esp32\n"
              " grow = max([h[2] for h in esp32.idf_heap_info(esp32.HEAP_DATA)] or [0])\n"
              "except (ImportError, AttributeError):\n pass\n"
              "print('HEAP', gc.mem_alloc() + gc.mem_free(), grow)\n")


def probe_heap(port):
    """(gc heap bytes, largest free IDF block) the board reports, or None."""
    r = subprocess.run([MPREMOTE, "connect", port, "exec", HEAP_PROBE], capture_output=True,
                       text=True, timeout=60)
    return parse_heap(r.stdout)


def parse_heap(text):
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "HEAP" and parts[1].isdigit() and parts[2].isdigit():
            return int(parts[1]), int(parts[2])
    return None


def heap_refusal(heap):
    """Why the .mpy route must not go onto a board with this heap, or None when it fits."""
    if heap is None:
        return ("the board did not report its heap: is it running MicroPython? "
                "(nothing was copied)")
    total = heap[0] + heap[1]
    if total >= MPY_HEAP_NEED_BYTES:
        return None
    return ("the firmware as .mpy files needs about %d KB of heap; this board has %d KB "
            "(%d KB GC heap, %d KB it can grow into). Copying it would crash-loop with "
            "MemoryError. Use the frozen image instead: `make firmware`, flash it, then "
            "`make deploy DEPLOY_ARGS=--frozen` (README, \"First hardware\"). Nothing was copied."
            % (MPY_HEAP_NEED_BYTES // 1024, total // 1024, heap[0] // 1024, heap[1] // 1024))


def deploy(port, board_file, dry_run=False, mip=True, frozen=False, log=print,
           run=subprocess.call, stage_dir=STAGE_DIR, probe=probe_heap):
    from drivers.boardfile import BoardFileError, load

    board_path = board_file if os.path.isabs(board_file) else os.path.join(ROOT, board_file)
    try:
        board = load(board_path)     # a bad board file fails here, not on the device
    except BoardFileError as e:
        log("board file %s: %s" % (board_file, e))
        return 2
    shutil.rmtree(stage_dir, ignore_errors=True)
    sizes, failed = compile_all(out_dir=stage_dir, log=log)
    if failed:
        log("mpy-cross failed: %s" % ", ".join(failed))
        return 1
    files = [p for p, _s in sizes]
    if not frozen:
        if dry_run:
            log(shlex.join([MPREMOTE, "connect", port, "exec", HEAP_PROBE]))
        else:
            why = heap_refusal(probe(port))
            if why is not None:
                log("refused: " + why)
                return 3
    flag = board["service"]["flag_file"] if board["service"] else "service"
    for cmd in deploy_commands(port, board_path, files, mip=mip, frozen=frozen, flag=flag,
                               stage_dir=stage_dir):
        shown = shlex.join(cmd)
        if dry_run:
            log(shown)
            continue
        log("+ " + shown)
        rc = run(cmd, cwd=ROOT)
        if rc:
            log("failed (exit %d): %s" % (rc, shown))
            return rc
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.deploy", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="mpy-cross every device file, print sizes and the total")
    c.add_argument("--build-dir", default=OUT_DIR, help="where the .mpy files go")
    d = sub.add_parser("deploy", help="compile, copy to the device, install logging, reset")
    d.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB0")
    d.add_argument("--board", default=DEFAULT_BOARD, help="board file to install as /board.json")
    d.add_argument("--dry-run", action="store_true", help="print the mpremote commands only")
    d.add_argument("--no-mip", action="store_true", help="skip `mip install logging`")
    d.add_argument("--build-dir", default=STAGE_DIR,
                   help="staging tree for the .mpy files (emptied first)")
    d.add_argument("--frozen", action="store_true",
                   help="the packages are frozen in the image (manifest.py): copy the"
                        " top-level files (boot.py, main.py...) and the board file only")
    args = ap.parse_args(argv)
    if args.cmd == "check":
        return check(out_dir=os.path.abspath(args.build_dir))
    return deploy(args.port, args.board, dry_run=args.dry_run, mip=not args.no_mip,
                  frozen=args.frozen, stage_dir=os.path.abspath(args.build_dir))


if __name__ == "__main__":
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    sys.exit(main())

"""From a blank ESP32 to a charging station: build the MicroPython image, flash it.

    python -m tools.flash firmware [--variant SPIRAM|S3_SPIRAM] [--dry-run]
    python -m tools.flash flash --port /dev/ttyUSB0 [--image F] [--variant V]
                                [--board boards/reference.json] [--dry-run]

`firmware` builds MicroPython v1.28.0 for boards/CHARGER_ESP32 with ESP-IDF, the firmware
frozen in (manifest.py), and copies the image to build/firmware/CHARGER_ESP32[-VARIANT].bin.
It needs MICROPY_SRC (a MicroPython v1.28.0 checkout) and an ESP-IDF environment (IDF_PATH
and idf.py, from export.sh); without them it prints the steps to get them and exits 2.

`flash` erases the chip and writes the image with esptool, reads the MicroPython version
back once the image has booted, then lays down the files with tools.deploy: boot.py,
main.py and the board file when the image has the firmware (and diag) frozen in; when it is a
stock image (the route for modules with PSRAM), every device file as .mpy and logging by
mip. The image's own header names its chip, and so where it goes in flash. `--dry-run`
prints the esptool and mpremote commands instead of running them.
"""
import argparse
import os
import shlex
import shutil
import subprocess
import sys

from tools import deploy, mp_patches
from tools.devicefiles import ROOT

BOARD_NAME = "CHARGER_ESP32"
BOARD_DIR = os.path.join(ROOT, "boards", BOARD_NAME)
IMAGE_DIR = os.path.join(ROOT, "build", "firmware")
ESPTOOL = os.path.join(deploy.VENV_BIN, "esptool")
MICROPYTHON_VERSION = "v1.28.0"
# ports/esp32/README.md of v1.28.0: "The current recommended version of ESP-IDF".
IDF_VERSION = "v5.5.1"
BAUD = 460800

# The ESP image header: magic byte, then at offset 12 the chip the image was built for
# (esptool's IMAGE_CHIP_ID), which fixes where its ROM looks for the second-stage
# bootloader: 0x1000 on the ESP32, 0x0 on the S3 (the ports' board.json flash_offset).
IMAGE_MAGIC = 0xE9
CHIPS = {0: ("esp32", "0x1000"), 9: ("esp32s3", "0x0")}
# makemanifest names every frozen module in the image's mp_frozen_names string table.
FROZEN_MARKER = b"drivers/esp32_board.py\0"
VERSION_SCRIPT = "import sys; print(sys.implementation, sys.version)"
# The first boot after an erase formats the filesystem: give it time before mpremote's
# Ctrl-C (tools.deploy waits as long after its resets).
FIRST_BOOT_S = "3"


class FlashError(Exception):
    pass


def variants():
    """The board's variants: the suffixes of its mpconfigvariant_*.cmake files."""
    return sorted(n[len("mpconfigvariant_"):-len(".cmake")] for n in os.listdir(BOARD_DIR)
                  if n.startswith("mpconfigvariant_") and n.endswith(".cmake"))


def image_path(variant=None):
    # Named like the port's build directory, build-CHARGER_ESP32[-VARIANT].
    return os.path.join(IMAGE_DIR, BOARD_NAME + ("-" + variant if variant else "") + ".bin")


def build_steps(micropy_src, variant=None):
    """(cwd, argv) of the port's make calls: fetch the submodules it needs, then build."""
    port_dir = os.path.join(micropy_src, "ports", "esp32")
    args = ["make", "BOARD_DIR=" + BOARD_DIR] + (["BOARD_VARIANT=" + variant] if variant else [])
    return [(port_dir, args + ["submodules"]), (port_dir, args)]


def built_image(micropy_src, variant=None):
    build = "build-" + BOARD_NAME + ("-" + variant if variant else "")
    return os.path.join(micropy_src, "ports", "esp32", build, "firmware.bin")


def toolchain_problems(env):
    """What is missing for a build, in words; empty when it can run."""
    problems = []
    src = env.get("MICROPY_SRC")
    if not src:
        problems.append("MICROPY_SRC is not set")
    elif not os.path.isfile(os.path.join(src, "ports", "esp32", "Makefile")):
        problems.append("MICROPY_SRC=%s has no ports/esp32/Makefile" % src)
    idf = env.get("IDF_PATH")
    if not idf:
        problems.append("IDF_PATH is not set")
    elif not os.path.isfile(os.path.join(idf, "tools", "idf.py")):
        problems.append("IDF_PATH=%s has no tools/idf.py" % idf)
    elif not shutil.which("idf.py", path=env.get("PATH", "")):
        problems.append("idf.py is not on PATH (source $IDF_PATH/export.sh)")
    return problems


def micropython_version(micropy_src):
    """'v1.28.0' from py/mpconfig.h, or None when it cannot be read."""
    fields = {}
    try:
        with open(os.path.join(micropy_src, "py", "mpconfig.h")) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[0] == "#define":
                    fields[parts[1]] = parts[2]
    except OSError:
        return None
    try:
        return "v%s.%s.%s" % (fields["MICROPY_VERSION_MAJOR"], fields["MICROPY_VERSION_MINOR"],
                              fields["MICROPY_VERSION_MICRO"])
    except KeyError:
        return None


def setup_text(variant=None):
    """The steps from nothing to `make firmware`, for a Debian or Ubuntu machine."""
    show_variant = " BOARD_VARIANT=" + variant if variant else ""
    steps = build_steps("$MICROPY_SRC", variant)
    return "\n".join([
        "Once: MicroPython %s and ESP-IDF %s (the version MicroPython %s supports,"
        % (MICROPYTHON_VERSION, IDF_VERSION, MICROPYTHON_VERSION[:5]),
        "ports/esp32/README.md), with its toolchains for the ESP32 and the ESP32-S3:",
        "  sudo apt-get install git wget flex bison gperf python3 python3-venv cmake"
        " ninja-build ccache libffi-dev libssl-dev dfu-util libusb-1.0-0",
        "  git clone -b %s --depth 1 https://github.com/micropython/micropython.git"
        " ~/micropython" % MICROPYTHON_VERSION,
        "  git clone -b %s --recursive --depth 1 --shallow-submodules"
        " https://github.com/espressif/esp-idf.git ~/esp-idf" % IDF_VERSION,
        "  cd ~/esp-idf && ./install.sh esp32,esp32s3",
        "In every shell that builds:",
        "  source ~/esp-idf/export.sh",
        "  export MICROPY_SRC=~/micropython",
        "Then, in this repository:",
        "  make firmware%s" % show_variant,
        "which runs:",
    ] + ["  cd %s && %s" % (cwd, shlex.join(argv)) for cwd, argv in steps] + [
        "and copies the image to %s" % os.path.relpath(image_path(variant), ROOT),
    ])


def _sub_make_env(env):
    # Run from `make firmware`, the outer make's command-line variables (BOARD=boards/x.json,
    # PORT=...) travel in MAKEFLAGS and would override the port Makefile's own BOARD.
    return {k: v for k, v in env.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}


def firmware(variant=None, dry_run=False, env=None, log=print, run=subprocess.call):
    env = dict(os.environ if env is None else env)
    if variant and variant not in variants():
        log("no variant %s of %s; there are: %s" % (variant, BOARD_NAME, ", ".join(variants())))
        return 2
    problems = toolchain_problems(env)
    if problems:
        log("make firmware: cannot build the MicroPython image here: %s." % "; ".join(problems))
        log(setup_text(variant))
        return 2
    src = env["MICROPY_SRC"]
    version = micropython_version(src)
    if version != MICROPYTHON_VERSION:
        log("warning: MICROPY_SRC is MicroPython %s; this board is made for %s"
            % (version or "(unknown version)", MICROPYTHON_VERSION))
    # The project's fixes to MicroPython (tools/mp_patches.py): the image gets the ones the
    # stand-in the tests ran on was built with.
    if dry_run:
        log("python -m tools.mp_patches %s" % src)
    else:
        try:
            mp_patches.apply(src, log=log)
        except mp_patches.PatchError as e:
            log("make firmware: %s" % e)
            return 2
    for cwd, argv in build_steps(src, variant):
        shown = "cd %s && %s" % (cwd, shlex.join(argv))
        if dry_run:
            log(shown)
            continue
        log("+ " + shown)
        rc = run(argv, cwd=cwd, env=_sub_make_env(env))
        if rc:
            log("failed (exit %d): %s" % (rc, shown))
            return rc
    built, target = built_image(src, variant), image_path(variant)
    if dry_run:
        log("cp %s %s" % (built, target))
        return 0
    os.makedirs(IMAGE_DIR, exist_ok=True)
    shutil.copyfile(built, target)
    log("image: %s (%d bytes)" % (os.path.relpath(target, ROOT), os.path.getsize(target)))
    return 0


def read_image(path):
    """(chip, flash offset, frozen) of an image file; FlashError when it is not one."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise FlashError("cannot read the image %s: %s" % (path, e.strerror))
    if len(data) < 16 or data[0] != IMAGE_MAGIC:
        raise FlashError("%s is not an ESP32 firmware image (no 0x%02X header): use the .bin"
                         " file, not a .uf2, .elf or a web page" % (path, IMAGE_MAGIC))
    chip_id = data[12] | data[13] << 8
    if chip_id not in CHIPS:
        raise FlashError("%s is built for chip id %d; this tool flashes %s"
                         % (path, chip_id, " and ".join(c for c, _o in CHIPS.values())))
    chip, offset = CHIPS[chip_id]
    return chip, offset, FROZEN_MARKER in data


def flash_commands(port, image, chip, offset):
    """esptool: erase everything (a previous filesystem or firmware must not survive),
    write the image, then mpremote: read the version back once it has booted."""
    esptool = [ESPTOOL, "--chip", chip, "--port", port, "--baud", str(BAUD)]
    return [esptool + ["erase-flash"],
            esptool + ["write-flash", offset, image],
            [deploy.MPREMOTE, "connect", port, "sleep", FIRST_BOOT_S, "+", "exec", VERSION_SCRIPT]]


def _hint(cmd, port):
    if cmd[0] == ESPTOOL:
        return ("esptool could not program the chip on %s. Check that it is the ESP32's port"
                " (ls /dev/ttyUSB* /dev/ttyACM*), that you may open it (the dialout group),"
                " that nothing else holds it (a REPL, make repl), and that the chip enters its"
                " bootloader: without auto-reset, hold BOOT (GPIO 0) low while pressing EN."
                % port)
    return ("the image was written but MicroPython did not answer on %s: press EN and look at"
            " `make repl PORT=%s`." % (port, port))


def flash(port, image=None, board_file=deploy.DEFAULT_BOARD, variant=None, dry_run=False,
          log=print, run=subprocess.call, stage_dir=deploy.STAGE_DIR):
    """Erase, write `image`, read the version back, then lay the files down with
    tools.deploy: the frozen route when the image carries the firmware, else the .mpy one."""
    from drivers.boardfile import BoardFileError, load

    image = os.path.abspath(image or image_path(variant))
    if not os.path.exists(image):
        log("no image %s: build it with `make firmware%s`, or name a stock MicroPython"
            " image with IMAGE=..." % (os.path.relpath(image, ROOT),
                                       " BOARD_VARIANT=" + variant if variant else ""))
        return 2
    try:
        chip, offset, frozen = read_image(image)
    except FlashError as e:
        log(str(e))
        return 2
    board_path = board_file if os.path.isabs(board_file) else os.path.join(ROOT, board_file)
    try:
        load(board_path)     # before the erase: a bad board file must not cost the firmware
    except (BoardFileError, OSError) as e:
        log("board file %s: %s" % (board_file, e))
        return 2
    if frozen:
        route = "the firmware and diag are frozen in: boot.py, main.py and the board file follow"
    else:
        route = "stock MicroPython: the firmware follows as .mpy (needs a module with PSRAM)"
    log("%s: %s image; %s" % (image, chip, route))
    for cmd in flash_commands(port, image, chip, offset):
        shown = shlex.join(cmd)
        if dry_run:
            log(shown)
            continue
        log("+ " + shown)
        rc = run(cmd, cwd=ROOT)
        if rc:
            log("failed (exit %d): %s" % (rc, shown))
            log(_hint(cmd, port))
            log("nothing else was run.")
            return rc
    return deploy.deploy(port, board_path, dry_run=dry_run, frozen=frozen, log=log, run=run,
                         stage_dir=stage_dir)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.flash",
                                 description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    fw = sub.add_parser("firmware", help="build the MicroPython image with the firmware frozen in")
    fw.add_argument("--variant", help="board variant: %s (default: none, WROOM-32E)"
                    % ", ".join(variants()))
    fw.add_argument("--dry-run", action="store_true", help="print the build commands only")
    fl = sub.add_parser("flash", help="erase, write the image, copy the files, read the version")
    fl.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB0")
    fl.add_argument("--image", help="image file (default: the one `firmware` built for --variant)")
    fl.add_argument("--variant", help="picks the default image")
    fl.add_argument("--board", default=deploy.DEFAULT_BOARD,
                    help="board file to install as /board.json")
    fl.add_argument("--dry-run", action="store_true",
                    help="print the esptool and mpremote commands only")
    fl.add_argument("--build-dir", default=deploy.STAGE_DIR,
                    help="staging tree for the .mpy files (emptied first)")
    args = ap.parse_args(argv)
    if args.cmd == "firmware":
        return firmware(args.variant, dry_run=args.dry_run)
    return flash(args.port, args.image, args.board, variant=args.variant, dry_run=args.dry_run,
                 stage_dir=os.path.abspath(args.build_dir))


if __name__ == "__main__":
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    sys.exit(main())

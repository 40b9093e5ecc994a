"""From a blank ESP32 to a station, without the ESP32: `tools.flash` (make firmware, make
flash) as dry runs with exact command lines for both routes, esptool against a pty (socat)
where no chip answers, the build's steps without and with a toolchain, and the repository's
manifest frozen the way the port's build freezes it (with the MicroPython source at /tmp/up).
"""
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from tools import deploy, flash, mp_patches
from tools.devicefiles import ROOT, device_files

PY = sys.executable
SOCAT = shutil.which("socat")
MPY_SRC_UP = "/tmp/up/micropython-1.28.0"
BOARD_DIR = os.path.join(ROOT, "boards", "CHARGER_ESP32")
REFERENCE = os.path.join(ROOT, "boards", "reference.json")
VERSION = "import sys; print(sys.implementation, sys.version)"


def fake_image(path, chip_id=0, frozen=True):
    """An ESP image as the header and the frozen-name table make it: magic 0xE9, the chip id
    at offset 12, makemanifest's module names (as in mp_frozen_names) when frozen."""
    header = bytearray(24)
    header[0], header[1] = 0xE9, 3
    header[12], header[13] = chip_id & 0xFF, chip_id >> 8
    names = b"machine.py\0_boot.py\0firmware/charger.py\0drivers/esp32_board.py\0" if frozen \
        else b"machine.py\0_boot.py\0inisetup.py\0"
    with open(path, "wb") as f:
        f.write(bytes(header) + b"\xff" * 4096 + names + b"\x00" * 64)
    return str(path)


def run_tool(*args, env=None, timeout=120):
    return subprocess.run([PY, "-m", "tools.flash"] + list(args), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def esptool(chip, port, *cmd):
    return [flash.ESPTOOL, "--chip", chip, "--port", port, "--baud", "460800"] + list(cmd)


def printed(cmds):
    return "\n".join(shlex.join(c) for c in cmds)


# --- make flash --dry-run: both routes --------------------------------------------------------

def test_frozen_route_erases_writes_at_0x1000_reads_the_version_then_copies_the_top_files(tmp_path):
    image = fake_image(tmp_path / "CHARGER_ESP32.bin")
    stage = str(tmp_path / "stage")
    r = run_tool("flash", "--port", "/dev/ttyUSB7", "--image", image, "--dry-run",
                 "--build-dir", stage)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "%s: esp32 image; the firmware and diag are frozen in: boot.py, main.py" \
                       " and the board file follow" % image
    assert lines[1:4] == [
        "%s --chip esp32 --port /dev/ttyUSB7 --baud 460800 erase-flash" % flash.ESPTOOL,
        "%s --chip esp32 --port /dev/ttyUSB7 --baud 460800 write-flash 0x1000 %s"
        % (flash.ESPTOOL, image),
        "%s connect /dev/ttyUSB7 sleep 3 + exec 'import sys; print(sys.implementation,"
        " sys.version)'" % deploy.MPREMOTE,
    ]
    # Then exactly tools.deploy's frozen route: service mode, the top-level files, the board
    # file, out of service mode; no package trees and no mip (logging is frozen too).
    rest = deploy.deploy_commands("/dev/ttyUSB7", REFERENCE, device_files(), frozen=True,
                                  stage_dir=stage)
    assert "\n".join(lines[4:]) == printed(rest)
    copied = [c[c.index("cp") + 1:] for c in rest if c[3:5] == ["fs", "cp"]]
    assert copied == [[os.path.join(ROOT, "boot.py"), ":boot.py"],
                      [os.path.join(ROOT, "main.py"), ":main.py"],
                      [REFERENCE, ":board.json"]]


def test_mpy_route_for_a_stock_s3_image_writes_at_0x0_and_copies_every_file_as_mpy(tmp_path):
    image = fake_image(tmp_path / "ESP32_GENERIC_S3-SPIRAM_OCT-v1.28.0.bin", chip_id=9,
                       frozen=False)
    stage = str(tmp_path / "stage")
    board = os.path.join("boards", "reference.json")
    r = run_tool("flash", "--port", "/dev/ttyACM0", "--image", image, "--board", board,
                 "--dry-run", "--build-dir", stage)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert "stock MicroPython: the firmware follows as .mpy" in lines[0]
    assert lines[1:4] == [
        shlex.join(esptool("esp32s3", "/dev/ttyACM0", "erase-flash")),
        shlex.join(esptool("esp32s3", "/dev/ttyACM0", "write-flash", "0x0", image)),
        shlex.join([deploy.MPREMOTE, "connect", "/dev/ttyACM0", "sleep", "3", "+", "exec",
                    VERSION]),
    ]
    # tools.deploy's .mpy route: first the board's heap (it refuses a board without PSRAM),
    # then the copy.
    probe = [deploy.MPREMOTE, "connect", "/dev/ttyACM0", "exec", deploy.HEAP_PROBE]
    rest = deploy.deploy_commands("/dev/ttyACM0", REFERENCE, device_files(), mip=True,
                                  frozen=False, stage_dir=stage)
    assert "\n".join(lines[4:]) == printed([probe] + rest)
    tails = [c[3:] for c in rest]
    assert ["fs", "cp", "-r", os.path.join(stage, "firmware"), ":"] in tails
    assert ["fs", "cp", "-r", os.path.join(stage, "drivers"), ":"] in tails
    assert ["mip", "install", "logging"] in tails
    # The .mpy files of the route were really compiled into the staging tree.
    assert os.path.isfile(os.path.join(stage, "drivers", "esp32_board.mpy"))


@pytest.mark.parametrize("content, message", [
    (b"UF2\nWQ]\x9e" + b"\x00" * 600, "is not an ESP32 firmware image"),
    (b"<!DOCTYPE html><html>", "is not an ESP32 firmware image"),
    (bytes([0xE9, 3, 2, 0x20]) + bytes(8) + bytes([5, 0]) + bytes(50), "built for chip id 5"),
])
def test_a_file_that_is_not_an_esp32_or_s3_image_is_refused_before_anything_runs(
        tmp_path, content, message):
    image = tmp_path / "download.bin"
    image.write_bytes(content)
    r = run_tool("flash", "--port", "/dev/ttyUSB7", "--image", str(image), "--dry-run",
                 "--build-dir", str(tmp_path / "stage"))
    assert r.returncode == 2
    assert message in r.stdout
    assert "esptool" not in r.stdout and "mpremote" not in r.stdout
    assert not (tmp_path / "stage").exists()


def test_a_bad_board_file_is_refused_before_the_erase(tmp_path):
    image = fake_image(tmp_path / "fw.bin")
    board = tmp_path / "board.json"
    board.write_text('{"pilot": {"pwm_pin": 25, "adc_pin": 15}, "pp": {"adc_pin": 39},'
                     ' "contactor": {"pin": 26}}')
    r = run_tool("flash", "--port", "/dev/ttyUSB7", "--image", image, "--board", str(board),
                 "--dry-run", "--build-dir", str(tmp_path / "stage"))
    assert r.returncode == 2
    assert "pilot.adc_pin: GPIO 15 is on ADC2" in r.stdout
    assert "erase-flash" not in r.stdout


def test_without_an_image_it_says_to_build_one_or_name_a_stock_one(tmp_path, monkeypatch):
    monkeypatch.setattr(flash, "IMAGE_DIR", str(tmp_path / "firmware"))
    out = []
    rc = flash.flash("/dev/ttyUSB7", variant="SPIRAM", dry_run=True, log=out.append,
                     run=lambda *a, **k: pytest.fail("ran %r" % (a,)))
    assert rc == 2
    assert len(out) == 1
    assert "CHARGER_ESP32-SPIRAM.bin" in out[0]
    assert "make firmware BOARD_VARIANT=SPIRAM" in out[0] and "IMAGE=" in out[0]


# --- make flash against a port where no chip answers ------------------------------------------

@pytest.fixture
def pty_pair():
    if SOCAT is None:
        pytest.skip("socat is not installed")
    d = tempfile.mkdtemp(prefix="flash-")
    host, device = os.path.join(d, "host"), os.path.join(d, "device")
    proc = subprocess.Popen([SOCAT, "pty,raw,echo=0,link=%s" % host,
                             "pty,raw,echo=0,link=%s" % device],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        if os.path.exists(host) and os.path.exists(device):
            break
        time.sleep(0.01)
    yield host, device
    proc.terminate()
    proc.wait(5)
    shutil.rmtree(d, ignore_errors=True)


class PortListener:
    """Whatever the host writes to the pty reaches the 'device' side: collect it."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.data = bytearray()
        self._stop = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self._stop:
            try:
                chunk = os.read(self.fd, 4096)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            except OSError:
                return
            self.data += chunk

    def close(self):
        self._stop = True
        self.thread.join(2)
        os.close(self.fd)


def test_esptool_reaches_the_port_and_its_failure_stops_the_flash(tmp_path, pty_pair):
    host, device = pty_pair
    listener = PortListener(device)
    image = fake_image(tmp_path / "fw.bin")
    stage = tmp_path / "stage"
    try:
        r = run_tool("flash", "--port", host, "--image", image, "--build-dir", str(stage),
                     timeout=180)
    finally:
        listener.close()
    out = r.stdout
    assert r.returncode != 0, out
    # esptool opened the port and sent the ROM loader's SYNC command (SLIP frame: opcode
    # 0x08, 36 bytes: 07 07 12 20 and 32 x 0x55) at least once.
    sync = b"\xc0\x00\x08\x24\x00\x00\x00\x00\x00\x07\x07\x12\x20" + b"\x55" * 32 + b"\xc0"
    assert sync in bytes(listener.data)
    # Only the erase ran; its failure is named with what to check, and nothing followed.
    ran = [ln for ln in out.splitlines() if ln.startswith("+ ")]
    assert ran == ["+ " + shlex.join(esptool("esp32", host, "erase-flash"))]
    assert "failed (exit %d): " % r.returncode in out
    assert "esptool could not program the chip on %s" % host in out
    assert "dialout" in out and "BOOT (GPIO 0)" in out
    assert out.rstrip().endswith("nothing else was run.")
    assert "Failed to connect to ESP32" in r.stderr + out
    assert not stage.exists()       # tools.deploy never started


# --- make firmware ----------------------------------------------------------------------------

def bare_env():
    return {k: v for k, v in os.environ.items() if k not in ("IDF_PATH", "MICROPY_SRC")}


def test_firmware_without_esp_idf_prints_the_steps_and_fails():
    r = run_tool("firmware", "--variant", "SPIRAM", env=bare_env())
    assert r.returncode == 2
    out = r.stdout
    assert out.startswith("make firmware: cannot build the MicroPython image here:"
                          " MICROPY_SRC is not set; IDF_PATH is not set.")
    for step in (
            "git clone -b v1.28.0 --depth 1 https://github.com/micropython/micropython.git",
            "git clone -b v5.5.1 --recursive",
            "cd ~/esp-idf && ./install.sh esp32,esp32s3",
            "source ~/esp-idf/export.sh",
            "export MICROPY_SRC=~/micropython",
            "make firmware BOARD_VARIANT=SPIRAM",
            "cd $MICROPY_SRC/ports/esp32 && make BOARD_DIR=%s BOARD_VARIANT=SPIRAM submodules"
            % BOARD_DIR,
            "cd $MICROPY_SRC/ports/esp32 && make BOARD_DIR=%s BOARD_VARIANT=SPIRAM\n" % BOARD_DIR,
            "build/firmware/CHARGER_ESP32-SPIRAM.bin"):
        assert step in out, step


def test_firmware_with_idf_path_but_no_export_says_to_source_export_sh(tmp_path):
    src, idf, _bin = fake_toolchain(tmp_path, idf_on_path=False)
    env = dict(bare_env(), MICROPY_SRC=src, IDF_PATH=idf, PATH="/usr/bin:/bin")
    r = run_tool("firmware", env=env)
    assert r.returncode == 2
    assert "idf.py is not on PATH (source $IDF_PATH/export.sh)" in r.stdout


def test_firmware_an_unknown_variant_is_named():
    r = run_tool("firmware", "--variant", "SPIRAM_OCT", env=bare_env())
    assert r.returncode == 2
    assert r.stdout.strip() == ("no variant SPIRAM_OCT of CHARGER_ESP32;"
                                " there are: S3_SPIRAM, SPIRAM")


def fake_toolchain(tmp_path, idf_on_path=True, version=("1", "28", "0")):
    """A MicroPython tree and an ESP-IDF as far as the tool looks at them, and a `make` that
    records its arguments, directory and MAKEFLAGS and, for a build, leaves a firmware.bin."""
    src = tmp_path / "micropython"
    (src / "ports" / "esp32").mkdir(parents=True)
    (src / "ports" / "esp32" / "Makefile").write_text("# port\n")
    (src / "py").mkdir()
    (src / "py" / "mpconfig.h").write_text(
        "#define MICROPY_VERSION_MAJOR %s\n#define MICROPY_VERSION_MINOR %s\n"
        "#define MICROPY_VERSION_MICRO %s\n" % version)
    # The lines of py/gc.c the project patches (tools/mp_patches.py), as v1.28.0 has them.
    (src / "py" / "gc.c").write_text("/* gc */\n" + mp_patches.GC_REALLOC_LAST_USED[1])
    idf = tmp_path / "esp-idf"
    (idf / "tools").mkdir(parents=True)
    (idf / "tools" / "idf.py").write_text("")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    if idf_on_path:
        _script(bindir / "idf.py", "#!/bin/sh\nexit 0\n")
    _script(bindir / "make",
            "#!/bin/sh\n"
            'echo "$(pwd) MAKEFLAGS=[$MAKEFLAGS] $*" >> "%s"\n'
            'case "$*" in *submodules) ;; *) mkdir -p build-CHARGER_ESP32-SPIRAM;'
            ' printf "\\351image" > build-CHARGER_ESP32-SPIRAM/firmware.bin;; esac\n'
            % (tmp_path / "make.log"))
    return str(src), str(idf), str(bindir)


def _script(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_firmware_dry_run_prints_the_port_build_commands(tmp_path):
    src, idf, bindir = fake_toolchain(tmp_path)
    env = dict(bare_env(), MICROPY_SRC=src, IDF_PATH=idf, PATH=bindir + ":/usr/bin:/bin")
    r = run_tool("firmware", "--variant", "S3_SPIRAM", "--dry-run", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    port = os.path.join(src, "ports", "esp32")
    assert r.stdout.splitlines() == [
        "python -m tools.mp_patches %s" % src,
        "cd %s && make BOARD_DIR=%s BOARD_VARIANT=S3_SPIRAM submodules" % (port, BOARD_DIR),
        "cd %s && make BOARD_DIR=%s BOARD_VARIANT=S3_SPIRAM" % (port, BOARD_DIR),
        "cp %s/build-CHARGER_ESP32-S3_SPIRAM/firmware.bin %s/build/firmware/"
        "CHARGER_ESP32-S3_SPIRAM.bin" % (port, ROOT),
    ]
    assert not (tmp_path / "make.log").exists()
    assert mp_patches.state(src, mp_patches.GC_REALLOC_LAST_USED) == "pending"   # dry: untouched


def test_firmware_runs_the_port_make_without_the_outer_makes_variables(tmp_path, monkeypatch):
    src, idf, bindir = fake_toolchain(tmp_path, version=("1", "27", "0"))
    monkeypatch.setattr(flash, "IMAGE_DIR", str(tmp_path / "out"))
    # As under `make firmware BOARD=boards/x.json`: the port's Makefile would take BOARD.
    env = dict(bare_env(), MICROPY_SRC=src, IDF_PATH=idf, PATH=bindir + ":/usr/bin:/bin",
               MAKEFLAGS=" -- BOARD=boards/x.json BOARD_VARIANT=SPIRAM", MAKELEVEL="1")
    out = []
    assert flash.firmware("SPIRAM", env=env, log=out.append) == 0, out
    port = os.path.join(src, "ports", "esp32")
    assert (tmp_path / "make.log").read_text().splitlines() == [
        "%s MAKEFLAGS=[] BOARD_DIR=%s BOARD_VARIANT=SPIRAM submodules" % (port, BOARD_DIR),
        "%s MAKEFLAGS=[] BOARD_DIR=%s BOARD_VARIANT=SPIRAM" % (port, BOARD_DIR),
    ]
    assert out[0] == "warning: MICROPY_SRC is MicroPython v1.27.0; this board is made for v1.28.0"
    # The image is built from the tree with the project's MicroPython fixes, as the stand-in is.
    assert out[1] == "patched " + os.path.join(src, "py", "gc.c")
    assert mp_patches.state(src, mp_patches.GC_REALLOC_LAST_USED) == "applied"
    assert (tmp_path / "out" / "CHARGER_ESP32-SPIRAM.bin").read_bytes() == b"\xe9image"
    assert out[-1].startswith("image: ") and out[-1].endswith("CHARGER_ESP32-SPIRAM.bin (6 bytes)")


def test_firmware_stops_at_the_first_failing_make(tmp_path, monkeypatch):
    src, idf, bindir = fake_toolchain(tmp_path)
    monkeypatch.setattr(flash, "IMAGE_DIR", str(tmp_path / "out"))
    env = dict(bare_env(), MICROPY_SRC=src, IDF_PATH=idf, PATH=bindir + ":/usr/bin:/bin")
    calls = []

    def run(argv, cwd=None, env=None):
        calls.append(argv)
        return 2

    out = []
    assert flash.firmware(None, env=env, log=out.append, run=run) == 2
    assert calls == [["make", "BOARD_DIR=" + BOARD_DIR, "submodules"]]
    assert mp_patches.state(src, mp_patches.GC_REALLOC_LAST_USED) == "applied"
    assert out[-1].startswith("failed (exit 2): cd ")
    assert not (tmp_path / "out").exists()


# --- the manifest frozen as the port's build freezes it ---------------------------------------

def test_the_boards_frozen_manifest_freezes_every_device_package_for_xtensawin(tmp_path):
    """makemanifest.py of MicroPython v1.28.0, with the variables esp32_common.cmake passes,
    on the manifest mpconfigboard.cmake names: every module compiles for the ESP32 and the
    frozen-name table holds the name tools.flash recognises a frozen image by."""
    if not os.path.isfile(os.path.join(MPY_SRC_UP, "tools", "makemanifest.py")):
        pytest.skip("no MicroPython source at " + MPY_SRC_UP)
    build = tmp_path / "build"
    (build / "genhdr").mkdir(parents=True)
    # Normally the port's preprocessed qstr list; only its configuration lines are needed.
    (build / "genhdr" / "qstrdefs.preprocessed.h").write_text(
        "QCFG(BYTES_IN_LEN, (1))\nQCFG(BYTES_IN_HASH, (1))\n")
    out = tmp_path / "frozen_content.c"
    port = os.path.join(MPY_SRC_UP, "ports", "esp32")
    env = dict(os.environ, MICROPY_MPYCROSS=deploy.MPY_CROSS)
    r = subprocess.run(
        [PY, os.path.join(MPY_SRC_UP, "tools", "makemanifest.py"), "-o", str(out),
         "-b", str(build), "-v", "MPY_DIR=" + MPY_SRC_UP,
         "-v", "MPY_LIB_DIR=" + os.path.join(MPY_SRC_UP, "lib", "micropython-lib"),
         "-v", "PORT_DIR=" + port, "-v", "BOARD_DIR=" + BOARD_DIR, "-f-march=xtensawin",
         os.path.join(ROOT, "manifest.py")],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    c = out.read_text()
    names = c[c.index("const char mp_frozen_names[] = {"):]
    names = names[:names.index("};")]
    for path in device_files():
        if path not in deploy.RUN_AS_SOURCE:    # boot.py, main.py stay on the filesystem
            assert '"%s\\0"' % path in names, path
    assert '"%s\\0"' % flash.FROZEN_MARKER[:-1].decode() in names
    for module in ("_boot.py", "inisetup.py", "logging.py"):
        assert '"%s\\0"' % module in names, module

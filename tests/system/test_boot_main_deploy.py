"""Getting boot.py, main.py and the drivers onto a device: `tools.deploy check`, the
mpremote commands of `deploy` (without hardware: --dry-run), the on-device clean-up script
(run on the unix port), and manifest.py for a frozen build."""
import os
import re
import shlex
import subprocess
import sys

from tools import deploy
from tools.devicefiles import MICROPYTHON, ROOT, device_files, micropython_env, mp_cwd

PY = sys.executable


def run_tool(*args):
    return subprocess.run([PY, "-m", "tools.deploy"] + list(args), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_check_prints_every_file_and_the_total_last(tmp_path):
    r = run_tool("check", "--build-dir", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    m = re.match(r"total: (\d+) files, (\d+) bytes \.mpy$", lines[-1])
    assert m, lines[-1]
    files = device_files()
    assert int(m.group(1)) == len(files)
    sizes = [int(ln.split()[0]) for ln in lines[:-1]]
    assert len(sizes) == len(files) and sum(sizes) == int(m.group(2))
    assert any(ln.endswith("drivers/esp32_board.mpy") for ln in lines)


def commands(stage, *extra):
    # A private staging tree: concurrent runs must not empty each other's.
    r = run_tool("deploy", "--port", "/dev/ttyUSB7", "--dry-run", "--build-dir", str(stage),
                 *extra)
    assert r.returncode == 0, r.stdout + r.stderr
    return [shlex.split(c) for c in _join_continued(r.stdout)]


def _join_continued(text):
    # Each command is one shell line, except that the quoted clean-up script spans lines.
    out, cur = [], ""
    for line in text.splitlines():
        cur = line if not cur else cur + "\n" + line
        try:
            shlex.split(cur)
        except ValueError:
            continue
        out.append(cur)
        cur = ""
    return out


def test_dry_run_lists_the_mpremote_commands_in_order(tmp_path):
    stage = str(tmp_path / "stage")
    cmds = commands(stage)
    assert all(c[:3] == [deploy.MPREMOTE, "connect", "/dev/ttyUSB7"] for c in cmds)
    tails = [c[3:] for c in cmds]
    # The board's heap first (the .mpy route refuses a board it would not fit).
    assert tails.pop(0) == ["exec", deploy.HEAP_PROBE]
    # Service mode first (the watchdog would reset the chip mid-copy), out of it last.
    assert tails[0] == ["exec", 'open("service", "w").close()', "+", "reset"]
    assert tails[1][:4] == ["sleep", "3", "+", "exec"]
    assert tails[-1] == ["exec", 'import os; os.remove("service")', "+", "reset"]
    assert ["fs", "cp", "-r", os.path.join(stage, "firmware"), ":"] in tails
    assert ["fs", "cp", "-r", os.path.join(stage, "drivers"), ":"] in tails
    assert ["fs", "cp", os.path.join(ROOT, "boot.py"), ":boot.py"] in tails
    assert ["fs", "cp", os.path.join(ROOT, "main.py"), ":main.py"] in tails
    assert ["fs", "cp", os.path.join(ROOT, "boards", "reference.json"), ":board.json"] in tails
    assert ["mip", "install", "logging"] in tails
    assert tails.index(["mip", "install", "logging"]) < len(tails) - 1
    # The staged trees hold exactly the compiled device files.
    staged = sorted(os.path.relpath(os.path.join(d, f), stage)
                    for d, _s, fs in os.walk(stage) for f in fs)
    assert staged == sorted(p[:-3] + ".mpy" for p in device_files())


def test_frozen_build_copies_only_boot_main_and_the_board_file(tmp_path):
    tails = [c[3:] for c in commands(tmp_path / "stage", "--frozen")]
    copied = [t[-1] for t in tails if t[:2] == ["fs", "cp"]]
    # diag is frozen too: a copy on the filesystem would shadow the image's and load its
    # bytecode into the heap. The clean-up removes old ones.
    assert copied == [":boot.py", ":main.py", ":board.json"]
    clean = [t for t in tails if t[:2] == ["sleep", "3"]][0][-1]
    assert "rm('diag.py')" in clean and "rm('diag.mpy')" in clean
    assert ["exec", deploy.HEAP_PROBE] not in tails     # frozen: the heap is the image's
    assert ["mip", "install", "logging"] not in tails


def test_bad_board_file_stops_before_any_command(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"pilot": {"pwm_pin": 25, "adc_pin": 4}, "pp": {"adc_pin": 39},'
                   ' "contactor": {"pin": 26}}')
    r = run_tool("deploy", "--port", "/dev/ttyUSB7", "--dry-run", "--board", str(bad),
                 "--build-dir", str(tmp_path / "stage"))
    assert r.returncode == 2
    assert "pilot.adc_pin: GPIO 4 is on ADC2" in r.stdout
    assert "mpremote" not in r.stdout


def test_clean_script_removes_code_and_keeps_data(tmp_path):
    for rel in ("firmware/a.py", "firmware/sub/b.mpy", "drivers/c.mpy", "board.json"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    r = subprocess.run([MICROPYTHON, "-c", deploy._CLEAN_SCRIPT], cwd=str(tmp_path),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(str(tmp_path))) == ["board.json", "data"]


def test_clean_script_removes_stale_sources_of_top_level_modules(tmp_path):
    # MicroPython imports name.py before name.mpy: a diag.py left from an earlier copy
    # would shadow the new diag.mpy. boot.py and main.py stay (they are copied as source).
    stage = tmp_path / "stage"
    clean = [c for c in commands(stage) if c[3:5] == ["sleep", "3"]][0][-1]
    dev = tmp_path / "dev"
    for rel in ("diag.py", "boot.py", "main.py", "board.json", "notes.txt"):
        p = dev / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    r = subprocess.run([MICROPYTHON, "-c", clean], cwd=str(dev),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(str(dev))) == ["board.json", "boot.py", "data", "main.py",
                                            "notes.txt"]


def test_manifest_freezes_every_package_and_logging():
    calls = []

    def record(name):
        return lambda *a, **k: calls.append((name,) + a)
    env = {n: record(n) for n in ("include", "require", "package", "module", "freeze")}
    with open(os.path.join(ROOT, "manifest.py")) as f:
        exec(f.read(), env)
    packages = {c[1] for c in calls if c[0] == "package"}
    assert ("require", "logging") in calls
    assert ("include", "$(PORT_DIR)/boards/manifest.py") in calls
    modules = {c[1] for c in calls if c[0] == "module"}
    for path in device_files():
        if "/" in path:
            assert path.split("/")[0] in packages, path
        elif path in deploy.RUN_AS_SOURCE:
            assert path not in modules, path    # run by name from the filesystem
        else:
            assert path in modules, path        # diag: frozen


def _deploy_with_heap(tmp_path, heap_text):
    ran, said = [], []
    rc = deploy.deploy("/dev/ttyUSB7", deploy.DEFAULT_BOARD, log=said.append,
                       run=lambda cmd, cwd=None: ran.append(cmd) or 0,
                       stage_dir=str(tmp_path / "stage"),
                       probe=lambda port: deploy.parse_heap(heap_text))
    return rc, ran, "\n".join(said)


def test_mpy_deploy_refuses_a_board_without_psram_and_names_the_frozen_route(tmp_path):
    # An ESP32-WROOM-32 on v1.28: a 56 KB first area, about 60 KB more to grow into.
    rc, ran, said = _deploy_with_heap(tmp_path, "HEAP 57344 61440\n")
    assert rc == 3 and ran == []
    assert "refused" in said and "116 KB" in said and "256 KB" in said and "--frozen" in said
    assert "make firmware" in said


def test_mpy_deploy_refuses_a_board_that_does_not_answer(tmp_path):
    rc, ran, said = _deploy_with_heap(tmp_path, "Traceback ...\nNameError\n")
    assert rc == 3 and ran == []
    assert "did not report its heap" in said


def test_mpy_deploy_copies_to_a_board_with_psram(tmp_path):
    # A WROVER: the GC heap in PSRAM, about 2 MB.
    rc, ran, said = _deploy_with_heap(tmp_path, "HEAP 2031616 40000\n")
    assert rc == 0 and "refused" not in said
    assert any(c[3:5] == ["fs", "cp"] for c in ran)


def test_heap_probe_runs_on_micropython_and_reports_the_heap():
    # On the stand-in (no esp32 module: nothing to grow into) it prints the GC heap.
    r = subprocess.run([MICROPYTHON, "-X", "heapsize=56K", "-c", deploy.HEAP_PROBE],
                       cwd=mp_cwd(), env=micropython_env(), capture_output=True, text=True,
                       timeout=30)
    heap = deploy.parse_heap(r.stdout)
    assert heap is not None, r.stdout + r.stderr
    assert 50000 < heap[0] <= 57344

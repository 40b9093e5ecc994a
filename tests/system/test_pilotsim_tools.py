"""The simulator as its users run it: bad scenario files stop before anything runs, no
output shows a configured secret, the live view fits 80 columns, plots, and the tools
started with a Python that lacks their packages say which command works."""
import io
import json
import os
import subprocess
import sys
import time

import pytest

from tools.devicefiles import ROOT
from tools.pilotsim import annexa, orchestrate, plot
from tools.pilotsim.__main__ import SCENARIO_DIR, main


def _run(argv):
    out = io.StringIO()
    rc = main(argv, out=out)
    return rc, out.getvalue()


def _scenario(tmp_path, **changes):
    with open(os.path.join(SCENARIO_DIR, "basic-session.json")) as f:
        d = json.load(f)
    d.update(changes)
    p = tmp_path / ("%s.json" % d["name"])
    p.write_text(json.dumps(d))
    return str(p)


def test_misspelt_names_exit_2_before_anything_runs(tmp_path):
    d = json.load(open(os.path.join(SCENARIO_DIR, "basic-session.json")))
    good = _scenario(tmp_path, name="good")
    bad = _scenario(tmp_path, name="bad", expect={"states": ["C3"],
                                                  "sequences": ["c_to_a_opne"]})
    started = time.monotonic()
    rc, text = _run(["run", good, bad, "--quiet"])
    assert rc == 2, text
    assert "expect.states[0]: unknown state 'C3'" in text, text
    assert "expect.sequences[0]: unknown sequence 'c_to_a_opne' (did you mean 'c_to_a_open'?)" \
        in text, text
    assert "2 errors" in text and os.path.basename(bad) in text, text
    # nothing ran: not even the good file given before the bad one
    assert "Summary of" not in text and "Annex A" not in text, text
    assert time.monotonic() - started < 5
    assert d["steps"]


def test_missing_file_exits_2_without_a_traceback(tmp_path):
    missing = str(tmp_path / "nope.json")
    p = subprocess.run([sys.executable, "-m", "tools.pilotsim", "run", missing, "--quiet"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "nope.json: cannot read the file" in p.stdout
    assert "Traceback" not in p.stdout + p.stderr
    rc, text = _run(["check", missing])
    assert rc == 2 and "cannot read" in text


def test_no_output_shows_a_configured_secret(tmp_path):
    if not orchestrate.broker_available():
        pytest.skip("mosquitto is not installed (tools/setup.sh installs it)")
    secret = "pw-Zq81-never-shown"
    path = _scenario(tmp_path, name="secret-session", broker="required",
                     config={"max_current_ma": 16000, "mqtt_user": "station-1",
                             "mqtt_password": secret},
                     steps=[{"at": 1000, "ev": "plug"}, {"at": 1500, "ev": "request"},
                            {"at": 3000, "backend": "set_config",
                             "args": {"changes": {"wifi_password": secret + "-wifi"}}},
                            {"at": 4000, "backend": "get_config"},
                            {"at": 6000, "ev": "unplug"}],
                     duration_ms=8000, expect={"states": ["C2"], "sequences": ["plug_in"]})
    trace = str(tmp_path / "t.jsonl")
    png = str(tmp_path / "t.png")
    rc, text = _run(["run", path, "--trace", trace, "--plot", png])
    with open(trace) as f:
        records = f.read()
    assert '"mqtt_password": "***"' in records          # the key is there, masked
    assert '"k": "backend"' in records and "get_config" in records
    assert '"topic": "reply"' in records            # the station reached the broker
    for out in (text, records):
        assert secret not in out
    assert rc == 0, text


def test_live_view_fits_80_columns(tmp_path):
    out = io.StringIO()
    view = orchestrate.LiveView(out)
    res = orchestrate.run(os.path.join(SCENARIO_DIR, "backend-commands.json"), live=view)
    lines = out.getvalue().splitlines()
    assert len(lines) > 30
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]
    # the content is still all there: the long raw command is wrapped, not cut
    joined = " ".join(line.strip() for line in lines)
    assert "bad-1" in joined and "unknown command launch" in joined, joined
    assert res.end is not None


def test_plot_writes_a_png_with_every_panel(tmp_path):
    path = os.path.join(SCENARIO_DIR, "diode-short.json")
    trace = str(tmp_path / "d.jsonl")
    res = orchestrate.run(path, trace_path=trace, broker=False)
    png = str(tmp_path / "d.png")
    drawn = plot.plot(plot.read_trace(trace), png)
    assert plot.png_size(png) == (1200, 1000)
    assert drawn["CP"][:2] == ["CP high", "CP low"]
    assert "duty %" in drawn["PWM"] and "offered A (duty, as the EV reads it)" in drawn["PWM"]
    assert "limit A (installation, cable)" in drawn["PWM"]
    assert drawn["State"][0] == "state"
    assert drawn["Contactor"][:2] == ["coil command", "mirror contact"]
    assert drawn["Current"][:3] == ["L1", "L2", "L3"]
    assert "faults" in drawn["CP"]                 # DIODE_FAULT shaded
    seqs = set(c.seq for c in res.checks)
    assert "annexa:diode_fault_open" in drawn["State"] and "diode_fault_open" in seqs
    rc, text = _run(["plot", trace, "-o", str(tmp_path / "cli.png")])
    assert rc == 0 and plot.png_size(str(tmp_path / "cli.png")) == (1200, 1000)
    rc, text = _run(["plot", str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "x.png")])
    assert rc == 2


def _system_python():
    for exe in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(exe):
            p = subprocess.run([exe, "-c", "import paho, pymodbus"], capture_output=True)
            if p.returncode != 0:
                return exe
    pytest.skip("no Python without the project's packages on this machine")


@pytest.mark.parametrize("argv,needs", [
    (["-m", "tools.cpo", "list"], "paho-mqtt"),
    (["-m", "tools.pilotsim", "run", "tools/pilotsim/scenarios/demo.json"], "pymodbus"),
])
def test_tools_with_the_system_python_name_the_command_that_works(argv, needs):
    exe = _system_python()
    started = time.monotonic()
    p = subprocess.run([exe] + argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    text = p.stdout + p.stderr
    assert p.returncode != 0, text
    assert needs in text and "make setup" in text and ".venv/bin/python" in text, text
    assert "Traceback" not in text
    assert time.monotonic() - started < 10


def test_annexa_follows_set_config_and_the_cable():
    def tick(t, duty):
        return {"t": t, "k": "tick", "state": "C2", "ev": "C", "duty": duty, "contactor": 1,
                "mirror": 1, "faults": [], "blocking": 0, "offered_ma": 0, "current_ma": 0}
    base = [{"t": 0, "k": "start", "config": {"max_current_ma": 16000}, "cable_a": 32},
            tick(1000, 266)]                     # 16 A
    raise_ = [{"t": 5000, "k": "backend", "name": "set_config", "id": "c1",
               "args": {"changes": {"max_current_ma": 25000}}},
              {"t": 5010, "k": "mqtt", "topic": "reply", "dir": "from_station",
               "payload": {"id": "c1", "ok": True}},
              tick(5020, 416)]                   # 25 A
    end = [{"t": 9000, "k": "end"}]
    ok = annexa.analyse(base + raise_ + end)
    duty = [c for c in ok if c.seq == "duty_within_limits"]
    assert len(duty) == 1 and duty[0].ok, annexa.format_report(ok)
    # Without the command the same offer fails; refused, too.
    bad = annexa.analyse(base + [tick(5020, 416)] + end)
    assert not [c for c in bad if c.seq == "duty_within_limits"][0].ok
    refused = [dict(r) for r in raise_]
    refused[1]["payload"] = {"id": "c1", "ok": False}
    bad = annexa.analyse(base + refused + end)
    assert not [c for c in bad if c.seq == "duty_within_limits"][0].ok
    # A 13 A cable plugged in later: 16 A is too much from then on.
    swap = [{"t": 6000, "k": "ev", "name": "plug", "cable_a": 13}, tick(6100, 266)]
    bad = annexa.analyse(base + swap + end)
    c = [c for c in bad if c.seq == "duty_within_limits"][0]
    assert not c.ok and "13 A" in c.note, c.note

"""python -m tools.pilotsim: levels, list, check."""
import io
import json
import os

from tools.pilotsim.__main__ import main


def _run(argv):
    out = io.StringIO()
    rc = main(argv, out=out)
    return rc, out.getvalue()


def test_levels_table_classifies_every_row():
    rc, text = _run(["levels"])
    assert rc == 0
    got = [line.split()[-2] for line in text.splitlines()[1:9]]
    assert got == ["A", "B", "C", "D", "DIODE_FAULT", "E", "A", "A"], text


def test_list_names_the_library():
    rc, text = _run(["list"])
    assert rc == 0 and "demo" in text and "diode-short" in text


def test_check_rejects_a_bad_file_with_its_reason(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "bad", "duration_ms": 1000,
                               "steps": [{"at": 500, "ev": "plug"}, {"at": 100, "ev": "unplug"}]}))
    rc, text = _run(["check", str(bad)])
    assert rc == 2
    assert "steps[1]" in text and "time order" in text and os.path.basename(str(bad)) in text
    rc, text = _run(["run", str(bad), "--quiet"])
    assert rc == 2 and "time order" in text

"""docs/faults.md must show exactly the fault table in firmware/faults.py."""
import subprocess
import sys

from firmware import faults
from tools import gen_faults_doc


def _doc():
    with open(gen_faults_doc.DOC) as fh:
        return fh.read()


def test_doc_matches_the_table():
    text = _doc()
    assert gen_faults_doc.render(text) == text, \
        "docs/faults.md is out of date: run python -m tools.gen_faults_doc"


def test_every_fault_is_documented():
    text = _doc()
    for f in faults.all_faults():
        assert "| %d | %s |" % (f.code, f.name) in text
        assert f.ocpp in text


def test_check_detects_a_changed_row(monkeypatch):
    text = _doc()
    first = faults._TABLE[0]
    monkeypatch.setattr(faults, "_TABLE", (first[:-1] + (first[-1] + " Changed.",),)
                        + faults._TABLE[1:])
    assert gen_faults_doc.render(text) != text


def test_check_command_exits_zero_when_equal():
    r = subprocess.run([sys.executable, "-m", "tools.gen_faults_doc", "--check"],
                       cwd=gen_faults_doc.ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

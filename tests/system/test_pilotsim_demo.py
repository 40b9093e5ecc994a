"""`make sim` end to end: the demo through its python entry, the summary checked."""
import io
import re

from tools.pilotsim.__main__ import main


def test_demo_session_summary():
    out = io.StringIO()
    rc = main(["demo", "--quiet", "--speed", "0", "--trace", "/dev/null"], out=out)
    text = out.getvalue()
    assert "Summary of demo" in text, text
    m = re.search(r"energy delivered \(simulated EV\): (\d+) Wh", text)
    assert m and int(m.group(1)) > 0, text
    for state in ("B1", "C2", "A"):
        assert re.search(r"^\s+%s\s+from" % state, text, re.M), (state, text)
    m = re.search(r"(\d+) sequences, (\d+) passed, (\d+) failed", text)
    assert m and int(m.group(1)) >= 4 and m.group(3) == "0", text
    assert "MQTT:" in text and "EXPECTATION FAILED" not in text, text
    assert rc == 0, text


def test_demo_without_a_broker_says_so_and_still_charges():
    out = io.StringIO()
    rc = main(["demo", "--quiet", "--speed", "0", "--no-broker", "--trace", "/dev/null"],
              out=out)
    text = out.getvalue()
    assert "running WITHOUT a broker" in text, text
    assert "MQTT: 0 messages" in text, text
    m = re.search(r"energy delivered \(simulated EV\): (\d+) Wh", text)
    assert m and int(m.group(1)) > 0, text
    assert re.search(r"session \S+ \(not delivered to a backend\): energy_wh=\d+", text), text
    assert rc == 0, text

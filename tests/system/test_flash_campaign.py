"""Damaged-flash boots of the real boot.py/main.py on a littlefs image (issue 20): a fixed
sample of tests/system/flash_campaign.py's cases, one of each kind of damage. `make
bench-flash` runs all of them (several hundred boots) and reports the counts.

Each case: the base image (three pending session records, a fourth cut while charging, the
outbox, counters, a 16 A configuration and its last valid copy) damaged one way, a boot with
no EV (safe outputs, no reset, a bounded boot, damage reported), the damage repaired, a boot
with an EV asking to charge (it charges; every record is still there, or its loss was
reported). flash_campaign.check() has the assertions.
"""
import shutil
import tempfile

import pytest

from tests.system import flash_campaign as fc

SAMPLE = (
    "data/sessions.jnl truncate 0",
    "data/sessions.jnl flip",
    "data/sessions.jnl torn",
    "data/session.live garbage",
    "data/session.ckpt dir",
    "data/counters.json nonutf8",
    "data/boot.num dir",
    "data/outbox.jnl truncate",
    "data/config.json garbage",
    "board.json truncate",
    "full flash, torn data/sessions.jnl",
    "read-only, torn data/outbox.jnl",
    "full flash, read-only",
    "board file polarity null",
    "board file polarity \"false\"",
    "board file pilot pin = contactor pin",
    "board file not UTF-8",
    "config [], no last copy",
    "config {\"max_current_ma\": 9",
    "config not UTF-8, no last copy",
    "4 crashes before, crash.txt not UTF-8",
    "5 crashes before, crash.txt a directory",
)


@pytest.fixture(scope="module")
def campaign():
    work = tempfile.mkdtemp(prefix="flash-campaign-")
    runner = fc.Runner(work)
    base, inv, records = fc.make_base(runner)
    all_cases = fc.cases(inv["files"], seed=1)
    yield runner, base, records, inv, all_cases
    shutil.rmtree(work, ignore_errors=True)


def test_the_base_image_holds_records_in_every_file_kind(campaign):
    _runner, _base, records, inv, all_cases = campaign
    assert records == ["1-1", "1-2", "1-3", "1-4"]      # 1-4: live when the power failed
    assert inv["outbox_sessions"] == ["1-1", "1-2", "1-3"]
    for name in ("board.json", "data/sessions.jnl", "data/session.live", "data/session.ckpt",
                 "data/counters.json", "data/boot.num", "data/outbox.jnl", "data/config.json",
                 "data/config.last"):
        assert name in inv["files"], sorted(inv["files"])
    # Every file gets every damage; then the global ones, board files, configs, crashes.
    files = [p for p, size in inv["files"].items() if size != "dir"]
    assert len(all_cases) > 7 * len(files)
    for prefix in SAMPLE:
        assert any(c["label"].startswith(prefix) for c in all_cases), prefix


@pytest.mark.parametrize("prefix", SAMPLE)
def test_damaged_boot_ends_safe_and_the_repaired_one_charges(campaign, prefix):
    runner, base, records, _inv, all_cases = campaign
    case = next(c for c in all_cases if c["label"].startswith(prefix))
    damaged, repaired = fc.run_case(runner, base, records, case)
    bad = fc.check(case, records, damaged, repaired)
    assert not bad, "%s:\n%s\n--- damaged boot ---\n%s" % (case["label"], "\n".join(bad),
                                                          damaged["stdout"][-2000:])


def test_the_checks_can_fail():
    # check() on reports that break each promise finds each.
    records = ["1-1", "1-2"]
    ok_storage = {"raised": {}, "damage": {}, "max_current_ma": 16000, "config_error": None}
    damaged = {"outcome": "time up", "storage": ok_storage, "first_step_ms": 50,
               "contactor": [[0, 0]], "reset_count": 0, "stdout": ""}
    repaired = {"outcome": "time up", "contactor": [[0, 0], [900000, 1]], "reset_count": 0,
                "inventory": {"pending": ["1-1", "1-2"]}, "stdout": ""}
    case = {"kind": "file", "file": "data/counters.json", "label": "x"}
    assert fc.check(case, records, damaged, repaired) == []
    broken = [
        dict(damaged, contactor=[[0, 1]]),
        dict(damaged, reset_count=1),
        dict(damaged, first_step_ms=fc.BOOT_BOUND_MS + 1),
        dict(damaged, storage=dict(ok_storage, max_current_ma=32000)),
        dict(damaged, raised="OSError: 2"),
        dict(damaged, outcome="reset"),
    ]
    for d in broken:
        assert fc.check(case, records, d, repaired), d
    assert fc.check(case, records, damaged, dict(repaired, contactor=[[0, 0]]))
    lost = dict(repaired, inventory={"pending": ["1-2"]})
    assert fc.check(case, records, damaged, lost)                  # not its file
    jcase = dict(case, file="data/sessions.jnl")
    assert fc.check(jcase, records, damaged, lost)                 # not reported
    reported = dict(damaged, storage=dict(ok_storage, raised={"STORAGE_ERROR": 1}))
    assert fc.check(jcase, records, reported, lost) == []

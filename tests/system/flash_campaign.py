"""Damaged-flash boots on a real littlefs image: the campaign of issue 20.

A base image is made once by the real firmware (boot.py, main.py, Station on the fake ESP32,
tests/system/lfsboot.py): three finished sessions kept for a backend that never answered,
a fourth cut by a power cut while charging, the counters, the outbox, a configuration for a
16 A site with its last valid copy. Each case then starts from a copy of that image, damages
it one way (CASES: every persistent file truncated, bit-flipped, replaced by a directory or
by garbage, made not UTF-8, removed, a torn journal; a full flash; a read-only mount;
malformed board files and configurations; repeated crashes with a damaged crash file) and
boots the real boot.py/main.py on it with no EV (the damaged boot); then the damage is
repaired as a technician would (a good board file back, the filler removed, the mount
writable, a power-on) and the station boots again with an EV that asks to charge (the
repaired boot). check() asserts, per case:
  - nothing escaped boot.py or main.py, and the coil was never energised without an EV
    (the contactor pin's levels: never 1; boot.py's first drive of it is "off");
  - no reset nor watchdog expiry; the crash path stops after its documented limit (5);
  - a bounded boot: the station's first control step within BOOT_BOUND_MS of simulated
    time (block erases cost 45 ms each), when the board file allows a station at all;
  - every session record on the image before the damage (pending in the journal, or the
    live session cut by the power cut) is still there after the repaired boot, once; a
    record missing is allowed only where the damage hit the file holding it AND the damaged
    boot reported it (STORAGE_ERROR raised or storage damage counted);
  - an invalid configuration never offers more than the site's 16 A;
  - the repaired station charges again (the contactor closes for the EV in state C).

    python -m tests.system.flash_campaign [--cases N] [--seed S] [--json FILE]

runs N cases (default: all of the generated list, several hundred) and prints the counts;
`make bench-flash` runs it. tests/system/test_flash_campaign.py runs a fixed small sample.
"""
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile

from tools.devicefiles import MICROPYTHON, ROOT, micropython_env

HERE = os.path.dirname(os.path.abspath(__file__))
CONTACTOR = "26"
SITE_MA = 16000
BOOT_BOUND_MS = 5000          # first control step after reset, simulated (watchdog: 8 s)
DAMAGED_RUN_MS = 2000
REPAIRED_RUN_MS = 2500
CRASH_LIMIT = 5               # drivers/bootinfo.py CRASH_LIMIT (docs/board.md)
CONFIG = {"max_current_ma": SITE_MA, "mqtt_host": "127.0.0.1", "mqtt_port": 9,
          "station_id": "cp-lfs"}

# Files that hold session records (a loss there must be reported) and the session each
# holds; every other file's damage must lose nothing.
RECORD_FILES = ("data/sessions.jnl", "data/session.live", "data/session.ckpt")

with open(os.path.join(ROOT, "boards", "reference.json")) as _f:
    BOARD = _f.read()

BAD_BOARDS = (
    ("not JSON", "{\"name\": \"cp\", "),
    ("empty", ""),
    ("null", "null"),
    ("a list", "[1, 2]"),
    ("polarity null", None),            # built from the reference below
    ("polarity \"false\"", None),
    ("pilot pin = contactor pin", None),
    ("not UTF-8", None),
)

BAD_CONFIGS = ("[]", "null", "{\"max_current_ma\": 999999}", "{\"max_current_ma\": \"16A\"}",
               "{\"phases\": 3, \"max_current_ma\": ",
               list(b'{"max_current_ma": 16000, "station_id": "cp-\xff"}'))      # not UTF-8


def _bad_board(label, text):
    if text is not None:
        return text
    b = json.loads(BOARD)
    if label == "polarity null":
        b["contactor"]["active_high"] = None
    elif label == "polarity \"false\"":
        b["contactor"]["active_high"] = "false"
    elif label == "pilot pin = contactor pin":
        b["pilot"]["pwm_pin"] = b["contactor"]["pin"]
    elif label == "not UTF-8":
        return list(json.dumps(b).encode().replace(b"cp-ref-1", b"cp-\xff\xfe"))
    return json.dumps(b)


def _ev_sessions():
    """Three sessions, then a fourth charging when the power fails (end of the run)."""
    ev = []
    t = 200
    for _ in range(3):
        ev += [[t, "B", 220], [t + 200, "C", 220], [t + 1800, "B", 220], [t + 1900, "A", 100000]]
        t += 2300
    ev += [[t, "B", 220], [t + 200, "C", 220]]
    # Past the first small checkpoint (session_checkpoint_s, 10 s): session.ckpt exists too.
    return ev, t + 11500


class Runner:
    def __init__(self, workdir):
        self.workdir = workdir
        self.env = micropython_env()
        self.env["MICROPYPATH"] = HERE + ":" + self.env["MICROPYPATH"]
        self.runs = 0
        self.cpu_s = 0.0            # CPU time of the runs (wall time depends on the load)

    def boot(self, image, scenario):
        """One lfsboot run on `image`; the parsed reports (DEVICERUN, +, LFSBOOT)."""
        self.runs += 1
        sc = dict(scenario, image=image, use_standin=False, brief=True, report_storage=True,
                  devices=True)
        sc.setdefault("adc", {"36": 2500, "39": 3300})
        path = os.path.join(self.workdir, "scenario-%d.json" % self.runs)
        with open(path, "w") as f:
            json.dump(sc, f)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = subprocess.run([MICROPYTHON, os.path.join(HERE, "lfsboot.py"), ROOT, path],
                           cwd=self.workdir, env=self.env, capture_output=True, timeout=600)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu_s += (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        out = r.stdout.decode("utf-8", "replace")
        res = {"stdout": out + r.stderr.decode("utf-8", "replace"), "returncode": r.returncode}
        for ln in out.splitlines():
            for tag in ("DEVICERUN ", "DEVICERUN+ ", "LFSBOOT "):
                if ln.startswith(tag):
                    res.update(json.loads(ln[len(tag):]))
        return res


def make_base(runner):
    """The base image and its inventory."""
    image = os.path.join(runner.workdir, "base.img")
    ev, run_ms = _ev_sessions()
    cfg = json.dumps(CONFIG)
    r = runner.boot(image, {"blocks": 128, "run_ms": run_ms, "ev": ev,
                            "files": {"board.json": BOARD, "data/config.json": cfg,
                                      "data/config.last": cfg}})
    inv = r.get("inventory") or {}
    records = list(inv.get("pending") or [])
    if inv.get("live") and inv["live"] not in records:
        records.append(inv["live"])
    if len(records) < 4 or r.get("outcome") != "time up" or r.get("raised"):
        raise RuntimeError("base image: %r\n%s" % (inv, r["stdout"][-3000:]))
    return image, inv, records


def cases(files, seed=1, limit=None, variants=1):
    """Every damage on every file, the global damages, the board files, the configurations
    and the crash loops; `variants` seeded positions (truncation, bit flip, garbage) per
    file. A list of dicts (label, damage, readonly, rtc_memory, kind, file)."""
    rnd = random.Random(seed)
    out = []
    names = sorted(p for p, size in files.items() if size != "dir")
    for p in names:
        text = p.endswith(".json") or p in ("board.json", "data/config.last", "data/boot.num")
        ops = [("truncate", 0), ("dir", None), ("remove", None)]
        for _ in range(variants):
            ops += [("truncate", rnd.randrange(1, 1000)), ("flip", rnd.randrange(0, 1000)),
                    ("flip", rnd.randrange(0, 1000)), ("garbage", rnd.randrange(1, 1 << 30))]
        if text:
            ops.append(("nonutf8", None))
        if p.endswith(".jnl"):
            ops.append(("torn", None))
        for op, arg in ops:
            out.append({"label": "%s %s%s" % (p, op, "" if arg is None else " %d" % arg),
                        "damage": [[op, p, arg]], "file": p,
                        "kind": "board" if p == "board.json" else "file"})
    journals = [p for p in names if p.endswith(".jnl")]
    for p in journals:
        out.append({"label": "full flash, torn %s" % p, "damage": [["torn", p, None], ["fill", "", None]],
                    "file": p, "kind": "full"})
        out.append({"label": "read-only, torn %s" % p, "damage": [["torn", p, None]],
                    "readonly": True, "file": p, "kind": "readonly"})
    out.append({"label": "full flash", "damage": [["fill", "", None]], "kind": "full"})
    out.append({"label": "read-only", "damage": [], "readonly": True, "kind": "readonly"})
    out.append({"label": "full flash, read-only", "damage": [["fill", "", None]],
                "readonly": True, "kind": "readonly"})
    for label, text in BAD_BOARDS:
        out.append({"label": "board file %s" % label, "kind": "board",
                    "damage": [["write", "board.json", _bad_board(label, text)]]})
    for text in BAD_CONFIGS:
        name = text[:20] if isinstance(text, str) else "not UTF-8"
        out.append({"label": "config %s" % name, "kind": "config",
                    "damage": [["store", "data/config.json", text]]})
        out.append({"label": "config %s, no last copy" % name, "kind": "config",
                    "damage": [["store", "data/config.json", text],
                               ["remove", "data/config.last", None]]})
    crash_text = list(b"reset_cause=hard\nTraceback\nValueError: \xff\xfe\n")
    for n in range(CRASH_LIMIT + 1):
        for what, dmg in (("not UTF-8", [["write", "crash.txt", crash_text]]),
                          ("a directory", [["write", "crash.txt", "x"], ["dir", "crash.txt", None]])):
            out.append({"label": "%d crashes before, crash.txt %s" % (n, what), "kind": "crash",
                        "damage": dmg, "rtc_memory": "cp-crashes:%d" % n})
    if limit is not None and limit < len(out):
        out = rnd.sample(out, limit)
    return out


def _levels(history):
    return [v for _t, v in history or ()]


def lost_records(records, inv):
    """The base's records found nowhere on the image: not pending in the session journal,
    not held by the outbox, not the live checkpoint (closed at a later boot)."""
    have = set(inv.get("pending") or []) | set(inv.get("outbox_sessions") or [])
    if inv.get("live"):
        have.add(inv["live"])
    return [sid for sid in records if sid not in have]


def check(case, records, damaged, repaired):
    """The failures of one case (a list of texts; empty: it passed)."""
    bad = []
    kind = case["kind"]
    for name, r in (("damaged", damaged), ("repaired", repaired)):
        if r.get("raised") or "outcome" not in r:
            bad.append("%s boot: escaped: %s %s" % (name, r.get("raised"), r["stdout"][-800:]))
            return bad
        if r.get("reset_count") or r.get("wdt_expired"):
            bad.append("%s boot: reset (count %s, watchdog %s)" % (name, r.get("reset_count"),
                                                                  r.get("wdt_expired")))
    # Safe from the first instruction: without an EV nothing energises the coil.
    if 1 in _levels(damaged.get("contactor")):
        bad.append("damaged boot energised the coil: %r" % damaged.get("contactor"))
    first = damaged.get("contactor") or []
    if first and first[0][1] != 0:
        bad.append("boot.py's first drive of the coil is not off: %r" % first[:2])
    # Outcome as documented.
    if kind == "board":
        if damaged["outcome"] != "main returned":
            bad.append("bad board file: outcome %s (the REPL without a reset expected)"
                       % damaged["outcome"])
    elif kind == "crash" and int(case["rtc_memory"].split(":")[1]) >= CRASH_LIMIT:
        if damaged["outcome"] != "main returned" or damaged.get("wdt_timeout_ms"):
            bad.append("crash limit: outcome %s" % damaged["outcome"])
        elif "crashes in a row" not in damaged["stdout"]:
            bad.append("crash limit reached without saying why")
    else:
        st = damaged.get("storage")
        if damaged["outcome"] != "time up" or not st:
            bad.append("damaged boot: outcome %s, station %s" % (damaged["outcome"], bool(st)))
        else:
            first_ms = damaged.get("first_step_ms")
            if first_ms is None or first_ms > BOOT_BOUND_MS:
                bad.append("boot not bounded: first step at %s ms" % first_ms)
            if st["max_current_ma"] > SITE_MA:
                bad.append("offers %d mA on a %d mA site (%s)" % (st["max_current_ma"], SITE_MA,
                                                                 st["config_error"]))
            if kind == "config" and not st["config_error"]:
                bad.append("invalid config not reported")
    # Records: kept, or lost only where the damage hit them and the loss was reported.
    inv = repaired.get("inventory") or {}
    now = list(inv.get("pending") or [])
    if len(now) != len(set(now)):
        bad.append("a record twice: %r" % now)
    lost = lost_records(records, inv)
    if lost:
        hit = case.get("file") in RECORD_FILES
        st = damaged.get("storage") or {}
        reported = bool((st.get("raised") or {}).get("STORAGE_ERROR")) or \
            sum((st.get("damage") or {}).values()) > 0
        if not hit:
            bad.append("records lost %r though %s holds none" % (lost, case.get("file")))
        elif not reported:
            bad.append("records lost %r and not reported" % lost)
    # Charging again once repaired.
    if 1 not in _levels(repaired.get("contactor")):
        bad.append("the repaired station does not charge: %s %r" % (
            repaired.get("outcome"), (repaired.get("storage") or {}).get("raised")))
    return bad


def repair(case):
    """What a technician (or a power-on) does after the damage: the repaired boot's
    scenario additions."""
    fix = []
    if case["kind"] == "board":
        fix.append(["write", "board.json", BOARD])     # the technician uploads a good one
    if any(d[0] == "fill" for d in case["damage"]):
        fix.append(["unfill", "", None])
    return {"damage": fix}


def run_case(runner, base, records, case):
    img = os.path.join(runner.workdir, "case.img")
    shutil.copy(base, img)
    sc = {"run_ms": DAMAGED_RUN_MS, "damage": case["damage"],
          "readonly": bool(case.get("readonly")), "first_step": True}
    if case.get("rtc_memory"):
        sc["rtc_memory"] = case["rtc_memory"]
        sc["reset_cause"] = 2                       # HARD: RTC memory kept
    damaged = runner.boot(img, sc)
    rep = dict(repair(case), run_ms=REPAIRED_RUN_MS, first_step=True,
               ev=[[100, "B", 220], [300, "C", 220]])
    repaired = runner.boot(img, rep)
    return damaged, repaired


def campaign(limit=None, seed=1, variants=1, log=print):
    work = tempfile.mkdtemp(prefix="flash-campaign-")
    try:
        runner = Runner(work)
        base, inv, records = make_base(runner)
        todo = cases(inv["files"], seed, limit, variants)
        results = []
        for i, case in enumerate(todo):
            damaged, repaired = run_case(runner, base, records, case)
            bad = check(case, records, damaged, repaired)
            results.append({"label": case["label"], "kind": case["kind"], "failures": bad,
                            "first_step_ms": damaged.get("first_step_ms"),
                            "outcome": damaged.get("outcome"),
                            "lost": lost_records(records, repaired.get("inventory") or {})})
            if log:
                log("%3d/%d %-50s %s" % (i + 1, len(todo), case["label"][:50],
                                         "ok" if not bad else "FAIL: " + "; ".join(bad)[:300]))
        return {"base_records": records, "base_files": inv["files"], "results": results}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def summary(report):
    res = report["results"]
    by_kind = {}
    for r in res:
        k = by_kind.setdefault(r["kind"], [0, 0])
        k[0] += 1
        k[1] += 1 if r["failures"] else 0
    steps = [r["first_step_ms"] for r in res if r["first_step_ms"] is not None]
    return {"boots": 2 * len(res) + 1, "cases": len(res),
            "failed": sum(1 for r in res if r["failures"]),
            "by_kind": {k: {"cases": v[0], "failed": v[1]} for k, v in sorted(by_kind.items())},
            "cases_losing_records": sum(1 for r in res if r["lost"]),
            "records_lost": sum(len(r["lost"]) for r in res),
            "first_step_ms_max": max(steps) if steps else None}


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog="python -m tests.system.flash_campaign")
    p.add_argument("--cases", type=int, default=None, help="a seeded sample of this many")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--variants", type=int, default=3,
                   help="seeded truncations, bit flips and garbage per file (make test: 1)")
    p.add_argument("--json", default="build/bench_flash_campaign.json")
    a = p.parse_args(argv)
    report = campaign(a.cases, a.seed, a.variants)
    s = summary(report)
    os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(dict(report, summary=s), f, indent=1)
    print(json.dumps(s, indent=1))
    for r in report["results"]:
        if r["failures"]:
            print("FAIL %s: %s" % (r["label"], "; ".join(r["failures"])[:500]))
    return 1 if s["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m tools.pilotsim COMMAND

  demo                      the default session (what `make sim` runs)
  run FILE [FILE ...]       play scenario files; summary, Annex A report, JSONL trace
  check FILE [FILE ...]     check scenario files only (exit 2 when one is bad)
  list                      the scenario library
  levels                    CP/PP levels of the circuit model per EV state and fault
  plot TRACE -o PNG         oscilloscope-like picture of a trace (CP, PWM, state, contactor,
                            currents; faults and Annex A limits marked)
  bench FILE --port DEV     play a scenario's EV steps on a hardware pilot simulator

Options for run/demo: --trace PATH (default build/pilotsim/NAME.jsonl), --plot PATH (a PNG
of the run, see plot), --speed N (simulated ms per wall ms at most; 0 = as fast as possible,
the default for run; 5 for demo), --no-broker, --quiet (no live view), --set KEY=VALUE (a
firmware setting over the scenario's; repeatable). `--set backend=ocpp16 --set
ocpp_url=ws://HOST:PORT/PATH --set ocpp_id=ID` points the simulated station at an OCPP 1.6J
central system (no broker then; use --speed 1 or a little more: the central system answers
in wall time).
Exit status: 0 when every Annex A check passes and the scenario's expectations hold; 1 when
one does not; 2 when a scenario file is bad (every error listed, nothing run).
"""
import argparse
import os
import sys

from tools.devicefiles import ROOT
from tools.pilotsim import expect as _expect
from tools.pilotsim import orchestrate
from tools.pilotsim import scenario as _scenario

SCENARIO_DIR = os.path.join(ROOT, "tools", "pilotsim", "scenarios")
DEMO = os.path.join(SCENARIO_DIR, "demo.json")
TRACE_DIR = os.path.join(ROOT, "build", "pilotsim")


def library():
    return sorted(os.path.join(SCENARIO_DIR, f) for f in os.listdir(SCENARIO_DIR)
                  if f.endswith(".json"))


def levels_table():
    """What the model puts on the CP line, ideal and as the board's front end reads it."""
    from firmware import pilot
    from tools.pilotsim.model import FrontEnd, PilotModel, S2_C, S2_D, S2_OPEN
    rows = [("A: no EV", {}), ("B: EV connected", {"s2": S2_OPEN}),
            ("C: charging requested", {"s2": S2_C}), ("D: ventilation requested", {"s2": S2_D}),
            ("B, diode shorted", {"s2": S2_OPEN, "diode_short": True}),
            ("C, CP shorted to PE (E)", {"s2": S2_C, "cp_short_pe": True}),
            ("C, CP wire open", {"s2": S2_C, "cp_open": True}),
            ("C, PE lost", {"s2": S2_C, "pe_loss": True})]
    fe = FrontEnd(seed=1)
    lines = ["%-26s %9s %9s  %9s %9s  %-11s %s" % ("EV / fault (PWM on)", "high mV", "low mV",
                                                   "read hi", "read lo", "classified",
                                                   "PP ohms")]
    for title, attrs in rows:
        m = PilotModel()
        if attrs:
            m.plugged = True
        for k in attrs:
            setattr(m, k, attrs[k])
        m.update()
        hi, lo = fe.measure_cp(m.high_mv), fe.measure_cp(m.low_mv)
        lvl = pilot.LEVEL_NAMES[pilot.classify(hi, lo, True)]
        pp = fe.measure_pp(m.pp_ohms)
        lines.append("%-26s %9d %9d  %9d %9d  %-11s %s" % (
            title, m.high_mv, m.low_mv, hi, lo, lvl, "open" if pp >= 100000 else pp))
    lines.append("EVSE steady -12 V (state F): both plateaus %d mV" % fe.measure_cp(-12000))
    return "\n".join(lines)


def _play(path, args, out):
    sc = _scenario.load(path)
    trace = args.trace
    if trace is None:
        os.makedirs(TRACE_DIR, exist_ok=True)
        trace = os.path.join(TRACE_DIR, sc.name + ".jsonl")
    live = None if args.quiet else orchestrate.LiveView(out)
    for line in orchestrate.fit("== %s: %s" % (sc.name, sc.description), indent=3):
        out.write(line + "\n")
    if args.settings.get("backend") == "ocpp16":
        out.write("   backend: OCPP 1.6J at %s (no broker)\n" % args.settings.get("ocpp_url"))
    elif sc.broker != "none" and (args.no_broker or not orchestrate.broker_available()):
        out.write("   running WITHOUT a broker (%s): no MQTT, backend steps are skipped\n"
                  % ("--no-broker" if args.no_broker else "mosquitto is not installed"))
    res = orchestrate.run(path, trace_path=trace, live=live, speed=args.speed,
                          broker=not args.no_broker, heap=args.heap,
                          extra_config=args.settings or None)
    out.write("\n" + orchestrate.format_summary(res) + "\n")
    problems = _expect.check(res)
    for p in problems:
        out.write("  EXPECTATION FAILED: %s\n" % p)
    out.write("  trace: %s\n" % trace)
    if args.plot and res.ticks():
        from tools.pilotsim import plot
        plot.plot(res.records, args.plot, checks=res.checks)
        out.write("  plot: %s\n" % args.plot)
    out.write("\n")
    return res.ok() and not problems


# What each command needs besides the standard library (installed by `make setup`).
_NEEDS = {"run": ("pymodbus",), "demo": ("pymodbus",), "plot": ("matplotlib",),
          "bench": ("serial",)}


def _missing_modules(args):
    import importlib.util
    needs = list(_NEEDS.get(args.cmd, ()))
    if getattr(args, "plot", None):
        needs.append("matplotlib")
    return [m for m in needs if importlib.util.find_spec(m) is None]


def _load_all(files, out):
    """Check every scenario file; write every error of every bad one. The bad files."""
    bad = []
    for f in files:
        try:
            _scenario.load(f)
        except _scenario.ScenarioError as e:
            out.write("%s\n" % e)
            bad.append(f)
    return bad


def main(argv=None, out=None):
    out = out or sys.stdout
    p = argparse.ArgumentParser(prog="python -m tools.pilotsim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("demo", "run"):
        sp = sub.add_parser(name)
        if name == "run":
            sp.add_argument("files", nargs="+")
        sp.add_argument("--trace")
        sp.add_argument("--plot", metavar="PNG", help="also draw the run (see plot)")
        # The demo is paced so a person can follow the live view (60 s in about 12 s).
        sp.add_argument("--speed", type=int, default=5 if name == "demo" else 0)
        sp.add_argument("--no-broker", action="store_true")
        sp.add_argument("--quiet", action="store_true")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        dest="set", help="a firmware setting over the scenario's (repeatable)")
        sp.add_argument("--heap", default=orchestrate.DEFAULT_HEAP,
                        help="the stand-in's heap (-X heapsize), e.g. 56K for an ESP32's first"
                             " heap area (default %(default)s)")
        # The firmware's runtime. Only the ESP32 stand-in (tools/standin.py) today; the
        # option names it so that `make sim RUNTIME=...` refuses what it cannot run.
        sp.add_argument("--runtime", default="standin", choices=orchestrate.RUNTIMES,
                        help="where the firmware runs: standin, the 32-bit MicroPython"
                             " v1.28.0 unix port with the production image frozen (the only"
                             " one supported; default %(default)s)")
    sp = sub.add_parser("check")
    sp.add_argument("files", nargs="+")
    sub.add_parser("list")
    sub.add_parser("levels")
    sp = sub.add_parser("plot")
    sp.add_argument("trace")
    sp.add_argument("-o", "--output", required=True, metavar="PNG")
    sp = sub.add_parser("bench")
    sp.add_argument("file")
    sp.add_argument("--port", required=True)
    sp.add_argument("--baud", type=int, default=115200)
    args = p.parse_args(argv)
    if args.cmd in ("demo", "run"):
        from tools import setopt
        try:
            args.settings = setopt.parse(args.set)
        except setopt.SetError as e:
            out.write("%s\n" % e)
            return 2
        if setopt.uses_ocpp(args.settings):
            args.no_broker = True       # the OCPP central system is the backend
    missing = _missing_modules(args)
    if missing:
        out.write("python -m tools.pilotsim %s needs %s, which this Python (%s) does not have:"
                  " run `make setup`, then `.venv/bin/python -m tools.pilotsim %s ...`\n"
                  % (args.cmd, ", ".join(missing), sys.executable, args.cmd))
        return 2

    if args.cmd == "check":
        bad = _load_all(args.files, out)
        for f in args.files:
            if f not in bad:
                out.write("%s: ok\n" % f)
        return 2 if bad else 0
    if args.cmd == "list":
        for f in library():
            sc = _scenario.load(f)
            out.write("%-28s %s\n" % (sc.name, sc.description))
        return 0
    if args.cmd == "levels":
        out.write(levels_table() + "\n")
        return 0
    if args.cmd == "plot":
        from tools.pilotsim import plot
        try:
            records = plot.read_trace(args.trace)
        except (OSError, ValueError) as e:
            out.write("%s\n" % e)
            return 2
        plot.plot(records, args.output)
        out.write("plot: %s\n" % args.output)
        return 0
    if args.cmd == "bench":
        if _load_all([args.file], out):
            return 2
        from tools.pilotsim import bench
        return bench.main_play(args.file, args.port, args.baud, out)
    files = [DEMO] if args.cmd == "demo" else args.files
    if len(files) > 1 and args.trace:
        out.write("--trace takes one file; traces go to %s\n" % TRACE_DIR)
        return 2
    # Every file is checked before anything runs: a misspelt name costs no run.
    if _load_all(files, out):
        return 2
    passed = []
    failed = []
    skipped = []
    for f in files:
        name = os.path.basename(f)
        try:
            (passed if _play(f, args, out) else failed).append(name)
        except orchestrate.PeerMissing as e:
            out.write("skipped: %s\n" % e)
            skipped.append(name)
    if len(files) > 1:
        out.write("%d scenarios: %d passed, %d failed%s, %d skipped\n" % (
            len(files), len(passed), len(failed),
            (" (" + ", ".join(failed) + ")") if failed else "", len(skipped)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

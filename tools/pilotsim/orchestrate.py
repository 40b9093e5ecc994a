"""Host side of a simulation (CPython): peers, the firmware process, trace, report.

    result = run("tools/pilotsim/scenarios/basic-session.json", trace_path="t.jsonl")

starts the peers the scenario needs - a real mosquitto (tests/system/mosquitto.py), reached
by the firmware through the runner's lock-step relay (simnet.py), and the pymodbus meter
(tests/system/meter_peer.py) reached through tools/tcpuart.py - then the firmware on the
MicroPython unix port (tools/pilotsim/runner.py), answers its lock-step requests (meter
registers, meter faults), writes the JSONL trace, and analyses it (annexa.py).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from tools.devicefiles import MICROPYTHON, ROOT, micropython_env, mp_cwd
from tools.pilotsim import annexa
from tools.pilotsim import scenario as _scenario

DEFAULT_TIMEOUT_S = 120
METER_START_WH = 1234567     # a meter that has seen use: sessions are differences


class PeerMissing(RuntimeError):
    pass


class SimError(RuntimeError):
    pass


class RunResult:
    def __init__(self, sc):
        self.scenario = sc
        self.records = []
        self.checks = []
        self.returncode = None
        self.stderr = ""
        self.trace_path = None
        self.broker = False
        self.meter = False
        self.notes = []
        self.wall_s = 0.0           # wall time the firmware process ran

    @property
    def end(self):
        return next((r for r in reversed(self.records) if r.get("k") == "end"), None)

    def ticks(self):
        return [r for r in self.records if r.get("k") == "tick"]

    def faults_seen(self):
        seen = []
        for r in self.ticks():
            for f in r["faults"]:
                if f not in seen:
                    seen.append(f)
        return seen

    def states_seen(self):
        seen = []
        for r in self.ticks():
            if r["state"] not in seen:
                seen.append(r["state"])
        return seen

    def ok(self):
        return self.returncode == 0 and self.end is not None and annexa.all_pass(self.checks)


# -- peers -----------------------------------------------------------------------------

# The runner keeps the whole trace's bookkeeping beside the firmware: more than a board's
# heap by default; `--heap 56K` runs it inside an ESP32's first heap area.
DEFAULT_HEAP = "4M"
# Heap the runner's process gets on top of `heap`, for the harness; a ballast block takes
# what the harness leaves (tools/bench_rig.py HarnessRoom). Not a figure.
HARNESS_ROOM_KB = 64
# The runner, started so that the firmware modules the harness uses are imported (and
# counted as the firmware's) before the harness's share is measured.
_LAUNCH = ("import gc\n"
           "import firmware.board, firmware.commands, firmware.config, firmware.faults\n"
           "import firmware.states, firmware.storage, umqtt.simple\n"
           "gc.collect()\n"
           "_start = gc.mem_alloc()\n"
           "from tools.bench_rig import ROOM\n"
           "ROOM.start = _start\n"
           "import sys\n"
           "try:\n"
           "    from tools.pilotsim import runner\n"
           "    runner.main(['runner', %r])\n"
           "except BaseException as e:\n"    # -c prints a traceback to stdout: the trace's
           "    sys.print_exception(e, sys.stderr)\n"     # channel; stderr is the summary's
           "    sys.exit(1)\n")
_pools = {}


def _kb(heap):
    """'56K' or '4M' as KB."""
    h = heap.strip().upper()
    if h.endswith("M"):
        return int(h[:-1]) * 1024
    if h.endswith("K"):
        return int(h[:-1])
    return int(h) // 1024


def _pool(heap):
    """The GC pool of the stand-in at -X heapsize=heap (the heap less its tables)."""
    if heap not in _pools:
        r = subprocess.run([MICROPYTHON, "-X", "heapsize=" + heap, "-c",
                            "import gc\nprint(gc.mem_alloc() + gc.mem_free())"],
                           cwd=mp_cwd(), env=micropython_env(fakes=False), capture_output=True,
                           text=True, timeout=30)
        if r.returncode:
            raise RuntimeError("stand-in heap probe failed: %s" % r.stderr[-800:])
        _pools[heap] = int(r.stdout.strip())
    return _pools[heap]
# Runtimes the firmware side can run on (--runtime, `make sim RUNTIME=`): the ESP32 stand-in.
RUNTIMES = ("standin",)


def broker_available():
    return _broker_module() is not None


def _broker_module():
    try:
        from tests.system import mosquitto
    except ImportError:
        return None
    return mosquitto if mosquitto.available() else None


class _Meter:
    """The pymodbus meter peer and how the simulation drives it."""

    # scenario fault -> meter_peer fault injection (until cleared)
    FAULTS = {"meter_silent": "no_reply", "meter_garbage": "crc"}

    def __init__(self, start_wh):
        from tests.system.meter_peer import MeterPeer
        self.peer = MeterPeer("sdm630", {"voltage_dv": [2300, 2300, 2300],
                                         "current_ma": [0, 0, 0], "power_w": 0,
                                         "import_wh": start_wh, "export_wh": 0})
        self.peer.start()
        self.port = self.peer.port

    def set(self, req):
        self.peer.set_values(voltage_dv=req["voltage_dv"], current_ma=req["current_ma"],
                             power_w=req["power_w"], import_wh=req["import_wh"])

    def fault(self, mode):
        self.peer.clear_faults()
        if mode != "ok":
            self.peer.inject(self.FAULTS[mode])

    def close(self):
        self.peer.stop()


# -- the run ------------------------------------------------------------------------------

def load(path_or_dict):
    if isinstance(path_or_dict, dict):
        return _scenario.parse(path_or_dict, path_or_dict.get("name", "scenario"))
    return _scenario.load(path_or_dict)


def run(path_or_dict, trace_path=None, live=None, speed=0, broker=True, meter=True,
        timeout_s=DEFAULT_TIMEOUT_S, extra_config=None, heap=DEFAULT_HEAP):
    """Play one scenario. `live(record)` sees every record as it arrives. `broker`/`meter`
    False forces running without that peer (steps that need it are then skipped). `heap`:
    the stand-in's `-X heapsize` (56K is an ESP32's first heap area)."""
    sc = load(path_or_dict)
    res = RunResult(sc)
    cleanup = []
    try:
        return _run(sc, res, cleanup, trace_path, live, speed, broker, meter, timeout_s,
                    extra_config, heap)
    finally:
        for fn in reversed(cleanup):
            try:
                fn()
            except Exception:  # noqa: BLE001 - cleanup must go on
                pass


def _run(sc, res, cleanup, trace_path, live, speed, want_broker, want_meter, timeout_s,
         extra_config, heap):
    run_cfg = {"scenario": sc.to_dict(), "speed": speed, "meter_start_wh": METER_START_WH}
    if extra_config:
        run_cfg["scenario"]["config"] = dict(run_cfg["scenario"]["config"], **extra_config)
    tmp = tempfile.mkdtemp(prefix="pilotsim-")
    cleanup.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
    storage = os.path.join(tmp, "data")
    os.makedirs(storage)
    run_cfg["storage"] = storage

    if sc.broker != "none" and want_broker:
        mq = _broker_module()
        if mq is None:
            if sc.broker == "required":
                raise PeerMissing("%s needs a broker and mosquitto is not installed" % sc.name)
            res.notes.append("no broker: mosquitto not installed, running without MQTT")
        else:
            b = mq.Mosquitto()
            b.start()
            cleanup.append(b.close)
            run_cfg["broker_host"] = b.host
            run_cfg["broker_port"] = b.port
            res.broker = True
    elif sc.broker == "required":
        raise PeerMissing("%s needs a broker" % sc.name)
    else:
        res.notes.append("no broker: running without MQTT")
    if not res.broker and sc.no_broker_config:
        # The caller's settings (--set) still win over the scenario's fallback.
        run_cfg["scenario"]["config"] = dict(run_cfg["scenario"]["config"],
                                             **dict(sc.no_broker_config, **(extra_config or {})))
        res.notes.append("without a broker the scenario's no_broker_config applies: %s"
                         % json.dumps(sc.no_broker_config))

    meter = None
    if sc.meter and want_meter:
        try:
            meter = _Meter(METER_START_WH)
        except ImportError as e:
            res.notes.append("no meter peer (%s): running without a meter" % e)
        else:
            cleanup.append(meter.close)
            run_cfg["meter_port"] = meter.port
            res.meter = True

    # The firmware gets the GC pool of `-X heapsize=<heap>`; the runner's own share (its
    # modules, compiled from tools/, the trace bookkeeping, the backend client) is measured
    # in the run and held apart (tools/bench_rig.py HarnessRoom), as a board's hardware
    # takes none of the ESP32's heap.
    run_cfg["firmware_pool"] = _pool(heap)
    run_path = os.path.join(tmp, "run.json")
    with open(run_path, "w") as f:
        json.dump(run_cfg, f)

    # Configured secrets are masked here, in every record, before it is kept, shown or
    # written (the runner writes what the firmware and the broker gave it).
    secrets = _scenario.secret_values(sc, run_cfg["scenario"]["config"])
    trace = open(trace_path, "w") if trace_path else None
    if trace:
        cleanup.append(trace.close)
        res.trace_path = trace_path
    err_path = os.path.join(tmp, "stderr.txt")
    err = open(err_path, "w")
    cleanup.append(err.close)
    proc = subprocess.Popen([MICROPYTHON, "-X", "heapsize=%dK" % (_kb(heap) + HARNESS_ROOM_KB),
                             "-c", _LAUNCH % run_path], cwd=tmp, env=micropython_env(fakes=False),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                            text=True, bufsize=1)
    started = time.monotonic()
    timer = threading.Timer(timeout_s, proc.kill)
    timer.start()
    cleanup.append(timer.cancel)
    cleanup.append(lambda: proc.poll() is None and proc.kill())
    try:
        for line in proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                res.notes.append("firmware output: " + line[:200])
                continue
            if "req" in rec:
                answer = _answer(rec, meter)
                proc.stdin.write(answer + "\n")
                proc.stdin.flush()
                continue
            rec = _scenario.mask(rec, secrets)
            res.records.append(rec)
            if trace:
                trace.write(json.dumps(rec) + "\n")
            if live:
                live(rec)
    finally:
        res.returncode = proc.wait()
        res.wall_s = time.monotonic() - started
        timer.cancel()
        err.close()
        with open(err_path) as f:
            res.stderr = f.read()
    if res.returncode and not timer.is_alive() and res.end is None:
        res.notes.append("firmware process ended with %d" % res.returncode)
    res.checks = annexa.analyse(res.records)
    return res


def _answer(rec, meter):
    req = rec["req"]
    try:
        if req == "meter":
            if meter is not None:
                meter.set(rec)
        elif req == "meter_fault":
            if meter is not None:
                meter.fault(rec["mode"])
        else:
            return "err unknown request %s" % req
    except Exception as e:  # noqa: BLE001 - the firmware side reports it and stops
        return "err %s" % e
    return "ok"


# -- summary -----------------------------------------------------------------------------

def state_times(records):
    """[(state, entered_ms, duration_ms)] in order, from the tick records."""
    out = []
    end = next((r["t"] for r in reversed(records) if r.get("k") == "end"), None)
    for r in records:
        if r.get("k") != "tick":
            continue
        if not out or out[-1][0] != r["state"]:
            out.append([r["state"], r["t"], 0])
    for i, row in enumerate(out):
        nxt = out[i + 1][1] if i + 1 < len(out) else (end if end is not None else row[1])
        row[2] = nxt - row[1]
    return [tuple(r) for r in out]


def mqtt_traffic(records):
    t = {"from_station": [0, 0], "to_station": [0, 0]}
    for r in records:
        if r.get("k") == "mqtt":
            t[r["dir"]][0] += 1
            t[r["dir"]][1] += r["bytes"]
    return t


def session_records(records):
    out = []
    for r in records:
        if (r.get("k") == "mqtt" and r.get("topic") == "record"
                and isinstance(r.get("payload"), dict)):
            p = r["payload"]
            if p.get("kind") == "session" and p.get("id") not in [o.get("id") for o in out]:
                out.append(p)
    return out


def format_summary(res):
    lines = []
    sc = res.scenario
    end = res.end or {}
    lines.append("Summary of %s (%s)" % (sc.name, sc.description or "no description"))
    lines.append("  peers: broker %s, meter %s" % ("mosquitto" if res.broker else "none",
                                                  "pymodbus" if res.meter else "none"))
    for n in res.notes:
        lines.append("  note: " + n)
    lines.append("  states:")
    for st, t, d in state_times(res.records):
        lines.append("    %-12s from %9.3f s  for %8.3f s" % (st, t / 1000, d / 1000))
    totals = {}
    for st, _t, d in state_times(res.records):
        totals[st] = totals.get(st, 0) + d
    lines.append("  time per state: " + ", ".join("%s %.1f s" % (k, v / 1000)
                                                  for k, v in totals.items()))
    lines.append("  energy delivered (simulated EV): %d Wh" % end.get("energy_wh", 0))
    for p in session_records(res.records):
        data = p.get("data", {})
        lines.append("  session %s: %s" % (p.get("id"), _session_line(data)))
    for rec in end.get("unacked_sessions", []):
        if isinstance(rec, dict):
            lines.append("  session %s (not delivered to a backend): %s"
                         % (rec.get("id"), _session_line(rec)))
    faults = res.faults_seen()
    lines.append("  faults seen: %s" % (", ".join(faults) if faults else "none"))
    tr = mqtt_traffic(res.records)
    lines.append("  MQTT: %d messages / %d bytes from the station, %d / %d to it"
                 % (tr["from_station"][0], tr["from_station"][1], tr["to_station"][0],
                    tr["to_station"][1]))
    stats = end.get("stats", {})
    if stats:
        lines.append("  firmware loop: %d iterations, %d meter updates, %d commands"
                     % (stats.get("ticks", 0), stats.get("meter_pushes", 0),
                        stats.get("commands", 0)))
        if stats.get("net_gave_up") or stats.get("meter_gave_up"):
            lines.append("  WARNING: a peer did not answer in time (broker %d, meter %d times):"
                         " this run may not repeat" % (stats.get("net_gave_up", 0),
                                                       stats.get("meter_gave_up", 0)))
        lines.append("  %.1f s simulated in %.1f s of wall time" % (end.get("t", 0) / 1000,
                                                                   res.wall_s))
    if res.returncode:
        lines.append("  firmware process exit code %d" % res.returncode)
        if res.stderr:
            lines.append("  stderr:\n" + res.stderr[-3000:])
    lines.append("")
    lines.append(annexa.format_report(res.checks))
    return "\n".join(lines)


def _session_line(data):
    parts = []
    for key in ("energy_wh", "cost_minor", "currency", "stop_reason", "duration_s",
                "charging_s", "id_tag"):
        if key in data:
            parts.append("%s=%s" % (key, data[key]))
    return ", ".join(parts) if parts else json.dumps(data)[:200]


# -- live view -----------------------------------------------------------------------------

class LiveView:
    """One line per state change and at most one per simulated second, plus scenario steps
    and backend traffic as they happen. Every line fits WIDTH columns (a longer one is
    wrapped, indented under its time)."""

    WIDTH = 80

    def __init__(self, out=None):
        self.out = out or sys.stdout
        self._last_t = None
        self._last_state = None
        self._last_faults = ""

    def __call__(self, r):
        k = r.get("k")
        if k == "start":
            self._w("firmware on the MicroPython unix port, simulated board, tick %d ms"
                    % r["tick_ms"])
            self._w("  broker: %s" % ("mosquitto, through the simulator's lock-step relay"
                                      if r.get("broker") else "none (no MQTT)"))
            self._w("  meter:  %s" % ("pymodbus SDM630 over Modbus RTU-over-TCP"
                                      if r.get("meter") else "none"))
            self._w("  time s state       CP hi/lo V   duty offer contactor   power   energy")
        elif k == "tick":
            if r["state"] == self._last_state and self._last_t is not None \
                    and r["t"] - self._last_t < 1000:
                return
            self._last_t = r["t"]
            self._last_state = r["state"]
            duty = r["duty"]
            duty_s = ("off" if duty < 0 else "+12V" if duty >= 1000 else "-12V" if duty == 0
                      else "%.1f%%" % (duty / 10))
            self._w("%8.2f %-11s %+5.1f/%+5.1f %6s %3dA %-8s %6dW %6dWh" % (
                r["t"] / 1000, r["state"], r["cp_hi"] / 1000, r["cp_lo"] / 1000, duty_s,
                r["offered_ma"] // 1000, "closed" if r["contactor"] else "open",
                r["power_w"], r["energy_wh"]))
            faults = ",".join(r["faults"])
            if faults != self._last_faults:
                self._last_faults = faults
                self._w("%8.2f faults: %s" % (r["t"] / 1000, faults or "none"))
        elif k in ("ev", "fault", "meter"):
            extra = " ".join("%s=%s" % (a, r[a]) for a in r if a not in ("t", "k", "name"))
            self._w("%8.2f >> %s %s %s" % (r["t"] / 1000, k, r["name"], extra))
        elif k == "backend":
            self._w("%8.2f >> backend %s %s" % (r["t"] / 1000, r["name"],
                                                json.dumps(r.get("args", r.get("raw")))))
        elif k == "mqtt" and r.get("topic") == "reply":
            self._w("%8.2f << reply %s" % (r["t"] / 1000, json.dumps(r["payload"])[:140]))
        elif k == "mqtt" and r.get("topic") == "record":
            p = r["payload"]
            if isinstance(p, dict) and p.get("kind") != "telemetry":
                data = p.get("data") if isinstance(p.get("data"), dict) else {}
                if p.get("kind") == "fault":
                    what = "%s %s" % (data.get("fault"),
                                      "raised" if data.get("raised") else "cleared")
                else:
                    what = _session_line(data)
                self._w("%8.2f << record %s %s" % (r["t"] / 1000, p.get("kind"), what[:140]))

    def _w(self, s):
        for line in fit(s, self.WIDTH):
            self.out.write(line + "\n")
        self.out.flush()


def fit(line, width=80, indent=9):
    """A line as lines of at most `width` columns, continuations indented."""
    out = []
    while len(line) > width:
        cut = line.rfind(" ", indent + 1, width + 1)
        if cut <= indent:
            cut = width
        out.append(line[:cut].rstrip())
        line = " " * indent + line[cut:].lstrip()
    out.append(line)
    return out

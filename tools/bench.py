"""Benchmarks: reaction time, allocation, heap, code size, MQTT and Modbus traffic, boot.

    python -m tools.bench            # what `make bench` runs; writes build/bench.json
    python -m tools.bench --quick    # reduced runs (the harness's own test uses it)

Each figure is measured on the real firmware: on the MicroPython unix port, against the real
peers (mosquitto, the pymodbus meter), in simulated time where the figure is about time the
firmware keeps, and in wall time where it is about this machine. docs/performance.md says
how each one is taken, what the targets mean and why a missed one is missed.

The table shows metric, value, target and whether it is met. Timing never fails the run;
the exit status is 1 when a metric could not be measured or a part failed (the error is in
bench.json), the simulator's Annex A cross-check included.
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from tools import deploy
from tools.devicefiles import MICROPYTHON, ROOT, micropython_env
from tools import standin

BUILD = os.path.join(ROOT, "build")
OUT_FILE = os.path.join(BUILD, "bench.json")
# The compiled tree of the run in progress: in the run's temp dir, so runs never share one.
_tree = [None]
MPLIB = standin.MPLIB
# The unix-port side of the benchmarks, compiled with the device files so that the heap
# holds bytecode as on the device (no compiler run at import).
HARNESS = ("tools/__init__.py", "tools/bench_rig.py", "tools/bench_tick.py",
           "tools/bench_session.py", "tools/bench_wall.py", "tools/bench_naive.py",
           "tools/tcpuart.py", "tools/bench_net.py", "tools/pilotsim/__init__.py", "tools/pilotsim/model.py",
           "tools/pilotsim/simboard.py")
MPLIB_FILES = ("umqtt/__init__.py", "umqtt/simple.py")

KB = 1024
STATION_ID = "cp-bench"
PREFIX = "cp"
METER_START_WH = 1234567

# metric -> (comparison, target, how the target reads in the table)
TARGETS = {
    "reaction_ms_max": ("<=", 20, "<= 20 ms"),
    "reaction_ms_max_wall": ("<=", 20, "<= 20 ms"),
    "reaction_ms_flash_busy": ("<=", 100, "<= 100 ms (goal 20)"),
    "safety_tick_alloc_bytes": ("<=", 0, "0 B"),
    "standin_heap_min_bytes": ("<=", 56 * KB, "<= 56 KB (ESP32 first heap area)"),
    "standin_heap_peak_bytes": ("<=", 112 * KB, "<= 112 KB (ESP32 heap, grown)"),
    "heap_data_peak_bytes": ("<=", 40 * KB, "<= 40 KB"),
    "mpy_total_bytes": ("<=", 80 * KB, "<= 80 KB"),
    "mqtt_idle_bytes_per_hour": ("<=", 10 * KB, "<= 10 KB/h"),
    "standin_heap_min_bytes_ocpp": ("<=", 56 * KB, "<= 56 KB (goal, as for MQTT)"),
    "modbus_bytes_per_poll": ("ratio", 1.3, "<= 1.3 x min"),
    "reaction_ms_network_stall": ("<=", 20, "<= 20 ms"),
    "loop_stall_ms_max": ("<=", 10, "<= 10 ms"),
    "property_violations": ("<=", 0, "0"),
}
# Every key bench.json must carry a value for (the order of the table).
METRICS = (
    "reaction_ms_max", "reaction_ms_max_wall", "reaction_ms_flash_busy", "pwm_off_open_ms",
    "safety_tick_alloc_bytes", "safety_tick_us_median",
    "safety_tick_us_p99", "standin_heap_peak_bytes", "heap_data_peak_bytes",
    "standin_heap_min_bytes", "frozen_code_bytes", "mpy_total_bytes",
    "mqtt_idle_bytes_per_hour", "mqtt_idle_bytes_per_hour_baseline", "mqtt_session_bytes",
    "standin_heap_min_bytes_ocpp", "ocpp_frozen_code_bytes", "ocpp_idle_bytes_per_hour",
    "modbus_bytes_per_poll", "modbus_bytes_per_poll_min", "boot_to_ready_ms",
    "reaction_ms_network_stall", "loop_stall_ms_max",
    "property_cases", "property_violations",
)
# Random cases of the charger's safety properties with commands and resets (tools/bench_props.py).
PROP_CASES = {False: 100000, True: 500}

# Annex A sequences that open the contactor "at once" (docs/performance.md).
AT_ONCE = ("c_to_b_open", "c_to_a_open", "cp_open_open", "pe_loss_open", "cp_short_open",
           "diode_fault_open", "rcd_trip_open", "overtemp_stop")
ANNEXA_SCENARIOS = ("basic-session", "cp-open", "pe-loss", "cp-short-pe", "diode-short",
                    "rcd-trip", "overtemp", "ev-overdraw", "pwm-off")


class BenchError(RuntimeError):
    pass


# -- running the unix port ------------------------------------------------------------------

def compile_tree(out_dir, log):
    """mpy-cross the device files (their sizes are mpy_total_bytes) and the harness into
    out_dir, which the unix-port runs then use."""
    sizes, failed = deploy.compile_all(out_dir=out_dir, log=log)
    if failed:
        raise BenchError("mpy-cross failed on %s" % ", ".join(failed))
    _, hfailed = deploy.compile_all(files=list(HARNESS), out_dir=out_dir, log=log)
    for rel in MPLIB_FILES:
        target = os.path.join(out_dir, rel[:-3] + ".mpy")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        r = subprocess.run([deploy.MPY_CROSS, "-o", target, rel], cwd=MPLIB,
                           capture_output=True, text=True)
        if r.returncode:
            hfailed.append(rel)
    if hfailed:
        raise BenchError("mpy-cross failed on %s" % ", ".join(hfailed))
    _tree[0] = out_dir
    return sizes


def device_fs():
    """The stand-in's working directory: empty, as a board's filesystem is of code with the
    frozen image, so that "" on sys.path finds neither the sources nor the tree."""
    path = os.path.join(os.path.dirname(_tree[0]), "devfs")
    os.makedirs(path, exist_ok=True)
    return path


def unix_env():
    # The stand-in: firmware, drivers, umqtt.simple and the harness frozen, as on a
    # production image; the compiled tree is only measured (mpy_total_bytes).
    return micropython_env(fakes=False)


def run_unix(module, run_cfg, tmp, heap_kb=None, handler=None, timeout_s=120, on_line=None):
    """Run `micropython -m module RUN.json` from the compiled tree. Answers its requests
    with handler(record) (-> "ok"). Returns (returncode, result, stderr); a "failed" line
    from the run is appended to stderr."""
    path = os.path.join(tmp, "run-%s.json" % module.rsplit(".", 1)[-1])
    with open(path, "w") as f:
        json.dump(run_cfg, f)
    cmd = [MICROPYTHON]
    if heap_kb:
        cmd += ["-X", "heapsize=%dK" % heap_kb]
    cmd += ["-m", module, path]
    err_path = path + ".stderr"
    result = None
    failed = None
    with open(err_path, "w") as err:
        # cwd without the sources: "" on sys.path must not shadow the frozen modules.
        proc = subprocess.Popen(cmd, cwd=device_fs(), env=unix_env(), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if on_line is not None:
                    on_line(rec)
                if "req" in rec:
                    answer = handler(rec) if handler else "ok"
                    proc.stdin.write(answer + "\n")
                    proc.stdin.flush()
                elif "result" in rec:
                    result = rec["result"]
                elif "failed" in rec:
                    failed = rec
        finally:
            rc = proc.wait()
            timer.cancel()
    with open(err_path) as f:
        stderr = f.read()
    if failed is not None:
        stderr += "\n%s (link: %s; faults: %s; service error: %s)" % (
            failed["failed"], failed["mqtt_last_error"], ", ".join(failed["faults"]) or "none",
            failed.get("service_error"))
    return rc, result, stderr


def _need(rc, result, stderr, what):
    if rc or result is None:
        raise BenchError("%s failed (exit %s): %s" % (what, rc, stderr.strip()[-1500:]))
    return result


# -- peers ----------------------------------------------------------------------------------

class Peers:
    """mosquitto behind a byte-counting relay, the pymodbus meter, a backend that acks
    session records, and a black-hole listener."""

    def __init__(self):
        from tests.system import mosquitto
        from tests.system.meter_peer import MeterPeer
        from tools.pilotsim.netproxy import NetProxy
        if not mosquitto.available():
            raise BenchError("mosquitto is not installed (tools/setup.sh installs it)")
        self._stack = []
        try:
            self._start(mosquitto, MeterPeer, NetProxy)
        except Exception:
            self.close()
            raise

    def _start(self, mosquitto, MeterPeer, NetProxy):
        self.broker = mosquitto.Mosquitto()
        self.broker.start()
        self._stack.append(self.broker.close)
        self.relay = NetProxy(self.broker.port)
        self._stack.append(self.relay.close)
        self.meter = MeterPeer("sdm630", self._meter_values(0, 0, METER_START_WH))
        self.meter.start()
        self._stack.append(self.meter.stop)
        self.hole = mosquitto.BlackHole()
        self._stack.append(self.hole.close)
        self.acks = 0
        self.marks = {}
        self._backend = self._start_backend()

    @staticmethod
    def _meter_values(current_ma, power_w, import_wh):
        return {"voltage_dv": [2300, 2300, 2300], "current_ma": [current_ma] * 3,
                "power_w": power_w, "import_wh": import_wh, "export_wh": 0}

    def _start_backend(self):
        import paho.mqtt.client as mqtt
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-backend")
        base = "%s/%s/" % (PREFIX, STATION_ID)

        def on_message(client, _userdata, msg):
            try:
                rec = json.loads(msg.payload)
            except ValueError:
                return
            if isinstance(rec, dict) and "id" in rec:
                client.publish(base + "ack", json.dumps({"v": 1, "ids": [rec["id"]]}))
                self.acks += 1

        def on_connect(client, *_args):
            client.subscribe(base + "record")

        c.on_message = on_message
        c.on_connect = on_connect
        c.connect(self.broker.host, self.broker.port, keepalive=60)
        c.loop_start()
        self._stack.append(lambda: (c.loop_stop(), c.disconnect()))
        return c

    def reset_meter(self):
        self.meter.set_values(**self._meter_values(0, 0, METER_START_WH))

    def counters(self):
        return {"up": self.relay.bytes_up, "down": self.relay.bytes_down,
                "modbus_rx": self.meter.rx_bytes, "modbus_tx": self.meter.tx_bytes,
                "modbus_requests": self.meter.requests}

    def handle(self, rec):
        req = rec["req"]
        if req == "mark":
            self.marks[rec["name"]] = self.counters()
        elif req == "command":
            # A backend command over the broker, as a CPO sends it (docs/mqtt.md).
            self._backend.publish("%s/%s/cmd" % (PREFIX, STATION_ID), json.dumps(rec["cmd"]))
        elif req == "meter":
            self.meter.set_values(current_ma=[rec["current_ma"]] * 3, power_w=rec["power_w"],
                                  import_wh=rec["import_wh"])
        else:
            return "err unknown request %s" % req
        return "ok"

    def delta(self, a, b):
        x, y = self.marks[a], self.marks[b]
        return {k: y[k] - x[k] for k in x}

    def station_config(self, extra=None):
        cfg = {"station_id": STATION_ID, "mqtt_prefix": PREFIX, "mqtt_host": "127.0.0.1",
               "mqtt_port": self.relay.port}
        cfg.update(extra or {})
        return cfg

    def close(self):
        for fn in reversed(self._stack):
            try:
                fn()
            except Exception:  # noqa: BLE001 - cleanup goes on
                pass


# -- the parts --------------------------------------------------------------------------------

def part_mpy(sizes):
    files = {p[:-3] + ".mpy": s for p, s in sizes}
    frozen = standin.frozen_sizes()
    return ({"mpy_total_bytes": sum(files.values()), "frozen_code_bytes": sum(frozen.values())},
            {"files": len(files), "sizes": files, "frozen_sizes": frozen})


def part_tick(tmp, quick):
    storage = os.path.join(tmp, "tick")
    os.makedirs(storage, exist_ok=True)
    cmd = [MICROPYTHON, "-m", "tools.bench_tick", storage] + (["quick"] if quick else [])
    r = subprocess.run(cmd, cwd=device_fs(), env=unix_env(), capture_output=True, text=True,
                       timeout=300)
    if r.returncode:
        raise BenchError("bench_tick failed: %s" % r.stderr[-1500:])
    out = json.loads(r.stdout.strip().splitlines()[-1])
    reaction = out["reaction"]
    missing = [s for s in AT_ONCE if s not in reaction]
    if missing:
        raise BenchError("reaction: no figure for %s" % ", ".join(missing))
    alloc = out["alloc"]
    if alloc["probe_bytes"] <= 0 or not alloc["probe_locked_error"]:
        raise BenchError("the allocation probe was not detected: the method measures nothing")
    if alloc["heap_lock_failed_phases"]:
        per_tick = max(alloc["bytes_per_tick"], 1)    # heap_lock saw an allocation
    else:
        per_tick = alloc["bytes_per_tick"]
    metrics = {
        "reaction_ms_max": max(reaction[s]["max_ms"] for s in AT_ONCE),
        "pwm_off_open_ms": out["pwm_off"]["measured_ms"],
        "safety_tick_alloc_bytes": per_tick,
        "safety_tick_us_median": out["timing"]["median_us"],
        "safety_tick_us_p99": out["timing"]["p99_us"],
    }
    detail = {"reaction": {s: {k: reaction[s][k] for k in ("title", "max_ms", "min_ms",
                                                          "by_phase")} for s in AT_ONCE},
              "phases_ms": out["phases_ms"], "pwm_off": out["pwm_off"], "alloc": alloc,
              "timing": out["timing"]}
    return metrics, detail


def part_flash(quick):
    """C->B while the station writes records, on a flash with NOR erase times
    (tools/bench_flash.py, tools/flash_timing.py), in simulated ms."""
    cmd = [MICROPYTHON, "-m", "tools.bench_flash"] + (["quick"] if quick else [])
    r = subprocess.run(cmd, cwd=device_fs(), env=micropython_env(fakes=True),
                       capture_output=True, text=True, timeout=300)
    if r.returncode:
        raise BenchError("bench_flash failed: %s" % r.stderr[-1500:])
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return {"reaction_ms_flash_busy": out["reaction_ms_max"]}, out


# Heap the session's process gets on top of the figure under test, for the harness (the
# SimBoard, the pilot model, the TCP UART, the bench's channel); what the harness does not
# take is held by a ballast block, so the firmware has the pool of `-X heapsize=<figure>`
# (tools/bench_rig.py HarnessRoom). Not a figure: the harness is measured in every run.
HARNESS_ROOM_KB = 16
_pools = {}


def heap_pool(kb):
    """The GC pool (gc.mem_alloc() + gc.mem_free()) of the stand-in at -X heapsize=kb K:
    the heap less the allocation and finaliser tables."""
    if kb not in _pools:
        r = subprocess.run([MICROPYTHON, "-X", "heapsize=%dK" % kb, "-c",
                            "import gc\nprint(gc.mem_alloc() + gc.mem_free())"],
                           cwd=device_fs(), env=unix_env(), capture_output=True, text=True,
                           timeout=30)
        if r.returncode:
            raise BenchError("stand-in heap probe failed: %s" % r.stderr[-800:])
        _pools[kb] = int(r.stdout.strip())
    return _pools[kb]


def _session_run(peers, tmp, heap_kb, measure, quick, tag):
    """The bench's session with `heap_kb` KB for the firmware (measure: at that heap with
    the harness in it, the collector read around every step)."""
    storage = os.path.join(tmp, "session-%s" % tag)
    shutil.rmtree(storage, ignore_errors=True)
    os.makedirs(storage)
    peers.reset_meter()
    peers.marks = {}
    run = {"mode": "session", "storage": storage, "config": peers.station_config(),
           "meter_port": peers.meter.port, "measure_heap": measure,
           "meter_start_wh": METER_START_WH, "charge_s": 20 if quick else 120}
    process_kb = heap_kb
    if not measure:
        run["firmware_pool"] = heap_pool(heap_kb)
        process_kb = heap_kb + HARNESS_ROOM_KB
    return run_unix("tools.bench_session", run, tmp, heap_kb=process_kb, handler=peers.handle)


def firmware_code_heap():
    """Heap taken by importing the firmware's modules alone (their bytecode, constants and
    module objects), from the compiled tree."""
    code = ("import gc\ngc.collect()\na = gc.mem_alloc()\n"
            "import firmware.station, firmware.mqtt_link, firmware.meter_service\n"
            "gc.collect()\nprint(gc.mem_alloc() - a)\n")
    r = subprocess.run([MICROPYTHON, "-X", "heapsize=4M", "-c", code], cwd=device_fs(),
                       env=unix_env(), capture_output=True, text=True, timeout=30)
    if r.returncode:
        raise BenchError("firmware import failed: %s" % r.stderr[-800:])
    return int(r.stdout.strip())


def part_session(peers, tmp, quick, log):
    """standin_heap_peak_bytes (at 112 KB, the ESP32's grown heap, or the next power of two
    that completes), heap_data_peak_bytes, mqtt_session_bytes."""
    heap_kb = 112
    notes = []
    while True:
        rc, result, stderr = _session_run(peers, tmp, heap_kb, True, quick, "peak")
        if rc == 0 and result is not None:
            break
        last = stderr.strip().splitlines()[-1:] or ["exit %s" % rc]
        notes.append("does not complete with -X heapsize=%dK: %s" % (heap_kb, last[0]))
        if heap_kb >= 2048:
            raise BenchError("session failed: %s" % stderr[-1500:])
        heap_kb *= 2
    d = peers.delta("plug", "acked")
    peak = max(result["heap_loop_peak"], result["heap_construction_peak"])
    code = result["heap_code"]
    metrics = {"standin_heap_peak_bytes": peak, "heap_data_peak_bytes": peak - code,
               "mqtt_session_bytes": d["up"] + d["down"]}
    detail = {"heap_kb": heap_kb, "heap_live_peak_bytes": result["heap_live_peak"],
              "heap_harness_bytes": result["heap_harness"],
              "heap_firmware_live_peak_bytes": result["heap_live_peak"] - result["heap_harness"],
              "heap_loop_peak_bytes": result["heap_loop_peak"],
              "heap_loop_peak_at_sim_ms": result["heap_loop_peak_at_ms"],
              "heap_construction_peak_bytes": result["heap_construction_peak"],
              "heap_code_bytes": code, "heap_code_firmware_bytes": firmware_code_heap(),
              "heap_data_live_peak_bytes": result["heap_live_peak"] - code,
              "heap_end_alloc": result["heap_end_alloc"], "sim_ms": result["sim_ms"],
              "iterations": result["iterations"], "energy_wh": result["energy_wh"],
              "charge_s": 20 if quick else 120,
              "mqtt_session_up": d["up"], "mqtt_session_down": d["down"],
              "mqtt_link_stats": result["mqtt"], "faults_at_end": result["faults"],
              "notes": notes}
    log("  session: heap peak %d B (code %d B, data %d B) at %d KB, MQTT %d B"
        % (peak, code, peak - code, heap_kb, metrics["mqtt_session_bytes"]))
    return metrics, detail


def part_heap_min(peers, tmp, quick, upper_kb, live_peak, step_peak, log):
    """Smallest heap (KB) for the firmware with which the session completes (normal GC;
    the harness held apart: _session_run). live_peak, step_peak: the firmware's."""
    step = 8 if quick else 1
    tried = {}

    def completes(kb):
        rc, result, stderr = _session_run(peers, tmp, kb, False, quick, "min")
        ok = rc == 0 and result is not None
        why = "completes" if ok else (stderr.strip().splitlines()[-1:] or ["exit %s" % rc])[0]
        tried[kb] = why
        log("  heap %d KB: %s" % (kb, why))
        return ok

    lo = max(4, live_peak // KB - 1)            # below the live heap it cannot work
    hi = upper_kb                                # completed in the peak run
    guess = step_peak // KB + 8
    if lo < guess < hi and completes(guess):
        hi = guess
    while hi - lo > step:
        mid = (lo + hi) // 2
        if completes(mid):
            hi = mid
        else:
            lo = mid
    return {"standin_heap_min_bytes": hi * KB}, {"resolution_kb": step, "tried_kb": tried}


def modbus_min_bytes(meter_map):
    """The fewest bytes on the wire that read every register the map needs: requests are
    contiguous ranges that may bridge a gap only where the meter allows it (max_gap), each
    at most max_regs long; a request costs 8 bytes, its reply 5 + 2 per register. Dynamic
    programming over the registers in address order (a cover of points on a line by
    intervals is optimal among consecutive groups)."""
    from firmware.meters import REPLY_OVERHEAD_BYTES, REQUEST_BYTES
    items = sorted((a, w) for a, w, _q, _c, _m, _d in meter_map.items)
    n = len(items)
    inf = float("inf")
    best = [0] + [inf] * n
    for j in range(1, n + 1):           # items[0:j] covered, the last request ends at j-1
        for i in range(j - 1, -1, -1):  # ... and starts at item i
            if i < j - 1 and items[i + 1][0] - (items[i][0] + items[i][1]) > meter_map.max_gap:
                break
            span = items[j - 1][0] + items[j - 1][1] - items[i][0]
            if span > meter_map.max_regs:
                break
            cost = best[i] + REQUEST_BYTES + REPLY_OVERHEAD_BYTES + 2 * span
            if cost < best[j]:
                best[j] = cost
    blocks = []
    for a, w in items:
        if blocks and blocks[-1][1] == a:
            blocks[-1][1] = a + w
        else:
            blocks.append([a, a + w])
    per_block = sum(REQUEST_BYTES + REPLY_OVERHEAD_BYTES + 2 * (e - s) for s, e in blocks)
    return best[n], per_block, len(blocks)


IDLE_STEP_MS = 100
IDLE_S = {False: 3600, True: 900}           # simulated seconds counted (full, --quick)
WALL_TRIALS = {False: 30, True: 4}


def _idle_run(peers, tmp, idle_s, extra, tag):
    storage = os.path.join(tmp, "idle-" + tag)
    os.makedirs(storage, exist_ok=True)
    peers.reset_meter()
    peers.marks = {}
    run = {"mode": "idle", "storage": storage, "config": peers.station_config(extra),
           "meter_port": peers.meter.port, "idle_s": idle_s, "warmup_s": 70,
           "idle_step_ms": IDLE_STEP_MS}
    result = _need(*run_unix("tools.bench_session", run, tmp, handler=peers.handle,
                             timeout_s=300), what="idle run")
    d = peers.delta("idle_start", "idle_end")
    return result, d, (d["up"] + d["down"]) * 3600000 / result["idle_sim_ms"]


def part_idle(peers, tmp, quick, log):
    from firmware import config
    from firmware.meters import load_map
    idle_s = IDLE_S[quick]
    result, d, per_hour = _idle_run(peers, tmp, idle_s, None, "default")
    wire = d["up"] + d["down"]
    link = result["link_sent"] + result["link_received"]
    polls = result["meter_cycles"] - result["meter_failed"]
    if polls <= 0:
        raise BenchError("no meter poll completed in the idle run")
    mmap = load_map(config.default("meter_map"))
    best, per_block, blocks = modbus_min_bytes(mmap)
    metrics = {
        "mqtt_idle_bytes_per_hour": round(per_hour),
        "modbus_bytes_per_poll": round((d["modbus_rx"] + d["modbus_tx"]) / polls, 1),
        "modbus_bytes_per_poll_min": best,
    }
    detail = {"idle_sim_s": result["idle_sim_ms"] / 1000, "idle_step_ms": IDLE_STEP_MS,
              "wire_up": d["up"], "wire_down": d["down"],
              "link_counted_bytes": link, "link_minus_wire": link - wire,
              "pings": result["pings"], "telemetry_sent": result["telemetry_sent"],
              "events_sent": result["events_sent"], "records_sent": result["records_sent"],
              "reconnects": result["reconnects"],
              "modbus": {"map": mmap.name, "polls": polls, "failed": result["meter_failed"],
                         "requests": d["modbus_requests"],
                         "requests_per_poll": result["meter_requests_per_poll"],
                         "wire_bytes": d["modbus_rx"] + d["modbus_tx"],
                         "plan_bytes": result["meter_plan_bytes"],
                         "min_bytes": best, "one_request_per_block_bytes": per_block,
                         "needed_blocks": blocks,
                         "firmware_min_bytes": mmap.min_bytes(),
                         "ratio": round(metrics["modbus_bytes_per_poll"] / best, 2)}}
    log("  idle: %d B on the wire over %.0f simulated s -> %d B/h; Modbus %.1f B/poll"
        % (wire, result["idle_sim_ms"] / 1000, metrics["mqtt_idle_bytes_per_hour"],
           metrics["modbus_bytes_per_poll"]))
    return metrics, detail


OCPP_IDLE_S = {False: 3600, True: 300}      # simulated seconds counted (full, --quick)


def part_ocpp(tmp, quick, log):
    """The OCPP 1.6J backend (tools/bench_ocpp.py): its smallest heap, its frozen code and
    its idle traffic, against the `ocpp` library's central system."""
    from tools import bench_ocpp
    frozen = bench_ocpp.frozen_bytes(standin.frozen_sizes())
    heap, heap_detail = bench_ocpp.heap_min(tmp, quick, log)
    idle, idle_detail = bench_ocpp.idle_bytes_per_hour(tmp, OCPP_IDLE_S[quick])
    log("  OCPP: heap min %d KB, frozen %d B, idle %d B/h (%d pings, %d heartbeats)"
        % (heap // KB, frozen, idle, idle_detail["pings"], idle_detail["heartbeats"]))
    return ({"standin_heap_min_bytes_ocpp": heap, "ocpp_frozen_code_bytes": frozen,
             "ocpp_idle_bytes_per_hour": idle}, {"heap": heap_detail, "idle": idle_detail})


def part_naive(peers, tmp, quick):
    storage = os.path.join(tmp, "naive")
    os.makedirs(storage, exist_ok=True)
    peers.marks = {}
    seconds = IDLE_S[quick]
    cfg = peers.station_config()
    run = {"storage": storage, "config": cfg, "seconds": seconds}
    result = _need(*run_unix("tools.bench_naive", run, tmp, handler=peers.handle),
                   what="naive client")
    d = peers.delta("naive_start", "naive_end")
    wire = d["up"] + d["down"]
    return ({"mqtt_idle_bytes_per_hour_baseline": round(wire * 3600 / seconds)},
            dict(result, wire_bytes=wire, seconds=seconds))


def part_wall(peers, tmp, quick):
    storage = os.path.join(tmp, "wall")
    os.makedirs(storage, exist_ok=True)
    peers.reset_meter()
    accepted0 = len(peers.hole.accepted)
    cfg = {"station_id": STATION_ID, "mqtt_host": "127.0.0.1", "mqtt_port": peers.hole.port,
           "mqtt_connect_timeout_ms": 500, "mqtt_backoff_min_ms": 100,
           "mqtt_backoff_max_s": 1, "b_to_c_debounce_ms": 0,
           "mqtt_boot_spread_s": 0}          # connect at once: the black hole is the test
    run = {"mode": "wall", "storage": storage, "config": cfg,
           "meter_port": peers.meter.port, "trials": WALL_TRIALS[quick]}
    result = _need(*run_unix("tools.bench_wall", run, tmp, timeout_s=240),
                   what="wall-clock reaction")
    us = sorted(result["reactions_us"])
    if not us:
        raise BenchError("no wall-clock reaction measured")
    accepted = len(peers.hole.accepted) - accepted0
    if accepted < 1:
        raise BenchError("the black-holed broker saw no connection: MQTT was not exercised")
    by_kind = {}
    for k, r in zip(result["kinds"], result["reactions_us"]):
        name = ("ev_stops", "unplug")[k]
        by_kind[name] = max(by_kind.get(name, 0), r / 1000)
    detail = {"trials": len(us), "median_ms": us[len(us) // 2] / 1000, "max_ms_by_kind": by_kind,
              "p90_ms": us[(len(us) * 9) // 10] / 1000, "min_ms": us[0] / 1000,
              "max_ms": us[-1] / 1000, "late_steps": result["late_steps"],
              "longest_step_ms": result["longest_step_us"] / 1000,
              "longest_step_at_iteration": result["longest_step_at"],
              "iterations": result["iterations"],
              "black_hole_connections": accepted,
              "mqtt": {k: result[k] for k in ("mqtt_state", "mqtt_attempts", "mqtt_failures",
                                              "mqtt_last_error")},
              "meter_cycles": result["meter_cycles"], "config": cfg}
    return {"reaction_ms_max_wall": round(us[-1] / 1000, 2)}, detail


def part_net(tmp, quick):
    """reaction_ms_network_stall and loop_stall_ms_max: the station's own loop on the real
    clock while the network stalls as the ESP32 port does (tools/bench_net.py), in each
    network state. loop_stall_ms_max covers the iterations that began with the contactor
    closed; the deferred TLS handshake (2 s of CPU, contactor open) is in the detail."""
    from tools import bench_net
    # The station's files on a RAM filesystem where the host has one: on this shared VM an
    # ext4 rename or append takes 1-4 ms and up to 40 ms under load (writeback of the
    # replaced file), a cost of the host's disk, not of the firmware's loop; the ESP32's
    # own flash time is the NOR model of part_flash (docs/performance.md).
    ram = "/dev/shm"
    on_ram = os.path.isdir(ram) and os.access(ram, os.W_OK)
    storage = tempfile.mkdtemp(prefix="bench-net-", dir=ram) if on_ram \
        else os.path.join(tmp, "net")
    os.makedirs(storage, exist_ok=True)
    # --quick (the harness's own test): two states, to keep `make test` short.
    states = ["dns_down", "half_open"] if quick else list(bench_net.STATES)
    run = {"storage": storage, "states": states,
           "trials": 2 if quick else 6, "settle_ms": 500 if quick else 8000}
    path = os.path.join(tmp, "run-net.json")
    with open(path, "w") as f:
        json.dump(run, f)
    try:
        r = subprocess.run([MICROPYTHON, "-m", "tools.bench_net", path], cwd=device_fs(),
                           env=unix_env(), capture_output=True, text=True, timeout=600)
    finally:
        if on_ram:
            shutil.rmtree(storage, ignore_errors=True)
    if r.returncode:
        raise BenchError("bench_net failed: %s" % r.stderr[-1500:])
    out = json.loads(r.stdout.strip().splitlines()[-1])["result"]
    for state, x in out.items():
        if len(x["reactions_ms"]) < run["trials"]:
            raise BenchError("%s: too few reactions" % state)
    for x in out.values():
        x["storage"] = "tmpfs (%s)" % ram if on_ram else "the run's temp dir"
    return ({"reaction_ms_network_stall": max(x["reaction_ms_max"] for x in out.values()),
             "loop_stall_ms_max": max(x["loop_stall_ms_max"] for x in out.values())},
            out)


def part_boot(peers, tmp, quick):
    storage = os.path.join(tmp, "boot")
    os.makedirs(storage, exist_ok=True)
    run = {"mode": "boot", "storage": storage,
           "config": peers.station_config(), "meter_port": peers.meter.port}
    path = os.path.join(tmp, "run-boot.json")
    with open(path, "w") as f:
        json.dump(run, f)
    runs = []
    n = 2 if quick else 6
    for i in range(n):
        t0 = time.monotonic()
        proc = subprocess.Popen([MICROPYTHON, "-m", "tools.bench_wall", path], cwd=device_fs(),
                                env=unix_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        timer = threading.Timer(30, proc.kill)
        timer.start()
        try:
            line = proc.stdout.readline()
            t1 = time.monotonic()
            _, err = proc.communicate()
        finally:
            timer.cancel()
        try:
            ready = json.loads(line)["ready"]
        except (ValueError, KeyError):
            raise BenchError("boot run %d: no ready line (exit %s): %s"
                             % (i, proc.returncode, err[-800:]))
        total_ms = (t1 - t0) * 1000 - ready["ready_to_line_us"] / 1000
        if i == 0:
            continue        # warm-up: the first run fills the page cache and the storage
        runs.append(dict(ready, process_to_ready_ms=round(total_ms, 2)))
    totals = sorted(r["process_to_ready_ms"] for r in runs)
    return ({"boot_to_ready_ms": round(statistics.median(totals), 1)},
            {"runs": runs, "max_ms": totals[-1], "min_ms": totals[0]})


def part_annexa(quick):
    """The simulator's Annex A report over its scenario library (cross-check)."""
    from tools.pilotsim import orchestrate
    from tools.pilotsim.__main__ import SCENARIO_DIR
    names = ("rcd-trip",) if quick else ANNEXA_SCENARIOS
    out = {}
    failed = []
    for name in names:
        path = os.path.join(SCENARIO_DIR, name + ".json")
        try:
            res = orchestrate.run(path, broker=False)
        except orchestrate.PeerMissing:
            res = orchestrate.run(path)         # the scenario needs its broker
        if res.end is None or res.returncode:
            failed.append("%s: the run did not finish (exit %s): %s"
                          % (name, res.returncode, res.stderr.strip()[-300:]))
        for c in res.checks:
            if not c.ok:
                # A check that never completed ("never opened") has no time: it is a
                # failure all the same.
                failed.append("%s in %s" % (c.seq, name))
            if c.measured_ms is None:
                continue
            if c.seq in AT_ONCE or c.seq in ("overcurrent_stop", "pwm_off_open"):
                prev = out.get(c.seq)
                if prev is None or c.measured_ms > prev["measured_ms"]:
                    out[c.seq] = {"measured_ms": c.measured_ms, "limit": c.limit,
                                  "ok": c.ok, "scenario": name}
    if failed:
        raise BenchError("Annex A cross-check failed: %s" % "; ".join(failed))
    return {}, {"checks": out, "failed": failed, "scenarios": list(names)}


def part_props(quick):
    """The charger's safety invariants over random EV behaviour, faults, backend commands
    and resets (tools/bench_props.py)."""
    from tools import bench_props
    return bench_props.bench(PROP_CASES[quick])


# -- context, table, main ----------------------------------------------------------------------

def _version(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    return (r.stdout or r.stderr).strip().splitlines()[0] if (r.stdout or r.stderr) else None


def context():
    from tests.system import mosquitto
    try:
        import pymodbus
        pymodbus_version = pymodbus.__version__
    except ImportError:
        pymodbus_version = None
    return {
        "cpu_count": os.cpu_count(),
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "machine": platform.machine(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "micropython": _version([MICROPYTHON, "-c", "import sys; print(sys.version, "
                                 "sys.implementation.version, sys.implementation._machine)"]),
        "mpy_cross": _version([deploy.MPY_CROSS, "--version"]),
        "mosquitto": _version([mosquitto.MOSQUITTO, "-h"]),
        "pymodbus": pymodbus_version,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def verdicts(metrics):
    out = {}
    for key, (op, target, _text) in TARGETS.items():
        v = metrics.get(key)
        if v is None:
            out[key] = None
        elif op == "ratio":
            m = metrics.get("modbus_bytes_per_poll_min")
            out[key] = None if not m else v <= target * m
        else:
            out[key] = v <= target
    return out


def _fmt(key, v):
    if v is None:
        return "NOT MEASURED"
    if key.endswith("_bytes") or key.endswith("_bytes_ocpp") or key.endswith("_per_hour") \
            or key.endswith("_baseline") \
            or key.endswith("_per_poll") or key.endswith("_per_poll_min"):
        return "%s B" % (("%.1f" % v) if isinstance(v, float) and v != int(v) else "%d" % v)
    if key.endswith("_ms") or "_ms_" in key:
        return "%s ms" % v
    if key.endswith("_us_median") or key.endswith("_us_p99"):
        return "%s us" % v
    return str(v)


def table(metrics, met):
    rows = [("metric", "value", "target", "met?")]
    for key in METRICS:
        t = TARGETS.get(key)
        ok = met.get(key)
        rows.append((key, _fmt(key, metrics.get(key)), t[2] if t else "-",
                     "-" if t is None else ("yes" if ok else ("NO" if ok is False else "?"))))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def exit_status(missing, errors):
    """1 when a metric could not be measured or a part failed (its reason is in errors)."""
    return 1 if missing or errors else 0


def main(argv=None, out=None):
    out = out or sys.stdout
    p = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="reduced runs (seconds, not minutes)")
    p.add_argument("--out", default=OUT_FILE, help="where bench.json goes")
    args = p.parse_args(argv)

    def log(msg):
        out.write(msg + "\n")
        out.flush()

    started = time.monotonic()
    metrics = {}
    details = {}
    errors = {}
    tmp = tempfile.mkdtemp(prefix="bench-")
    peers = None

    def part(name, fn, *a):
        t = time.monotonic()
        log("%s ..." % name)
        try:
            m, d = fn(*a)
        except Exception as e:  # noqa: BLE001 - reported as "not measured", the rest goes on
            errors[name] = "%s: %s" % (type(e).__name__, e)
            log("  FAILED: %s" % errors[name])
            return None
        metrics.update(m)
        details[name] = d
        details.setdefault("wall_s", {})[name] = round(time.monotonic() - t, 1)
        return d

    try:
        sizes = None
        try:
            sizes = compile_tree(os.path.join(tmp, "mpy"), lambda s: None)
        except BenchError as e:
            errors["mpy"] = str(e)
        if sizes is not None:
            part("mpy", part_mpy, sizes)
            part("tick", part_tick, tmp, args.quick)
            part("flash", part_flash, args.quick)
            try:
                peers = Peers()
            except Exception as e:  # noqa: BLE001
                errors["peers"] = "%s: %s" % (type(e).__name__, e)
            if peers is not None:
                sess = part("session", part_session, peers, tmp, args.quick, log)
                if sess is not None:
                    part("heap_min", part_heap_min, peers, tmp, args.quick, sess["heap_kb"],
                         sess["heap_firmware_live_peak_bytes"],
                         metrics["standin_heap_peak_bytes"] - sess["heap_harness_bytes"], log)
                part("idle", part_idle, peers, tmp, args.quick, log)
                part("naive", part_naive, peers, tmp, args.quick)
                part("wall", part_wall, peers, tmp, args.quick)
                part("boot", part_boot, peers, tmp, args.quick)
            part("net", part_net, tmp, args.quick)
            part("ocpp", part_ocpp, tmp, args.quick, log)
            part("annexa", part_annexa, args.quick)
            # Firmware that does not compile for the device is not measured at all.
            part("props", part_props, args.quick)
    finally:
        if peers is not None:
            peers.close()
        shutil.rmtree(tmp, ignore_errors=True)

    if metrics.get("property_violations"):
        # A safety property broken is a failure, not a missed target.
        errors["props"] = ("%d cases broke a safety property (details.props.examples)"
                           % metrics["property_violations"])
    met = verdicts(metrics)
    missing = [k for k in METRICS if metrics.get(k) is None]
    report = {"metrics": {k: metrics.get(k) for k in METRICS},
              "targets": {k: {"target": TARGETS[k][2], "met": met[k]} for k in TARGETS},
              "quick": args.quick, "context": context(), "details": details,
              "errors": errors, "not_measured": missing,
              "wall_s": round(time.monotonic() - started, 1)}
    report.update({k: metrics.get(k) for k in METRICS})
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
    log("")
    log(table(metrics, met))
    log("")
    for name, e in errors.items():
        log("error in %s: %s" % (name, e))
    log("wrote %s (%.0f s)" % (os.path.relpath(args.out, ROOT), report["wall_s"]))
    if missing:
        log("NOT MEASURED: %s" % ", ".join(missing))
    return exit_status(missing, errors)


if __name__ == "__main__":
    sys.exit(main())

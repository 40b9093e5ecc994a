"""The whole station in simulated time against real peers, on the MicroPython unix port.

    micropython -X heapsize=80K -m tools.bench_session RUN.json

RUN.json (written by tools/bench.py): {"mode": "session" | "idle", "storage": DIR,
"config": {...station config...}, "meter_port": N, "measure_heap": bool,
"firmware_pool": bytes, ...}. With firmware_pool the harness is built and measured first
and a ballast block leaves the firmware exactly that pool (tools/bench_rig.py HarnessRoom).

- session: a charging session (docs/performance.md): link up, plug, charge with the meter
  following the simulated EV, EV stops, unplug, the session record acknowledged by the
  backend. With measure_heap the heap is collected before every loop iteration and read
  after it (see standin_heap_peak_bytes in docs/performance.md).
- idle: no EV for `idle_s` simulated seconds after a warm-up; the loop period is
  `idle_step_ms` of simulated time (only the MQTT and meter timers matter when idle).

Lock-step with tools/bench.py over stdio (tools/bench_rig.py): "meter" requests set the
pymodbus registers to what the simulated EV draws; "mark" requests let the bench read its
byte counters (relay, meter peer) at a known simulated moment. The last line is the
result: {"result": {...}}.
"""
import gc
import json
import sys
import time

# Counted as firmware (tools/bench_rig.py HarnessRoom): the firmware modules the harness
# builds on (the Board base class, the filesystem) and the run's parameters (the config).
import firmware.board  # noqa: F401
import firmware.storage  # noqa: F401


def _read_run():
    if __name__ != "__main__":
        return None
    with open(sys.argv[1]) as f:
        return json.load(f)


_RUN = _read_run()
gc.collect()
_START = gc.mem_alloc()
# The harness: its modules and (in Session) its objects, measured apart.
import tools.tcpuart  # noqa: F401,E402
from tools.bench_rig import PROBE, ROOM, Rig, ask, say  # noqa: E402
from tools.pilotsim.model import EVLoad, EnergyCounter, MeterRefresh, S2_C, S2_OPEN  # noqa: E402

METER_PUSH_MS = 500          # registers refreshed at least this often while energy flows
LINK_UP_LIMIT_MS = 15000     # the link must be online within this (paced 1:1)
ACK_LIMIT_MS = 60000         # the session record must be acknowledged within this
BACKEND_LIMIT_MA = 10000     # the backend's set_limit during the charge


class Session:
    def __init__(self, run):
        self.run = run
        self.measure = run.get("measure_heap", False)
        self.live_peak = 0
        self.loop_peak = 0
        self.loop_peak_at = None
        self.construction_peak = 0
        self._refresh = MeterRefresh(METER_PUSH_MS)
        # The harness's own objects and attributes, all made before HarnessRoom measures
        # it: made later, they would count as the firmware's (and sit among its blocks).
        self.meter_wh = run.get("meter_start_wh", 0)
        self.ev = EVLoad(phases=3, wanted_ma=run.get("draw_ma", 16000), stop_ms=1000)
        self.energy = EnergyCounter(start_wh=self.meter_wh)
        self.following = False          # the simulated EV drives the meter (session())
        self.station = self.t0 = self.iterations = self.code_heap = None
        rig = Rig(run["storage"], run.get("meter_port"), probe=self.measure)
        self.board, self.pacer = rig.board, rig.pacer
        # Everything the harness holds is built: what the firmware gets from here on is
        # `firmware_pool` bytes (the pool of `-X heapsize=<figure>`), when the run asks.
        ROOM.reserve(run.get("firmware_pool"))
        import firmware.mqtt_link  # noqa: F401 - imported before the heap baseline
        import firmware.meter_service  # noqa: F401
        import firmware.station  # noqa: F401
        import umqtt.simple  # noqa: F401
        if self.measure:
            gc.collect()
            self.code_heap = gc.mem_alloc()     # every module is imported by now
            gc.disable()
            PROBE.armed = True
        # The config dict is the Station's to keep or drop: the harness holds no copy.
        self.station = rig.station(run.pop("config"))
        if self.measure:
            # Construction: the same upper bound as for a step.
            PROBE.armed = False
            self.construction_peak = max(PROBE.peak, gc.mem_alloc())
            gc.enable()
        self.t0 = self.board.now_ms
        self.iterations = 0

    def sim_ms(self):
        return self.board.now_ms - self.t0

    def step(self, tick_ms):
        st = self.station
        if self.measure:
            # Collector off for the step: what it allocates stays counted, so a reading is
            # an upper bound of the heap in use at any moment since the last collection;
            # PROBE collects at the step's I/O calls and reads before each (HeapProbe).
            gc.collect()
            live = gc.mem_alloc()
            gc.disable()
            PROBE.peak = 0
            PROBE.armed = True
            st.step()
            PROBE.armed = False
            peak = max(PROBE.peak, gc.mem_alloc())
            gc.enable()
            if live > self.live_peak:
                self.live_peak = live
            if peak > self.loop_peak:
                self.loop_peak = peak
                self.loop_peak_at = self.sim_ms()
        else:
            st.step()
        self.iterations += 1
        if self.following:
            self._follow_ev(tick_ms)
        self.board.sleep_ms(tick_ms)

    def run_for(self, ms, tick_ms):
        end = self.sim_ms() + ms
        while self.sim_ms() < end:
            self.step(tick_ms)

    def run_until(self, pred, limit_ms, tick_ms, what):
        end = self.sim_ms() + limit_ms
        while not pred():
            if self.sim_ms() >= end:
                raise RuntimeError("%s: not within %d simulated ms" % (what, limit_ms))
            self.step(tick_ms)

    def mark(self, name):
        # Let the relay pass what is in flight before the bench reads its counters.
        time.sleep_ms(100)
        ask({"req": "mark", "name": name, "t": self.sim_ms()})

    # -- the simulated EV and the meter registers -------------------------------------
    def _follow_ev(self, tick_ms):
        b = self.board
        m = b.model
        self.ev.update(self.sim_ms(), m.plugged and m.s2 != S2_OPEN, b.duty, b.contacts_closed)
        if b.contacts_closed:
            self.energy.add(self.ev.power_w(), tick_ms)
        i = self.ev.current_ma if b.contacts_closed else 0
        key = (i, self.energy.wh)
        t = self.sim_ms()
        if not self._refresh.due(t, key):
            return
        ask({"req": "meter", "current_ma": i, "power_w": self.ev.power_w() if i else 0,
             "import_wh": self.energy.wh})
        self._refresh.written(t, key)

    def link_up(self):
        link = self.station.link
        if link is None:
            raise RuntimeError("no MQTT link configured")
        self.run_until(lambda: link.online and link.subscribed, LINK_UP_LIMIT_MS, 10,
                       "MQTT link online")

    # -- the two runs ------------------------------------------------------------------
    def session(self):
        from firmware.outbox import KIND_SESSION
        from firmware.station import TICK_MS
        run = self.run
        m = self.board.model
        self.following = True
        self.link_up()
        self.run_for(2000, TICK_MS)
        self.mark("plug")
        m.plugged = True
        m.s2 = S2_OPEN
        m.update()
        self.run_for(1000, TICK_MS)
        m.s2 = S2_C
        m.update()
        charge_ms = run.get("charge_s", 120) * 1000
        self.run_for(charge_ms // 2, TICK_MS)
        # The backend lowers the limit, and the EV follows it.
        ask({"req": "command", "cmd": {"v": 1, "id": "bench-1", "cmd": "set_limit",
                                       "args": {"limit_ma": BACKEND_LIMIT_MA}}})
        ch = self.station.charger
        self.run_until(lambda: ch.offered_ma == BACKEND_LIMIT_MA, ACK_LIMIT_MS, TICK_MS,
                       "backend limit applied")
        self.ev.wanted_ma = run.get("draw2_ma", BACKEND_LIMIT_MA)
        self.run_for(charge_ms - charge_ms // 2, TICK_MS)
        m.s2 = S2_OPEN                                      # the EV ends the charge
        m.update()
        self.run_for(2000, TICK_MS)
        m.plugged = False
        m.update()
        ob = self.station.outbox

        def acked():
            return self.station.counters.sessions > 0 and not [
                r for r in ob.records() if r.kind == KIND_SESSION]
        self.run_until(acked, ACK_LIMIT_MS, TICK_MS, "session record acknowledged")
        self.mark("acked")
        # The bench's reading of the counters, taken now: the technician's step below
        # is the firmware's last, and the harness's bookkeeping (dicts of 30 counters that
        # a board never builds unasked) is not to decide whether it completes.
        st = self.station
        stats = {"mqtt": st.link.stats(), "meter": st.meter.stats() if st.meter else None}
        # A technician's `import diag` at the REPL while the station runs (frozen, as in
        # the production image), and its status view.
        import diag
        diag.status()
        self.run_for(1000, TICK_MS)
        stats["energy_wh"] = self.energy.wh - self.meter_wh
        stats["sessions"] = self.station.counters.sessions
        return stats

    def idle(self):
        run = self.run
        step = run.get("idle_step_ms", 100)
        self.link_up()
        # Warm-up: the status, the link_up event and the boot records go out first.
        self.run_for(run.get("warmup_s", 70) * 1000, step)
        start_sim = self.sim_ms()
        link0 = self.station.link.stats()
        meter0 = self.station.meter.stats() if self.station.meter else {}
        self.mark("idle_start")
        self.run_for(run.get("idle_s", 3600) * 1000, step)
        self.mark("idle_end")
        link1 = self.station.link.stats()
        meter1 = self.station.meter.stats() if self.station.meter else {}
        out = {"idle_sim_ms": self.sim_ms() - start_sim,
               "link_sent": link1["bytes_sent"] - link0["bytes_sent"],
               "link_received": link1["bytes_received"] - link0["bytes_received"],
               "pings": link1["pings"] - link0["pings"],
               "telemetry_sent": link1["telemetry_sent"] - link0["telemetry_sent"],
               "events_sent": link1["events_sent"] - link0["events_sent"],
               "records_sent": link1["records_sent"] - link0["records_sent"],
               "reconnects": link1["connects"] - link0["connects"]}
        if meter1:
            out["meter_cycles"] = meter1["cycles"] - meter0["cycles"]
            out["meter_failed"] = meter1["cycles_failed"] - meter0["cycles_failed"]
            out["meter_requests"] = meter1["requests"] - meter0["requests"]
            out["meter_plan_bytes"] = meter1["bytes_per_poll"]
            out["meter_requests_per_poll"] = meter1["requests_per_poll"]
        return out


def main(run):
    ROOM.start = _START
    s = Session(run)
    try:
        out = s.session() if run["mode"] == "session" else s.idle()
    except RuntimeError as e:
        link = s.station.link
        say({"failed": str(e), "mqtt_last_error": link.last_error if link else None,
             "faults": s.station.faults.active_names(),
             "service_error": s.station.last_service_error})
        raise
    st = s.station
    out["iterations"] = s.iterations
    out["sim_ms"] = s.sim_ms()
    out["paced_ms"] = s.pacer.paced_ms
    if "mqtt" not in out:
        out["mqtt"] = st.link.stats() if st.link else None
        out["meter"] = st.meter.stats() if st.meter else None
    out["faults"] = st.faults.active_names()
    out["service_error"] = st.last_service_error
    if s.measure:
        gc.collect()
        out["heap_live_peak"] = s.live_peak
        out["heap_code"] = s.code_heap
        out["heap_loop_peak"] = s.loop_peak
        out["heap_loop_peak_at_ms"] = s.loop_peak_at
        out["heap_construction_peak"] = s.construction_peak
        out["heap_probe_samples"] = PROBE.samples
    out["heap_harness"] = ROOM.harness
    out["heap_ballast"] = ROOM.ballast_bytes
    out["heap_firmware_pool"] = ROOM.firmware_pool()
    out["heap_end_alloc"] = gc.mem_alloc()
    out["heap_end_free"] = gc.mem_free()
    say({"result": out})


if __name__ == "__main__":
    main(_RUN)

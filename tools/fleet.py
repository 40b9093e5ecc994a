"""A fleet: N virtual stations against one broker and one backend, with a broker fault.

    make fleet N=100 [BROKER=rabbitmq] [FLEET_ARGS="--fault outage --down 60 --seed 1"]
    python -m tools.fleet -n N [--broker mosquitto|rabbitmq] [--duration S]
        [--fault restart|outage|blackhole|none] [--fault-at S] [--down S] [--no-jitter]
        [--consumers K] [--flush-per-s R] [--set KEY=INT] [--seed K] [--cmd-per-min R] [--user U --password P]

Each station is the real firmware on the ESP32 stand-in in real time (tools/station_sim.py,
as `make station` runs it), its flash in build/fleet/<id>/. The tool starts one broker on
127.0.0.1 (tools/fleet_brokers.py: mosquitto, or RabbitMQ's MQTT plugin as an own node) and
a backend (paho, in this process) that consumes status, telemetry, events and records,
acknowledges every record, de-duplicates them by id and sends commands (set_limit, and stop
before some departures) at a realistic rate; with --consumers K on mosquitto, K clients
share the load through a $share/ subscription. EVs arrive and leave on a random schedule
fixed by --seed, driven through the stations' stdin (plug/charge/unplug).

Faults at --fault-at: `restart` kills the broker (SIGKILL) and starts it after --down s (5);
`outage` stops it (SIGTERM) for --down s (60); `blackhole` runs the stations' connections
through a relay (tools/fleet_relay.py) that stops forwarding in both directions for --down s
(60) without closing a socket. --no-jitter: the stations' random draws (first connect,
reconnect backoff) are 0, as without storm control. At the end every EV leaves, the backend
drains the outboxes, and the report goes to the terminal and build/fleet.json
({broker: {latest run, "runs": {fault: figures}}}); plots in build/fleet-BROKER-FAULT.png
and build/fleet.png (stations online, backend messages and records per second).

The stations run at nice 10 in this tool's session, below the broker and the backend
(docs/fleet.md, "CPU priority"). Every way out (the end, an exception, Ctrl-C, SIGTERM)
ends the stations, the backend, the relay and the broker (RabbitMQ: node and epmd).

Reconnect times are measured from the moment the broker listens again (or the path is
restored) to each dropped station's CONNACK (seen by the station); connects per second are
counted in the broker's own log (one-second buckets).
"""
import argparse
import heapq
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

from tools.devicefiles import MICROPYTHON, ROOT, micropython_env
from tools.station import DEFAULT_HEAP, METER_START_WH, station_ids

sys.path.insert(0, os.path.join(ROOT, "tests", "system"))
import mosquitto  # noqa: E402  (tests/system/mosquitto.py: the test broker helper)

DEFAULT_DIR = os.path.join(ROOT, "build", "fleet")
PREFIX = "cp"
CLK_TCK = os.sysconf("SC_CLK_TCK")
TICK_MS = 10                 # firmware.station.TICK_MS (not imported: CPython side)
STATION_NICE = 10            # the stations' nice: the broker and the backend go first


# -- one station process --------------------------------------------------------------------
class Member:
    def __init__(self, sid, cfg, storage, heap, no_jitter=False):
        self.id = sid
        self.dir = os.path.join(storage, sid)
        os.makedirs(os.path.join(self.dir, "data"), exist_ok=True)
        self._meter_file = os.path.join(self.dir, "meter.json")
        meter_wh = METER_START_WH
        if os.path.exists(self._meter_file):
            with open(self._meter_file) as f:
                meter_wh = json.load(f)["energy_wh"]
        run = {"config": dict(cfg, station_id=sid), "storage": "data", "meter_wh": meter_wh,
               "emit_topics": ["record"], "no_jitter": no_jitter}
        path = os.path.join(self.dir, "run.json")
        with open(path, "w") as f:
            json.dump(run, f)
        self.lock = threading.Lock()
        self.online = False
        self.online_changes = []          # (t, online)
        self.contactor = False
        self.ev_charging = False          # the EV asks for current (the fleet drove it so)
        self.backend_stopped = False      # the backend sent stop in this session
        self.interruptions = []           # (t, why): contactor opened under a charging EV
        self.arrived_at = None            # when the current EV arrived
        self.stop_sent_at = None          # when the backend last sent this station stop
        self.published = set()            # record ids the station sent at least once
        self.reply = None
        self.replied = threading.Event()
        self.errors = []
        self.proc = subprocess.Popen(
            [MICROPYTHON, "-X", "heapsize=" + heap, "-m", "tools.station_sim", path],
            cwd=self.dir, env=micropython_env(fakes=False, runtime=MICROPYTHON),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1, process_group=0)
        # Below the broker and the backend: they stand for a CPO's own machines, the
        # stations for a thousand boards with a CPU each. An own process group (a terminal's
        # Ctrl-C reaches the tool, which ends them in order) but no own session: with the
        # kernel's autogroups (sched_autogroup_enabled) every session is a scheduling group
        # of equal weight, and 100 stations in 100 sessions left the broker a 1/100th share
        # whatever their nice (docs/fleet.md, "CPU priority").
        try:
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, STATION_NICE)
        except OSError:
            pass
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def send(self, line):
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass

    def _read(self):
        for line in self.proc.stdout:
            try:
                rec = json.loads(line)
            except ValueError:
                self.errors.append(line.strip())
                continue
            k = rec.get("k") if isinstance(rec, dict) else None
            now = time.monotonic()
            if k == "state":
                with self.lock:
                    if rec["online"] != self.online:
                        self.online = bool(rec["online"])
                        self.online_changes.append((now, self.online))
                    if self.contactor and not rec["contactor"] and self.ev_charging \
                            and not self.backend_stopped:
                        why = "%s faults %s" % (rec["state"], rec["faults"])
                        if self.stop_sent_at is not None and self.arrived_at is not None \
                                and self.stop_sent_at < self.arrived_at:
                            # A stop meant for the previous EV, held by the fault and
                            # delivered now: it stops this EV's session.
                            why += "; stale stop: sent %.0f s before this EV arrived, " \
                                   "%.0f s ago" % (self.arrived_at - self.stop_sent_at,
                                                   now - self.stop_sent_at)
                        self.interruptions.append((now, why))
                    self.contactor = rec["contactor"]
            elif k == "mqtt" and rec.get("dir") == "out":
                payload = rec.get("payload")
                if isinstance(payload, dict) and "id" in payload:
                    self.published.add(payload["id"])
            elif k == "reply" and rec.get("to") == "status":
                self.reply = rec
                self.replied.set()
            elif k == "bye":
                with open(self._meter_file, "w") as f:
                    json.dump({"energy_wh": rec["energy_wh"]}, f)
            elif k == "error":
                self.errors.append(rec.get("error"))

    def query(self, timeout=5.0):
        self.replied.clear()
        self.send("status")
        return self.reply if self.replied.wait(timeout) else None

    def usage(self):
        """(rss_kb, cpu ticks) from /proc."""
        try:
            with open("/proc/%d/status" % self.proc.pid) as f:
                rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
            with open("/proc/%d/stat" % self.proc.pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return rss, int(fields[11]) + int(fields[12])
        except (OSError, StopIteration, IndexError, ValueError):
            return 0, 0


# -- the backend ------------------------------------------------------------------------------
class Backend:
    """Consumes status, telemetry, events and records; acks and de-duplicates records;
    sends commands. `consumers` > 1: that many MQTT clients share the load through a shared
    subscription ($share/fleet/..., MQTT 5's, which mosquitto also offers to 3.1.1 clients);
    the de-duplication is common to them (a backend's database)."""

    def __init__(self, host, port, user=None, password=None, consumers=1, t0=None):
        import paho.mqtt.client as mqtt
        self.lock = threading.Lock()
        self.t0 = time.monotonic() if t0 is None else t0
        self.records = {}          # (sid, record id) -> times received
        self.sessions = {}         # (sid, session id) -> set of record ids carrying it
        self.session_wh = {}       # (sid, session id) -> energy (counted once)
        self.online = {}           # sid -> bool (status)
        self.online_up = []        # (t, sid) status online transitions
        self.messages = 0
        self.by_topic = {}
        self.per_s = {}            # second since t0 -> [messages, records]
        self.replies = 0
        self.replies_failed = 0
        self.commands = 0
        self.connected = threading.Event()
        self.share = "$share/fleet/" if consumers > 1 else ""
        self.clients = []
        self.consumer_msgs = [0] * consumers
        for k in range(consumers):
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                            client_id="fleet-backend-%d" % k if k else "fleet-backend",
                            clean_session=False)
            if user:
                c.username_pw_set(user, password)
            c.on_connect = self._on_connect
            c.on_disconnect = lambda *a: self.connected.clear()
            c.on_message = (lambda k: lambda cl, u, m: self._on_message(cl, u, m, k))(k)
            c.reconnect_delay_set(1, 2)
            c.connect_async(host, port, keepalive=30)
            c.loop_start()
            self.clients.append(c)
        self.client = self.clients[0]

    def _on_connect(self, client, userdata, flags, rc, props=None):
        for t in ("status", "telemetry", "record", "reply", "event"):
            client.subscribe("%s%s/+/%s" % (self.share, PREFIX, t), qos=1)
        self.connected.set()

    def _on_message(self, client, userdata, msg, k=0):
        parts = msg.topic.split("/")
        if len(parts) != 3:
            return
        sid, kind = parts[1], parts[2]
        sec = int(time.monotonic() - self.t0)
        with self.lock:
            self.messages += 1
            self.consumer_msgs[k] += 1
            self.by_topic[kind] = self.by_topic.get(kind, 0) + 1
            b = self.per_s.get(sec)
            if b is None:
                b = self.per_s[sec] = [0, 0]
            b[0] += 1
            if kind == "record":
                b[1] += 1
        try:
            p = json.loads(msg.payload)
        except ValueError:
            return
        if kind == "status":
            up = bool(p.get("online"))
            with self.lock:
                if up and not self.online.get(sid):
                    self.online_up.append((time.monotonic(), sid))
                self.online[sid] = up
        elif kind == "record":
            rid = p.get("id")
            with self.lock:
                key = (sid, rid)
                self.records[key] = self.records.get(key, 0) + 1
                if p.get("kind") == "session" and self.records[key] == 1:
                    data = p.get("data") or {}
                    skey = (sid, data.get("id"))
                    self.sessions.setdefault(skey, set()).add(rid)
                    self.session_wh.setdefault(skey, data.get("energy_wh"))
            client.publish("%s/%s/ack" % (PREFIX, sid),
                           json.dumps({"v": 1, "ids": [rid]}), qos=1)
        elif kind == "reply":
            with self.lock:
                self.replies += 1
                if not p.get("ok"):
                    self.replies_failed += 1

    def command(self, sid, name, args=None):
        self.commands += 1
        msg = {"v": 1, "id": "f-%d" % self.commands, "cmd": name}
        if args:
            msg["args"] = args
        msg["sent_at"] = int(time.time())
        msg["ttl_s"] = 60
        self.client.publish("%s/%s/cmd" % (PREFIX, sid), json.dumps(msg), qos=1)

    def close(self):
        for c in self.clients:
            c.loop_stop()
            c.disconnect()


# -- faults -----------------------------------------------------------------------------------
FAULTS = ("restart", "outage", "blackhole", "none")
DEFAULT_DOWN = {"restart": 5.0, "outage": 60.0, "blackhole": 60.0, "none": 0.0}


class Fault:
    """restart: the broker is killed (SIGKILL) and started again after `down` s; outage: it
    is stopped (SIGTERM) for `down` s; blackhole: the path through the relay
    (tools/fleet_relay.py) forwards nothing for `down` s, every socket left open. The broker
    (re)starts in a thread (RabbitMQ takes ~20 s): `back` is when it listens again."""

    def __init__(self, kind, broker, relay, down, out):
        self.kind = kind
        self.broker = broker
        self.relay = relay
        self.down = down
        self.out = out
        self.t_fault = None
        self.t_start = None        # the broker started again (epoch s, for its log)
        self.t_start_mono = None
        self.t_back = None
        self.error = None
        self._thread = None

    def begin(self):
        self.t_fault = time.monotonic()
        if self.kind == "blackhole":
            self.relay.blackhole()
            self.out("fleet: path to the broker black-holed for %.0f s" % self.down)
        elif self.kind == "outage":
            self.broker.stop()
            self.out("fleet: broker stopped for %.0f s" % self.down)
        else:
            self.broker.kill()
            self.out("fleet: broker killed, back in %.0f s" % self.down)

    def due_end(self, now):
        return self.t_fault is not None and self._thread is None and \
            now >= self.t_fault + self.down

    def end(self):
        if self.kind == "blackhole":
            self.relay.restore()
            self.t_back = time.monotonic()
            self.out("fleet: path restored")
            self._thread = True
            return

        def start():
            self.t_start, self.t_start_mono = time.time(), time.monotonic()
            try:
                self.broker.start()
            except Exception as e:  # noqa: BLE001 - reported, the run ends
                self.error = str(e)
                self.out("fleet: the broker did not come back: %s" % e)
                return
            self.t_back = time.monotonic()
            self.out("fleet: broker back")
        self._thread = threading.Thread(target=start, daemon=True)
        self._thread.start()


def _percentile(values, q):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


# -- the run ----------------------------------------------------------------------------------
def run(n=20, duration=120.0, fault="restart", fault_at=None, down=None, seed=1,
        cmd_per_min=0.5, storage=DEFAULT_DIR, heap=DEFAULT_HEAP, first_id="fl-0001",
        user=None, password=None, fresh=True, out=print, plot=None, report=None,
        charge_s=(40, 160), idle_s=(5, 60), spawn_gap_s=0.05, drain_s=90.0,
        broker_kind="mosquitto", no_jitter=False, consumers=1, extra_cfg=None):
    from tools.fleet_brokers import BROKERS, end_leftovers
    from tools.fleet_relay import Relay
    rng = random.Random(seed)
    if down is None:
        down = DEFAULT_DOWN[fault]
    storage = os.path.abspath(storage)
    ids = station_ids(first_id, n)
    left = end_leftovers(storage)
    if left:
        out("fleet: ended %d processes a killed run left in %s" % (len(left), storage))
    if fresh:
        shutil.rmtree(storage, ignore_errors=True)
    os.makedirs(storage, exist_ok=True)
    users = {user: password} if user else None
    broker = BROKERS[broker_kind](os.path.join(storage, "broker"), users=users)
    if not broker.shared_subscriptions:
        consumers = 1
    members = []
    backend = relay = None
    restore = _hold_signals(False)
    try:
        broker.start()
        relay = Relay(broker.port) if fault == "blackhole" else None
        port = relay.port if relay is not None else broker.port
        cfg = {"mqtt_host": mosquitto.HOST, "mqtt_port": port, "mqtt_prefix": PREFIX}
        if no_jitter:
            cfg["mqtt_boot_spread_s"] = 0
        if user:
            cfg.update(mqtt_user=user, mqtt_password=password, mqtt_plain_credentials=True)
        cfg.update(extra_cfg or {})
        t0 = time.monotonic()
        backend = Backend(mosquitto.HOST, broker.port, user, password, consumers=consumers,
                          t0=t0)
        samples = []                 # (t, stations online, backend messages so far)
        result = {"fleet_stations": n, "fleet_broker": broker.name, "fault": fault,
                  "down_s": down, "seed": seed, "no_jitter": no_jitter,
                  "fleet_backend_consumers": consumers,
                  "mqtt_boot_spread_s": cfg.get("mqtt_boot_spread_s", 8),
                  "outbox_flush_per_s": cfg.get("outbox_flush_per_s", 5),
                  "station_config_extra": dict(extra_cfg or {})}
        flt = Fault(fault, broker, relay, down, out)
        for sid in ids:
            members.append(Member(sid, cfg, storage, heap, no_jitter))
            time.sleep(spawn_gap_s)
        t_spawned = time.monotonic()
        deadline = t_spawned + 30 + n * 0.3
        while time.monotonic() < deadline and sum(m.online for m in members) < n:
            time.sleep(0.2)
        t_all = time.monotonic()
        result["fleet_boot_s"] = round(t_all - t0, 1)
        result["fleet_online_after_boot"] = sum(m.online for m in members)
        out("fleet: %d/%d stations online %.1f s after the first started (%s)"
            % (result["fleet_online_after_boot"], n, t_all - t0, broker.name))
        if fault_at is None:
            fault_at = duration / 3
        # EV schedule: (t, seq, station index, action)
        plan = []
        for k in range(n):
            heapq.heappush(plan, (t_all + rng.uniform(*idle_s) / 3, k, "arrive", k))
        seq = n
        t_end = t_all + duration
        last_progress = 0
        cpu0 = None
        status0 = {}
        interval_s = 60.0 / cmd_per_min if cmd_per_min > 0 else None
        next_cmd = t_all + (rng.uniform(0, interval_s) / n if interval_s else 0)
        while True:
            now = time.monotonic()
            if now >= t_end and (fault == "none" or flt.t_back is not None
                                 or flt.error is not None or now >= t_end + 120):
                break
            while plan and plan[0][0] <= now:
                _, _, action, k = heapq.heappop(plan)
                m = members[k]
                if action == "arrive":
                    with m.lock:
                        m.ev_charging = True
                        m.backend_stopped = False
                        m.arrived_at = now
                    m.send("charge %d" % rng.choice((10, 16, 16, 20, 32)))
                    seq += 1
                    stay = rng.uniform(*charge_s)
                    if rng.random() < 0.25:          # the driver stops it from the app
                        heapq.heappush(plan, (now + stay - 5, seq, "app_stop", k))
                    heapq.heappush(plan, (now + stay, seq + n, "leave", k))
                elif action == "app_stop":
                    with m.lock:
                        m.backend_stopped = True
                        m.stop_sent_at = now
                    backend.command(m.id, "stop")
                elif action == "leave":
                    with m.lock:
                        m.ev_charging = False
                    m.send("unplug")
                    seq += 1
                    heapq.heappush(plan, (now + rng.uniform(*idle_s), seq, "arrive", k))
            if interval_s and now >= next_cmd:
                m = members[rng.randrange(n)]
                backend.command(m.id, "set_limit", {"limit_ma": rng.choice(
                    (6000, 10000, 16000, 32000)), "expires_s": 600})
                next_cmd = now + rng.expovariate(n / interval_s)
            if cpu0 is None and now >= t_all + min(10, fault_at / 3):
                cpu0 = (now, sum(m.usage()[1] for m in members))
                for m in members:
                    status0[m.id] = m.query(2)
            if fault != "none" and flt.t_fault is None and now >= t_all + fault_at:
                result.update(_usage(members, cpu0, status0, n))
                result["fleet_online_at_fault"] = sum(m.online for m in members)
                result["fleet_charging_at_fault"] = sum(m.contactor for m in members)
                flt.begin()
            if flt.due_end(now):
                flt.end()
            # Its own time: the fault's start above (the usage queries, a kill) takes
            # seconds, and `now` would date the fault's first sample before the fault.
            samples.append((time.monotonic() - t0, sum(m.online for m in members),
                            backend.messages))
            if now - last_progress >= 2:
                last_progress = now
                out("fleet %5.0fs  online %3d/%d  charging %3d  backend msgs %6d  records %5d"
                    "  cmds %d  interrupted %d"
                    % (now - t0, samples[-1][1], n, sum(m.contactor for m in members),
                       backend.messages, len(backend.records), backend.commands,
                       sum(len(m.interruptions) for m in members)))
            time.sleep(0.2)
        if "fleet_cpu_pct_per_station" not in result and cpu0 is not None:
            result.update(_usage(members, cpu0, status0, n))
        # Every EV leaves; the outboxes drain.
        t_drain = time.monotonic()
        for m in members:
            with m.lock:
                m.ev_charging = False
            m.send("unplug")
        deadline = time.monotonic() + drain_s
        pending = None
        while time.monotonic() < deadline:
            time.sleep(2)
            replies = [m.query(3) for m in members]
            pending = sum((r or {}).get("outbox", 1) for r in replies)
            out("fleet: draining, %d records in the outboxes, %d/%d online"
                % (pending, sum(m.online for m in members), n))
            if pending == 0 and all(m.online for m in members):
                break
        time.sleep(1)
        result.update(_analyse(members, backend, broker, flt, pending, ids, t0,
                                t_drain))
        if relay is not None:
            result["fleet_relay_upstream_connects"] = relay.upstream_connects
            result["fleet_relay_abandoned"] = relay.abandoned
    finally:
        # Every way out (the end, an exception, Ctrl-C, SIGTERM): the stations, the
        # backend, the relay and the broker (RabbitMQ: the node and its epmd) end here,
        # and a second Ctrl-C or a SIGTERM meanwhile cannot cut it short.
        _hold_signals(True)
        try:
            _shutdown(members, backend, relay, broker, out)
        finally:
            restore()
    result["samples"] = len(samples)
    result["load_avg_1m"] = os.getloadavg()[0]
    if report:
        _write_report(report, result)
    if plot:
        _plot(plot, samples, backend, t0, n, result, flt)
    return result


def _hold_signals(hold):
    """hold: SIGINT, SIGTERM and SIGHUP are ignored (while the run cleans up); returns a
    function that restores the handlers found. Only the main thread may set handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    saved = {sig: signal.getsignal(sig)
             for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    if hold:
        for sig in saved:
            signal.signal(sig, signal.SIG_IGN)

    def restore():
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)
    return restore


def _shutdown(members, backend, relay, broker, out, quit_s=10.0):
    """Ends what run() started, each step whatever the one before did: the stations (quit,
    and their process groups killed after quit_s), the backend, the relay, the broker."""
    for m in members:
        m.send("quit")
    deadline = time.monotonic() + quit_s
    for m in members:
        try:
            m.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for m in members:
        if m.proc.poll() is None:
            try:
                os.killpg(m.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            m.proc.wait(5)
        except subprocess.TimeoutExpired:
            out("fleet: station %s (pid %d) did not end" % (m.id, m.proc.pid))
    for step in (backend and backend.close, relay and relay.close, broker.close):
        if not step:
            continue
        try:
            step()
        except Exception as e:  # noqa: BLE001 - the next step must still run
            out("fleet: clean-up: %s: %s" % (getattr(step, "__qualname__", step), e))


def run_label(result):
    return "%s-n%d%s" % (result["fault"], result["fleet_stations"],
                         "-nojitter" if result.get("no_jitter") else "")


def _write_report(path, result):
    """build/fleet.json: {broker: {the latest run's figures..., "runs": {label: figures}}}."""
    try:
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict) or "fleet_stations" in data:
            data = {}
    except (OSError, ValueError):
        data = {}
    entry = data.get(result["fleet_broker"], {})
    runs = entry.get("runs", {})
    runs[run_label(result)] = result
    entry = dict(result, runs=runs)
    data[result["fleet_broker"]] = entry
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)


def _usage(members, cpu0, status0, n):
    r = {}
    if cpu0 is None:
        return r
    t1 = time.monotonic()
    cpu1 = sum(m.usage()[1] for m in members)
    rss = [m.usage()[0] for m in members]
    r["fleet_cpu_pct_per_station"] = round(
        100.0 * (cpu1 - cpu0[1]) / CLK_TCK / (t1 - cpu0[0]) / n, 2)
    r["fleet_rss_kb_per_station"] = int(sum(rss) / len(rss))
    r["fleet_realtime_ratio_min"] = _realtime(members, status0)
    return r


def _realtime(members, status0):
    """The slowest station's loop against real time: loops x tick / elapsed ms (1.0 = kept
    up with every 10 ms tick)."""
    worst = None
    for m in members:
        a, b = status0.get(m.id), m.query(2)
        if not a or not b or b["now_ms"] <= a["now_ms"]:
            continue
        r = (b["loops"] - a["loops"]) * TICK_MS / (b["now_ms"] - a["now_ms"])
        worst = r if worst is None else min(worst, r)
    return round(worst, 3) if worst is not None else None


def _analyse(members, backend, broker, flt, pending, ids, t0, t_drain):
    r = {}
    with backend.lock:
        received = dict(backend.records)
        sessions = dict(backend.sessions)
        per_s = dict(backend.per_s)
    published = set()
    for m in members:
        published |= {(m.id, rid) for rid in m.published}
    r["fleet_records_published"] = len(published)
    r["fleet_records_received"] = len(received)
    r["fleet_records_resent_raw"] = sum(received.values()) - len(received)
    missing = published - set(received)
    # A session's start record still unacknowledged when the session ends is replaced by
    # the end record, which carries all it did (firmware/outbox.py put()): delivered then.
    superseded = {(sid, rid) for sid, rid in missing
                  if str(rid).startswith("start-") and (sid, rid[6:]) in received}
    lost = missing - superseded
    r["fleet_records_superseded"] = len(superseded)
    r["fleet_records_lost"] = len(lost) + (pending or 0)
    r["fleet_records_undelivered_at_end"] = pending
    r["fleet_records_lost_ids"] = sorted("%s/%s" % k for k in lost)[:20]
    # After de-dup by record id, one session must still be one session.
    r["fleet_records_duplicated"] = sum(1 for v in sessions.values() if len(v) > 1)
    r["fleet_sessions"] = len(sessions)
    r["fleet_interruptions"] = sum(len(m.interruptions) for m in members)
    r["fleet_interrupted_by_fault"] = r["fleet_interruptions"] > 0
    r["fleet_interruptions_by_stale_stop"] = sum(
        1 for m in members for _, w in m.interruptions if "stale stop" in w)
    r["fleet_interruption_examples"] = [
        "%s: %s" % (m.id, w) for m in members for _, w in m.interruptions][:10]
    r["fleet_commands_sent"] = backend.commands
    r["fleet_replies"] = backend.replies
    r["fleet_backend_messages"] = backend.messages
    r["fleet_backend_consumer_messages"] = list(backend.consumer_msgs)
    r["fleet_messages_by_topic"] = dict(backend.by_topic)
    r["fleet_online_at_end"] = sum(m.online for m in members)
    r["fleet_station_errors"] = [e for m in members for e in m.errors][:10]
    t_back = flt.t_back
    if flt.error is not None or (flt.t_fault is not None and t_back is None):
        r["fleet_broker_back"] = False
        r["fleet_broker_error"] = flt.error or "not back at the end of the run"
    if flt.t_start is not None:
        # The broker's own restart: from start to listening, and RabbitMQ's boot phases
        # from its log (docs/fleet.md, "RabbitMQ at 100").
        if t_back is not None:
            r["fleet_broker_restart_s"] = round(t_back - flt.t_start_mono, 1)
        if hasattr(broker, "boot_phases"):
            r["fleet_broker_boot_phases"] = broker.boot_phases(flt.t_start)
    if t_back is None:
        return r
    # Time until all are back: from the broker listening again (or the path restored) to
    # each dropped station's CONNACK. A station the fault did not drop (a black hole
    # shorter than its keepalive) counts 0 s.
    times, dropped, missing = reconnect_times([m.online_changes for m in members],
                                              flt.t_fault, t_back)
    r["fleet_dropped_by_fault"] = dropped
    r["fleet_reconnected"] = len(times)
    r["fleet_not_reconnected"] = missing
    r["fleet_reconnect_s_p50"] = _round(_percentile(times, 0.5))
    r["fleet_reconnect_s_p99"] = _round(_percentile(times, 0.99))
    r["fleet_reconnect_s_max"] = _round(max(times) if times else None)
    # Connects per second: the broker's own log (whole seconds), after it came back.
    back_epoch = int(time.time() - (time.monotonic() - t_back))
    per_conn = broker.connects_per_s(ids[0][:3])
    after = {sec: c for sec, c in per_conn.items() if sec >= back_epoch}
    r["fleet_reconnect_peak_per_s"] = max(after.values()) if after else 0
    r["fleet_reconnects_at_broker"] = sum(after.values())
    station_side = {}
    for m in members:
        for t, up in m.online_changes:
            if up and t >= t_back:
                station_side[int(t - t_back)] = station_side.get(int(t - t_back), 0) + 1
    r["fleet_reconnect_peak_per_s_station_side"] = max(station_side.values()) \
        if station_side else 0
    r["fleet_reconnect_per_s"] = [station_side.get(sec, 0)
                                  for sec in range(max(station_side or [0]) + 1)]
    boot = {sec: c for sec, c in per_conn.items() if sec < back_epoch}
    r["fleet_boot_peak_connects_per_s"] = max(boot.values()) if boot else 0
    # The backlog flush: backend messages and records per second in the 60 s after the
    # broker is back (not into the final drain, when every EV leaves at once), against
    # the 30 s before the fault.
    b0 = int(t_back - t0)
    f0 = int(flt.t_fault - t0)
    d0 = int(t_drain - t0)
    window = [per_s.get(sec, [0, 0]) for sec in range(b0, max(b0 + 1, min(b0 + 60, d0)))]
    r["fleet_flush_window_s"] = len(window)
    before = [per_s.get(sec, [0, 0]) for sec in range(max(0, f0 - 30), f0)]
    r["fleet_flush_msgs_per_s_peak"] = max(w[0] for w in window)
    r["fleet_flush_records_per_s_peak"] = max(w[1] for w in window)
    r["fleet_flush_records"] = sum(w[1] for w in window)
    r["fleet_backend_per_s"] = [per_s.get(sec, [0, 0]) for sec in range(max(per_s or [0]) + 1)]
    r["fleet_t_fault_s"] = round(flt.t_fault - t0, 1)
    r["fleet_t_back_s"] = round(t_back - t0, 1)
    r["fleet_t_drain_s"] = round(t_drain - t0, 1)
    r["fleet_flush_msgs_per_s_mean"] = round(sum(w[0] for w in window) / len(window), 1)
    r["fleet_steady_msgs_per_s_before_fault"] = round(
        sum(w[0] for w in before) / max(1, len(before)), 1)
    return r


def reconnect_times(changes, t_fault, t_back):
    """(times, dropped, not back) from each station's [(t, online)]: its time back is from
    t_back to its first CONNACK after the fault dropped it; one the fault did not drop
    (online throughout) counts 0 s, and so does one whose CONNACK came before t_back (the
    listener was up before the tool's probe got through, on a loaded machine)."""
    times = []
    missing = dropped = 0
    for ch in changes:
        downs = [t for t, up in ch if not up and t_fault <= t <= t_back + 1]
        if not downs and ch and ch[-1][1]:
            times.append(0.0)
            continue
        dropped += 1
        ups = [t for t, up in ch if up and t > (downs[0] if downs else t_back)]
        if ups:
            times.append(max(0.0, ups[0] - t_back))
        else:
            missing += 1
    return times, dropped, missing


def _round(v):
    return None if v is None else round(v, 2)


def _plot(path, samples, backend, t0, n, result, flt):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ts = [x[0] for x in samples]
    with backend.lock:
        per_s = dict(backend.per_s)
    secs = list(range(0, int(ts[-1]) + 1)) if ts else []
    fig, ax = plt.subplots(figsize=(10, 5))
    ax.plot(ts, [x[1] for x in samples], color="tab:blue", label="stations online",
            drawstyle="steps-post")
    ax.set_xlabel("s")
    ax.set_ylabel("stations online", color="tab:blue")
    ax.set_ylim(0, n * 1.05 + 1)
    ax2 = ax.twinx()
    ax2.plot(secs, [per_s.get(x, [0, 0])[0] for x in secs], color="tab:orange",
             label="backend messages/s")
    ax2.plot(secs, [per_s.get(x, [0, 0])[1] for x in secs], color="tab:green",
             label="records/s")
    ax2.set_ylabel("backend messages / s, records / s")
    ax2.legend(loc="upper right")
    if flt.t_fault is not None:
        ax.axvspan(flt.t_fault - t0, (flt.t_back or flt.t_fault) - t0, color="0.9")
    ax.set_title("%d stations, %s, %s%s: p99 back %s s, peak %s connects/s" % (
        n, result.get("fleet_broker"), result.get("fault"),
        " (no jitter)" if result.get("no_jitter") else "",
        result.get("fleet_reconnect_s_p99"), result.get("fleet_reconnect_peak_per_s")))
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def backend_capacity(broker_kind="mosquitto", records=4000, stations=100, storage=None):
    """Records per second this backend takes (consume, de-duplicate, ack) when a fleet's
    backlog arrives at once: `records` QoS 1 record messages from `stations` ids published
    as fast as one client can, through the broker. The basis of outbox_flush_per_s."""
    from tools.fleet_brokers import BROKERS
    import paho.mqtt.client as mqtt
    storage = storage or os.path.join(DEFAULT_DIR, "capacity")
    shutil.rmtree(storage, ignore_errors=True)
    broker = BROKERS[broker_kind](storage)
    broker.start()
    backend = Backend(mosquitto.HOST, broker.port)
    acks = [0]
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="capacity-pub")
    pub.on_message = lambda c, u, m: acks.__setitem__(0, acks[0] + 1)
    pub.max_inflight_messages_set(100)
    pub.max_queued_messages_set(0)
    try:
        backend.connected.wait(30)
        pub.connect(mosquitto.HOST, broker.port)
        pub.loop_start()
        pub.subscribe("%s/+/ack" % PREFIX, 1)
        time.sleep(1)
        body = {"v": 1, "kind": "telemetry", "seq": 0, "data": {"power_w": 11000,
                                                                "energy_wh": 123456}}
        t0 = time.monotonic()
        for i in range(records):
            body["id"] = "r-%d" % i
            body["seq"] = i
            pub.publish("%s/cap-%03d/record" % (PREFIX, i % stations), json.dumps(body),
                        qos=1)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (len(backend.records) < records
                                               or acks[0] < records):
            time.sleep(0.05)
        t1 = time.monotonic()
        return {"records": records, "received": len(backend.records), "acks": acks[0],
                "seconds": round(t1 - t0, 2),
                "records_per_s": round(len(backend.records) / (t1 - t0), 1),
                "load_avg_1m": os.getloadavg()[0]}
    finally:
        pub.loop_stop()
        backend.close()
        broker.close()


def main(argv=None):
    from tools.fleet_brokers import BROKERS, RabbitBroker
    p = argparse.ArgumentParser(prog="python -m tools.fleet", description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=20)
    p.add_argument("--broker", choices=sorted(BROKERS), default="mosquitto")
    p.add_argument("--duration", type=float, default=150.0, help="seconds after all online")
    p.add_argument("--fault", choices=FAULTS, default="restart")
    p.add_argument("--fault-at", type=float, help="seconds after all online (duration/3)")
    p.add_argument("--down", type=float,
                   help="seconds the broker or the path is away (restart 5, outage and "
                   "blackhole 60)")
    p.add_argument("--no-jitter", action="store_true",
                   help="the stations' random draws are 0 (first connect, backoff)")
    p.add_argument("--consumers", type=int, default=1,
                   help="backend consumers sharing a $share/ subscription (mosquitto)")
    p.add_argument("--flush-per-s", type=int, help="the stations' outbox_flush_per_s")
    p.add_argument("--set", action="append", default=[], metavar="KEY=INT",
                   help="a firmware config key for every station (integer value)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cmd-per-min", type=float, default=0.5,
                   help="set_limit commands per station per minute")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--storage", default=DEFAULT_DIR)
    p.add_argument("--heap", default=DEFAULT_HEAP)
    p.add_argument("--report", default=os.path.join(ROOT, "build", "fleet.json"))
    p.add_argument("--plot", help="PNG (default build/fleet-BROKER-FAULT.png and build/fleet.png)")
    p.add_argument("--backend-capacity", action="store_true",
                   help="only measure the records per second the backend takes")
    args = p.parse_args(argv)
    if args.backend_capacity:
        print(json.dumps(backend_capacity(args.broker)))
        return 0
    cls = BROKERS[args.broker]
    if not cls.available():
        if cls is RabbitBroker:
            RabbitBroker.install()
        else:
            print("fleet: mosquitto is not installed (apt-get install mosquitto)",
                  file=sys.stderr)
            return 2
    label = run_label({"fault": args.fault, "fleet_stations": args.n,
                       "no_jitter": args.no_jitter})
    plot = args.plot or os.path.join(ROOT, "build", "fleet-%s-%s.png" % (args.broker, label))
    extra = {"outbox_flush_per_s": args.flush_per_s} if args.flush_per_s else {}
    for kv in args.set:
        key, _, value = kv.partition("=")
        extra[key] = int(value)
    def stop_signal(signum, frame):
        raise KeyboardInterrupt()

    # SIGTERM and SIGHUP end the run as Ctrl-C does (run() cleans up); Ctrl-C works even
    # when this was started with SIGINT ignored (a background job of a non-interactive
    # shell).
    signal.signal(signal.SIGTERM, stop_signal)
    signal.signal(signal.SIGHUP, stop_signal)            # the terminal closed
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        r = run(n=args.n, duration=args.duration, fault=args.fault, fault_at=args.fault_at,
                down=args.down, seed=args.seed, cmd_per_min=args.cmd_per_min,
                storage=args.storage, heap=args.heap, user=args.user,
                password=args.password, report=args.report, plot=plot,
                broker_kind=args.broker, no_jitter=args.no_jitter,
                consumers=args.consumers, extra_cfg=extra)
    except KeyboardInterrupt:
        print("fleet: interrupted; the stations and the broker are stopped", flush=True)
        return 130
    if not args.plot:
        shutil.copyfile(plot, os.path.join(ROOT, "build", "fleet.png"))
    print("fleet report (%s [%s][runs][%s], %s):" % (args.report, args.broker, label, plot))
    for k in sorted(r):
        print("  %-42s %s" % (k, r[k]))
    ok = (r.get("fleet_records_lost") == 0 and r.get("fleet_records_duplicated") == 0
          and not r.get("fleet_interrupted_by_fault"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

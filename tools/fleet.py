"""A fleet: N virtual stations against one mosquitto and one backend, with a broker fault.

    make fleet N=100 [FLEET_ARGS="--duration 180 --fault restart --down 5 --seed 1"]
    python -m tools.fleet -n N [--duration S] [--fault restart|blackhole|none]
        [--fault-at S] [--down S] [--seed K] [--cmd-per-min R] [--user U --password P]

Each station is the real firmware on the ESP32 stand-in in real time (tools/station_sim.py,
as `make station` runs it), its flash in build/fleet/<id>/. The tool starts one mosquitto on
127.0.0.1 (tests/system/mosquitto.py) and a backend (paho, in this process, its own network
thread) that consumes status, telemetry, events and records, acknowledges every record,
de-duplicates them by id and sends commands (set_limit, and stop before some departures) at
a realistic rate. EVs arrive and leave on a random schedule fixed by --seed, driven through
the stations' stdin (plug/charge/unplug). At --fault-at the broker is killed and comes back
after --down seconds (`blackhole`: meanwhile a listener on its port accepts and never
answers). At the end every EV leaves, the backend drains the outboxes, and the report goes
to the terminal and build/fleet.json (build/fleet.png: connected stations and message rate).

Reconnect times are measured from the moment the broker listens again to each station's
CONNACK (seen by the station); connects per second are counted in the broker's log
("New client connected", one-second buckets).
"""
import argparse
import heapq
import json
import os
import random
import shutil
import socket
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


# -- one station process --------------------------------------------------------------------
class Member:
    def __init__(self, sid, cfg, storage, heap):
        self.id = sid
        self.dir = os.path.join(storage, sid)
        os.makedirs(os.path.join(self.dir, "data"), exist_ok=True)
        self._meter_file = os.path.join(self.dir, "meter.json")
        meter_wh = METER_START_WH
        if os.path.exists(self._meter_file):
            with open(self._meter_file) as f:
                meter_wh = json.load(f)["energy_wh"]
        run = {"config": dict(cfg, station_id=sid), "storage": "data", "meter_wh": meter_wh,
               "emit_topics": ["record"]}
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
        self.published = set()            # record ids the station sent at least once
        self.reply = None
        self.replied = threading.Event()
        self.errors = []
        self.proc = subprocess.Popen(
            [MICROPYTHON, "-X", "heapsize=" + heap, "-m", "tools.station_sim", path],
            cwd=self.dir, env=micropython_env(fakes=False, runtime=MICROPYTHON),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1, start_new_session=True)
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
                        self.interruptions.append((now, "%s faults %s" % (rec["state"],
                                                                          rec["faults"])))
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
    sends commands."""

    def __init__(self, host, port, user=None, password=None):
        import paho.mqtt.client as mqtt
        self.lock = threading.Lock()
        self.records = {}          # (sid, record id) -> times received
        self.sessions = {}         # (sid, session id) -> set of record ids carrying it
        self.session_wh = {}       # (sid, session id) -> energy (counted once)
        self.online = {}           # sid -> bool (status)
        self.online_up = []        # (t, sid) status online transitions
        self.messages = 0
        self.by_topic = {}
        self.replies = 0
        self.replies_failed = 0
        self.commands = 0
        self.connected = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fleet-backend",
                        clean_session=False)
        if user:
            c.username_pw_set(user, password)
        c.on_connect = self._on_connect
        c.on_disconnect = lambda *a: self.connected.clear()
        c.on_message = self._on_message
        c.reconnect_delay_set(1, 2)
        self.client = c
        c.connect_async(host, port, keepalive=30)
        c.loop_start()

    def _on_connect(self, client, userdata, flags, rc, props=None):
        for t in ("status", "telemetry", "record", "reply", "event"):
            client.subscribe("%s/+/%s" % (PREFIX, t), qos=1)
        self.connected.set()

    def _on_message(self, client, userdata, msg):
        parts = msg.topic.split("/")
        if len(parts) != 3:
            return
        sid, kind = parts[1], parts[2]
        with self.lock:
            self.messages += 1
            self.by_topic[kind] = self.by_topic.get(kind, 0) + 1
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
        self.client.loop_stop()
        self.client.disconnect()


# -- faults -----------------------------------------------------------------------------------
class SilentPort:
    """A listener on the broker's port that accepts and never answers (a hung broker)."""

    def __init__(self, port):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((mosquitto.HOST, port))
        self.sock.listen(512)
        self.sock.settimeout(0.1)
        self.conns = []
        self._stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self._stop:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                pass

    def close(self):
        self._stop = True
        self.thread.join(2)
        for c in self.conns:
            c.close()
        self.sock.close()


def _percentile(values, q):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def broker_connects(log_path, client_prefix):
    """{epoch second: connects} from mosquitto's log."""
    per_s = {}
    try:
        with open(log_path, errors="replace") as f:
            for line in f:
                if "New client connected" in line and (" as %s" % client_prefix) in line:
                    sec = int(line.split(":", 1)[0])
                    per_s[sec] = per_s.get(sec, 0) + 1
    except (OSError, ValueError):
        pass
    return per_s


# -- the run ----------------------------------------------------------------------------------
def run(n=20, duration=120.0, fault="restart", fault_at=None, down=5.0, seed=1,
        cmd_per_min=0.5, storage=DEFAULT_DIR, heap=DEFAULT_HEAP, first_id="fl-0001",
        user=None, password=None, fresh=True, out=print, plot=None, report=None,
        charge_s=(40, 160), idle_s=(5, 60), spawn_gap_s=0.05, drain_s=90.0):
    rng = random.Random(seed)
    storage = os.path.abspath(storage)
    ids = station_ids(first_id, n)
    if fresh:
        shutil.rmtree(storage, ignore_errors=True)
    os.makedirs(storage, exist_ok=True)
    bdir = os.path.join(storage, "broker")
    os.makedirs(bdir, exist_ok=True)
    users = {user: password} if user else None
    broker = mosquitto.Mosquitto(directory=bdir, users=users,
                                 extra_config="max_queued_messages 1000")
    # Connection notices only: "log_type all" logs every PUBLISH of the fleet.
    with open(broker.conf) as f:
        conf = f.read().replace("log_type all", "log_type error\nlog_type warning\n"
                                "log_type notice\nlog_timestamp true")
    with open(broker.conf, "w") as f:
        f.write(conf)
    if os.path.exists(broker.log):
        os.remove(broker.log)
    broker.start()
    cfg = {"mqtt_host": mosquitto.HOST, "mqtt_port": broker.port, "mqtt_prefix": PREFIX}
    if user:
        cfg.update(mqtt_user=user, mqtt_password=password)
    backend = Backend(mosquitto.HOST, broker.port, user, password)
    members = []
    samples = []                 # (t, stations online, backend messages so far)
    t0 = time.monotonic()
    result = {"fleet_stations": n, "fault": fault, "down_s": down, "seed": seed}
    try:
        for sid in ids:
            members.append(Member(sid, cfg, storage, heap))
            time.sleep(spawn_gap_s)
        deadline = time.monotonic() + 30 + n * 0.3
        while time.monotonic() < deadline and sum(m.online for m in members) < n:
            time.sleep(0.2)
        t_all = time.monotonic()
        result["fleet_boot_s"] = round(t_all - t0, 1)
        result["fleet_online_after_boot"] = sum(m.online for m in members)
        out("fleet: %d/%d stations online %.1f s after the first started"
            % (result["fleet_online_after_boot"], n, t_all - t0))
        if fault_at is None:
            fault_at = duration / 3
        # EV schedule: (t, seq, station index, action)
        plan = []
        for k in range(n):
            heapq.heappush(plan, (t_all + rng.uniform(*idle_s) / 3, k, "arrive", k))
        seq = n
        t_fault = t_all + fault_at
        t_back = None
        t_end = t_all + duration
        silent = None
        last_progress = 0
        cpu0 = rss = None
        status0 = {}
        interval_s = 60.0 / cmd_per_min if cmd_per_min > 0 else None
        next_cmd = t_all + (rng.uniform(0, interval_s) / n if interval_s else 0)
        while True:
            now = time.monotonic()
            if now >= t_end:
                break
            while plan and plan[0][0] <= now:
                _, _, action, k = heapq.heappop(plan)
                m = members[k]
                if action == "arrive":
                    with m.lock:
                        m.ev_charging = True
                        m.backend_stopped = False
                    m.send("charge %d" % rng.choice((10, 16, 16, 20, 32)))
                    seq += 1
                    stay = rng.uniform(*charge_s)
                    if rng.random() < 0.25:          # the driver stops it from the app
                        heapq.heappush(plan, (now + stay - 5, seq, "app_stop", k))
                    heapq.heappush(plan, (now + stay, seq + n, "leave", k))
                elif action == "app_stop":
                    with m.lock:
                        m.backend_stopped = True
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
            if fault != "none" and t_back is None and now >= t_fault and broker.running:
                t1 = time.monotonic()
                cpu1 = sum(m.usage()[1] for m in members)
                rss = [m.usage()[0] for m in members]
                result["fleet_cpu_pct_per_station"] = round(
                    100.0 * (cpu1 - cpu0[1]) / CLK_TCK / (t1 - cpu0[0]) / n, 2)
                result["fleet_rss_kb_per_station"] = int(sum(rss) / len(rss))
                result["fleet_realtime_ratio_min"] = _realtime(members, status0)
                out("fleet: broker %s for %.0f s" % (
                    "killed" if fault == "restart" else "killed, its port black-holed", down))
                result["fleet_online_at_fault"] = sum(m.online for m in members)
                result["fleet_charging_at_fault"] = sum(m.contactor for m in members)
                broker.kill()
                if fault == "blackhole":
                    silent = SilentPort(broker.port)
                t_down = time.monotonic()
            if fault != "none" and t_back is None and not broker.running and \
                    now >= t_down + down:
                if silent is not None:
                    silent.close()
                    silent = None
                broker.start()
                t_back = time.monotonic()
                out("fleet: broker back")
            samples.append((now - t0, sum(m.online for m in members), backend.messages))
            if now - last_progress >= 2:
                last_progress = now
                out("fleet %5.0fs  online %3d/%d  charging %3d  backend msgs %6d  records %5d"
                    "  acks/cmds %d  interrupted %d"
                    % (now - t0, samples[-1][1], n, sum(m.contactor for m in members),
                       backend.messages, len(backend.records), backend.commands,
                       sum(len(m.interruptions) for m in members)))
            time.sleep(0.2)
        if "fleet_cpu_pct_per_station" not in result and cpu0 is not None:
            t1 = time.monotonic()
            cpu1 = sum(m.usage()[1] for m in members)
            rss = [m.usage()[0] for m in members]
            result["fleet_cpu_pct_per_station"] = round(
                100.0 * (cpu1 - cpu0[1]) / CLK_TCK / (t1 - cpu0[0]) / n, 2)
            result["fleet_rss_kb_per_station"] = int(sum(rss) / len(rss))
            result["fleet_realtime_ratio_min"] = _realtime(members, status0)
        # Every EV leaves; the outboxes drain.
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
        result.update(_analyse(members, backend, broker, t_back, pending, ids))
    finally:
        for m in members:
            m.send("quit")
        for m in members:
            try:
                m.proc.wait(max(0.1, 10 - 0))
            except subprocess.TimeoutExpired:
                m.proc.kill()
        backend.close()
        if silent is not None:
            silent.close()
        broker.stop()
    result["samples"] = len(samples)
    result["load_avg_1m"] = os.getloadavg()[0]
    if report:
        with open(report, "w") as f:
            json.dump(result, f, indent=1, sort_keys=True)
    if plot:
        _plot(plot, samples, broker.log, t0, n)
    return result


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


def _analyse(members, backend, broker, t_back, pending, ids):
    r = {}
    with backend.lock:
        received = dict(backend.records)
        sessions = dict(backend.sessions)
    published = set()
    for m in members:
        published |= {(m.id, rid) for rid in m.published}
    r["fleet_records_published"] = len(published)
    r["fleet_records_received"] = len(received)
    r["fleet_records_resent_raw"] = sum(received.values()) - len(received)
    lost = published - set(received)
    r["fleet_records_lost"] = len(lost) + (pending or 0)
    r["fleet_records_undelivered_at_end"] = pending
    r["fleet_records_lost_ids"] = sorted("%s/%s" % k for k in lost)[:20]
    # After de-dup by record id, one session must still be one session.
    r["fleet_records_duplicated"] = sum(1 for v in sessions.values() if len(v) > 1)
    r["fleet_sessions"] = len(sessions)
    r["fleet_interruptions"] = sum(len(m.interruptions) for m in members)
    r["fleet_interrupted_by_fault"] = r["fleet_interruptions"] > 0
    r["fleet_interruption_examples"] = [
        "%s: %s" % (m.id, w) for m in members for _, w in m.interruptions][:10]
    r["fleet_commands_sent"] = backend.commands
    r["fleet_replies"] = backend.replies
    r["fleet_backend_messages"] = backend.messages
    r["fleet_messages_by_topic"] = dict(backend.by_topic)
    r["fleet_online_at_end"] = sum(m.online for m in members)
    r["fleet_station_errors"] = [e for m in members for e in m.errors][:10]
    if t_back is not None:
        times = []
        missing = 0
        for m in members:
            ups = [t for t, up in m.online_changes if up and t >= t_back]
            if ups:
                times.append(ups[0] - t_back)
            else:
                missing += 1
        r["fleet_reconnected"] = len(times)
        r["fleet_not_reconnected"] = missing
        r["fleet_reconnect_s_p50"] = _round(_percentile(times, 0.5))
        r["fleet_reconnect_s_p99"] = _round(_percentile(times, 0.99))
        r["fleet_reconnect_s_max"] = _round(max(times) if times else None)
        # Connects per second: the broker's log (whole seconds), after it came back.
        back_epoch = int(time.time() - (time.monotonic() - t_back))
        per_s = broker_connects(broker.log, ids[0][:3])
        after = {s: c for s, c in per_s.items() if s >= back_epoch}
        r["fleet_reconnect_peak_per_s"] = max(after.values()) if after else 0
        station_side = {}
        for m in members:
            for t, up in m.online_changes:
                if up and t >= t_back:
                    station_side[int(t - t_back)] = station_side.get(int(t - t_back), 0) + 1
        r["fleet_reconnect_peak_per_s_station_side"] = max(station_side.values()) \
            if station_side else 0
        r["fleet_reconnect_per_s"] = [station_side.get(s, 0)
                                      for s in range(max(station_side or [0]) + 1)]
        boot = {s: c for s, c in per_s.items() if s < back_epoch}
        r["fleet_boot_peak_connects_per_s"] = max(boot.values()) if boot else 0
    return r


def _round(v):
    return None if v is None else round(v, 2)


def _plot(path, samples, log, t0, n):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ts = [s[0] for s in samples]
    rate = [0.0] + [(b[2] - a[2]) / max(1e-3, b[0] - a[0]) for a, b in zip(samples, samples[1:])]
    # smooth the message rate over ~2 s
    k = 10
    smooth = [sum(rate[max(0, i - k):i + 1]) / len(rate[max(0, i - k):i + 1])
              for i in range(len(rate))]
    fig, ax = plt.subplots(figsize=(10, 5))
    ax.plot(ts, [s[1] for s in samples], color="tab:blue", label="stations online")
    ax.set_xlabel("s")
    ax.set_ylabel("stations online", color="tab:blue")
    ax.set_ylim(0, n * 1.05 + 1)
    ax2 = ax.twinx()
    ax2.plot(ts, smooth, color="tab:orange", label="backend messages/s")
    ax2.set_ylabel("backend messages / s", color="tab:orange")
    ax.set_title("fleet of %d stations: broker fault and reconnect" % n)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.fleet", description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=20)
    p.add_argument("--duration", type=float, default=150.0, help="seconds after all online")
    p.add_argument("--fault", choices=("restart", "blackhole", "none"), default="restart")
    p.add_argument("--fault-at", type=float, help="seconds after all online (duration/3)")
    p.add_argument("--down", type=float, default=5.0, help="seconds the broker is away")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cmd-per-min", type=float, default=0.5,
                   help="set_limit commands per station per minute")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--storage", default=DEFAULT_DIR)
    p.add_argument("--heap", default=DEFAULT_HEAP)
    p.add_argument("--report", default=os.path.join(ROOT, "build", "fleet.json"))
    p.add_argument("--plot", default=os.path.join(ROOT, "build", "fleet.png"))
    args = p.parse_args(argv)
    if not mosquitto.available():
        print("fleet: mosquitto is not installed (apt-get install mosquitto)", file=sys.stderr)
        return 2
    r = run(n=args.n, duration=args.duration, fault=args.fault, fault_at=args.fault_at,
            down=args.down, seed=args.seed, cmd_per_min=args.cmd_per_min,
            storage=args.storage, heap=args.heap, user=args.user, password=args.password,
            report=args.report, plot=args.plot)
    print("fleet report (%s, %s):" % (args.report, args.plot))
    for k in sorted(r):
        print("  %-42s %s" % (k, r[k]))
    ok = (r.get("fleet_records_lost") == 0 and r.get("fleet_records_duplicated") == 0
          and not r.get("fleet_interrupted_by_fault"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""The fleet's brokers: mosquitto (tests/system/mosquitto.py) and RabbitMQ's MQTT plugin.

    python -m tools.fleet_brokers mosquitto|rabbitmq       what the station relies on
    python -m tools.fleet_brokers rabbitmq --restart-under-load 100 [--one-session]
        [--nice 10] [--sessions 100]       a restart's time and boot phases beside load

Both offer start(), kill() (SIGKILL: a crash), stop() (SIGTERM: an orderly stop), close()
(ends everything the object started, from any thread, more than once), running, port, log
and connects_per_s(prefix) -> {epoch second: MQTT connections accepted}, read from the
broker's own log.

RabbitMQ runs as this user's own node on free ports, nothing shared with a system one:
its own RABBITMQ_NODENAME, RABBITMQ_MNESIA_BASE, RABBITMQ_LOG_BASE, a config file with the
MQTT listener's port, RABBITMQ_NODE_PORT (AMQP), RABBITMQ_DIST_PORT (Erlang distribution),
its own epmd (ERL_EPMD_PORT; started and ended by this module, not left as a daemon) and
its own HOME (the Erlang cookie). Debian's package:
`apt-get install -y rabbitmq-server` (3.10.8 on Debian 12); tools/setup.sh does not install
it (`make test` does not need it); `make fleet BROKER=rabbitmq` installs it on demand.
"""
import datetime
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from tools.devicefiles import ROOT

sys.path.insert(0, os.path.join(ROOT, "tests", "system"))
import mosquitto  # noqa: E402  (tests/system/mosquitto.py: the test broker helper)

HOST = mosquitto.HOST
RABBIT_BIN = "/usr/lib/rabbitmq/bin"
RABBIT_INSTALL = "apt-get install -y rabbitmq-server"


class MosquittoBroker:
    name = "mosquitto"

    def __init__(self, directory, users=None):
        os.makedirs(directory, exist_ok=True)
        self.b = mosquitto.Mosquitto(directory=directory, users=users,
                                     extra_config="max_queued_messages 1000")
        # Connection notices only: "log_type all" logs every PUBLISH of the fleet.
        with open(self.b.conf) as f:
            conf = f.read().replace("log_type all", "log_type error\nlog_type warning\n"
                                    "log_type notice\nlog_timestamp true")
        with open(self.b.conf, "w") as f:
            f.write(conf)
        if os.path.exists(self.b.log):
            os.remove(self.b.log)
        self.port = self.b.port
        self.log = self.b.log
        self.shared_subscriptions = True
        self._lock = threading.Lock()
        self._closed = False

    @staticmethod
    def available():
        return mosquitto.available()

    def start(self):
        with self._lock:
            if self._closed:
                raise RuntimeError("mosquitto: closed")
            self.b.start()

    def kill(self):
        self.b.kill()

    def stop(self):
        self.b.stop()

    @property
    def running(self):
        return self.b.running

    def close(self):
        with self._lock:
            self._closed = True
            self.b.stop()

    def connects_per_s(self, client_prefix):
        per_s = {}
        try:
            with open(self.log, errors="replace") as f:
                for line in f:
                    if "New client connected" in line and (" as %s" % client_prefix) in line:
                        sec = int(line.split(":", 1)[0])
                        per_s[sec] = per_s.get(sec, 0) + 1
        except (OSError, ValueError):
            pass
        return per_s


def _free_port():
    s = socket.socket()
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


class RabbitBroker:
    """RabbitMQ with rabbitmq_mqtt on its own ports (see the module docstring)."""
    name = "rabbitmq"

    def __init__(self, directory, users=None):
        self.dir = os.path.abspath(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.port = _free_port()
        self.amqp_port = _free_port()
        self.dist_port = _free_port()
        self.epmd_port = _free_port()
        self.node = "fleet%d@localhost" % self.port
        self.log = os.path.join(self.dir, "log", self.node + ".log")
        self.shared_subscriptions = False
        conf = os.path.join(self.dir, "rabbitmq.conf")
        lines = ["listeners.tcp.default = %d" % self.amqp_port,
                 "mqtt.listeners.tcp.default = %d" % self.port,
                 "mqtt.allow_anonymous = %s" % ("false" if users else "true"),
                 "log.file.level = info", "log.console = false",
                 "loopback_users = none",
                 # The fleet's 100+ connections, each with a session queue.
                 "mqtt.tcp_listen_options.backlog = 1024"]
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(os.path.join(self.dir, "enabled_plugins"), "w") as f:
            f.write("[rabbitmq_mqtt].\n")
        self.users = users or {}
        self.env = dict(os.environ, HOME=self.dir, RABBITMQ_NODENAME=self.node,
                        RABBITMQ_MNESIA_BASE=os.path.join(self.dir, "mnesia"),
                        RABBITMQ_LOG_BASE=os.path.join(self.dir, "log"),
                        RABBITMQ_CONFIG_FILE=conf[:-len(".conf")],
                        RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(self.dir, "enabled_plugins"),
                        RABBITMQ_NODE_PORT=str(self.amqp_port),
                        RABBITMQ_DIST_PORT=str(self.dist_port),
                        ERL_EPMD_PORT=str(self.epmd_port),
                        # epmd is ours (_start_epmd): the node must not start a daemon
                        # of its own that outlives it.
                        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-start_epmd false",
                        RABBITMQ_PID_FILE=os.path.join(self.dir, "rabbit.pid"))
        self.proc = None
        self.epmd = None
        self._groups = []          # every node's process group this object started
        self._lock = threading.Lock()
        self._closed = False
        self._started_users = False

    @staticmethod
    def available():
        return os.path.exists(os.path.join(RABBIT_BIN, "rabbitmq-server"))

    @staticmethod
    def install(out=print):
        out("fleet: RabbitMQ is not installed: %s" % RABBIT_INSTALL)
        r = subprocess.run(RABBIT_INSTALL.split(), env=dict(os.environ,
                           DEBIAN_FRONTEND="noninteractive"), capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError("%s failed: %s" % (RABBIT_INSTALL, r.stderr[-500:]))

    def _start_epmd(self):
        """The node's epmd, on the fleet's own port, as this tool's child: ended by pid in
        close(), never left behind as the daemon `erl` would start."""
        if self.epmd is not None and self.epmd.poll() is None:
            return
        self.epmd = subprocess.Popen(["epmd", "-port", str(self.epmd_port)],
                                     env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        if not mosquitto.wait_port(self.epmd_port):
            raise RuntimeError("epmd did not listen on %d" % self.epmd_port)

    def start(self, timeout=120.0):
        with self._lock:
            if self._closed:
                raise RuntimeError("rabbitmq: closed")
            self._start_epmd()
            # Its own session: the node is its own scheduling group (autogroup), as a
            # broker on its own machine; a terminal's Ctrl-C does not reach it.
            self.proc = subprocess.Popen([os.path.join(RABBIT_BIN, "rabbitmq-server")],
                                         env=self.env, cwd=self.dir,
                                         stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, start_new_session=True)
            self._groups.append(self.proc.pid)
        proc = self.proc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._closed:
                raise RuntimeError("rabbitmq: closed while starting")
            if proc.poll() is not None:
                raise RuntimeError("rabbitmq-server exited (%s); see %s"
                                   % (proc.returncode, self.log))
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError("RabbitMQ's MQTT listener not up in %.0f s" % timeout)
        if self.users and not self._started_users:
            for user, password in self.users.items():
                self.ctl("add_user", user, password)
                self.ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
            self._started_users = True

    def ctl(self, *args):
        return subprocess.run([os.path.join(RABBIT_BIN, "rabbitmqctl"), "-n", self.node]
                              + list(args), env=self.env, capture_output=True, text=True,
                              timeout=120)

    def _signal(self, sig, wait_s=60.0):
        """`sig` to the node's whole process group (the server script, beam.smp and its
        helpers), then wait until none of it is left (SIGKILL after wait_s)."""
        proc = self.proc
        if proc is None:
            return
        _end_group(proc.pid, sig, wait_s)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def kill(self):
        self._signal(signal.SIGKILL)

    def stop(self):
        self._signal(signal.SIGTERM)

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def close(self, wait_s=5.0):
        """Ends every node this object started (one still booting in a fault's thread
        included) and then its epmd. Safe to call from any exit path, more than once.
        SIGKILL after wait_s: a node early in its boot ignores SIGTERM, and the fleet's
        node holds nothing worth waiting for (the next run starts from an empty folder)."""
        with self._lock:
            self._closed = True
            groups = list(self._groups)
        for pgid in groups:
            _end_group(pgid, signal.SIGTERM, wait_s)
        if self.proc is not None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        if self.epmd is not None and self.epmd.poll() is None:
            self.epmd.kill()
            self.epmd.wait(5)

    def pids(self):
        """The pids of everything of this broker still alive (the tests check the end)."""
        out = []
        if self.epmd is not None and self.epmd.poll() is None:
            out.append(self.epmd.pid)
        for pgid in self._groups:
            out += _group_pids(pgid)
        return out

    # A node's boot, from its log: (phase, the line that ends it)
    BOOT_PHASES = (("erlang_vm_s", None),                   # the first line it logs
                   ("prelaunch_s", "Starting RabbitMQ"),
                   ("core_s", "Running boot step recovery"),  # mnesia, core boot steps
                   ("queues_recovered_s", "queues of type rabbit_classic_queue"),
                   ("mqtt_listener_s", "started MQTT TCP listener"))

    def boot_phases(self, since):
        """{phase: s after `since` (epoch s, when start() was called)} of the first boot
        logged after `since`, plus "queues_recovered" (the node's own line)."""
        out = {}
        try:
            with open(self.log, errors="replace") as f:
                for line in f:
                    try:
                        t = datetime.datetime.fromisoformat(line.split(" [", 1)[0])
                    except ValueError:
                        continue
                    if t.timestamp() < since:
                        continue
                    for name, key in self.BOOT_PHASES:
                        if name not in out and (key is None or key in line):
                            out[name] = round(t.timestamp() - since, 2)
                            if name == "queues_recovered_s":
                                out["queues_recovered"] = line.split("> ", 1)[-1].strip()
                    if "mqtt_listener_s" in out:
                        break
        except OSError:
            pass
        return out

    def connects_per_s(self, client_prefix):
        """From 'accepting MQTT connection ... client id: <id>' lines of the node's log."""
        per_s = {}
        try:
            with open(self.log, errors="replace") as f:
                for line in f:
                    if "accepting MQTT connection" not in line \
                            or ("client id: %s" % client_prefix) not in line:
                        continue
                    stamp = line.split(" [", 1)[0]
                    t = datetime.datetime.fromisoformat(stamp)
                    sec = int(t.timestamp())
                    per_s[sec] = per_s.get(sec, 0) + 1
        except (OSError, ValueError):
            pass
        return per_s


def _group_pids(pgid):
    """Live (not zombie) processes of process group `pgid`."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                out.append(int(name))
    return out


def _end_group(pgid, sig, wait_s):
    """`sig` to process group `pgid`; SIGKILL what is left after wait_s; wait until it is
    empty. The group outlives its leader (beam.smp when the script died first)."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + wait_s
    while True:
        if not _group_pids(pgid):
            return
        if time.monotonic() >= deadline:
            if sig == signal.SIGKILL:
                return
            sig = signal.SIGKILL
            deadline = time.monotonic() + 10
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
        time.sleep(0.1)


def leftovers(directory):
    """Live processes of a fleet run in `directory` (its storage): a RabbitMQ node and
    its epmd (their environment names the node's folder below it) and stations (their
    working directory is below it). Never this process or its parents."""
    directory = os.path.abspath(directory)
    mark = ("RABBITMQ_MNESIA_BASE=" + directory + os.sep).encode()
    mine, pid = set(), os.getpid()
    while pid > 1 and pid not in mine:
        mine.add(pid)
        try:
            with open("/proc/%d/stat" % pid) as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in mine:
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            with open("/proc/%s/environ" % name, "rb") as f:
                env = f.read()
            cwd = os.readlink("/proc/%s/cwd" % name)
        except OSError:
            continue
        if mark in env or cwd == directory or cwd.startswith(directory + os.sep):
            found.append(int(name))
    return found


def end_leftovers(directory):
    """SIGKILL what a run in `directory` left running (a run killed by SIGKILL cleans up
    nothing); returns the pids ended."""
    pids = leftovers(directory)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return pids


BROKERS = {"mosquitto": MosquittoBroker, "rabbitmq": RabbitBroker}


def clean(directory):
    shutil.rmtree(directory, ignore_errors=True)


# -- what the station relies on, checked on a broker ------------------------------------------
def check_features(broker, wait=1.5):
    """{feature: (ok, detail)} for what the station and the fleet's backend rely on:
    MQTT 3.1.1, QoS 1 both ways, retained messages (to an exact and to a wildcard
    subscription), a persistent session (clean_session=False) queueing QoS 1 while the
    client is away, a retained last will, and shared subscriptions ($share/group/...)."""
    import paho.mqtt.client as mqtt
    port = broker.port
    out = {}

    def client(cid, clean=True, will=None):
        got = []
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=clean,
                        protocol=mqtt.MQTTv311)
        c.on_message = lambda cl, u, m: got.append((m.topic, bytes(m.payload), m.retain,
                                                    m.qos))
        flags = {}
        c.on_connect = lambda cl, u, f, rc, p=None: flags.update(
            session_present=f.session_present, rc=int(rc.value if hasattr(rc, "value") else rc))
        if will:
            c.will_set(will[0], will[1], qos=1, retain=True)
        c.connect(HOST, port, keepalive=10)
        c.loop_start()
        t = time.monotonic() + 5
        while "rc" not in flags and time.monotonic() < t:
            time.sleep(0.05)
        return c, got, flags

    def stop(c):
        c.loop_stop()
        c.disconnect()

    pub, _, f = client("chk-pub")
    out["mqtt_3_1_1"] = (f.get("rc") == 0, "CONNACK rc %s" % f.get("rc"))
    # QoS 1 and retained
    sub, got, _ = client("chk-sub")
    sub.subscribe("chk/+/q", 1)
    time.sleep(wait / 2)
    pub.publish("chk/a/q", b"q1", qos=1).wait_for_publish(5)
    pub.publish("chk/a/status", b"ret", qos=1, retain=True).wait_for_publish(5)
    time.sleep(wait)
    out["qos1"] = (("chk/a/q", b"q1", False, 1) in got, repr(got[:2]))
    exact, g1, _ = client("chk-exact")
    exact.subscribe("chk/a/status", 1)
    wild, g2, _ = client("chk-wild")
    wild.subscribe("chk/+/status", 1)
    time.sleep(wait)
    out["retained_exact_topic"] = (any(m[1] == b"ret" and m[2] for m in g1), repr(g1[:1]))
    out["retained_wildcard"] = (any(m[1] == b"ret" and m[2] for m in g2), repr(g2[:1]))
    for c in (sub, exact, wild):
        stop(c)
    # persistent session
    p, _, f1 = client("chk-persist", clean=False)
    p.subscribe("chk/p/cmd", 1)
    time.sleep(wait / 2)
    stop(p)
    time.sleep(wait / 2)
    pub.publish("chk/p/cmd", b"while-away", qos=1).wait_for_publish(5)
    time.sleep(wait / 2)
    p, got, f2 = client("chk-persist", clean=False)
    time.sleep(wait)
    out["persistent_session"] = (any(m[1] == b"while-away" for m in got)
                                 and bool(f2.get("session_present")),
                                 "session_present %s, queued %r" % (f2.get("session_present"),
                                                                    got[:1]))
    stop(p)
    # last will: the client's socket closes without DISCONNECT
    w, _, _ = client("chk-will", will=("chk/w/status", b"gone"))
    watcher, gw, _ = client("chk-watch")
    watcher.subscribe("chk/w/status", 1)
    time.sleep(wait / 2)
    w.loop_stop()
    w.socket().close()
    time.sleep(wait * 2)
    late, gl, _ = client("chk-late")
    late.subscribe("chk/w/status", 1)
    time.sleep(wait)
    out["last_will"] = (any(m[1] == b"gone" for m in gw), repr(gw[:1]))
    out["last_will_retained"] = (any(m[1] == b"gone" and m[2] for m in gl), repr(gl[:1]))
    for c in (watcher, late):
        stop(c)
    # shared subscriptions: two consumers share one group's messages
    a, ga, _ = client("chk-share-a")
    b, gb, _ = client("chk-share-b")
    for c in (a, b):
        c.subscribe("$share/backend/chk/s/+", 1)
    time.sleep(wait / 2)
    for i in range(20):
        pub.publish("chk/s/%d" % i, b"%d" % i, qos=1)
    time.sleep(wait)
    ok = len(ga) + len(gb) == 20 and ga and gb
    out["shared_subscription"] = (bool(ok), "consumer a %d, b %d of 20" % (len(ga), len(gb)))
    for c in (a, b, pub):
        stop(c)
    # clean up the retained messages
    return out


# -- a restart under load (docs/fleet.md, "RabbitMQ at 100") --------------------------------
# A stand-in for a station's CPU use: busy 2 ms of every 100 ms (a station takes ~2 %).
LOAD_PROC = ("import time\nwhile True:\n t = time.perf_counter()\n"
             " while time.perf_counter() - t < 0.002: pass\n time.sleep(0.098)\n")


def restart_under_load(broker, sessions=100, load=100, own_sessions=True, nice=0,
                       settle_s=15.0, timeout=300.0):
    """Kill `broker` (SIGKILL) holding `sessions` persistent MQTT sessions, beside `load`
    processes that each need ~2 % of a core (in a session each or all in ours, at `nice`),
    and time its start again: {"restart_s", "boot_phases" (RabbitMQ), "load_avg"}."""
    import paho.mqtt.client as mqtt
    broker.start(timeout=timeout)
    clients = []
    procs = []
    try:
        for i in range(sessions):
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="load-%03d" % i,
                            clean_session=False)
            c.connect(HOST, broker.port)
            c.loop_start()
            c.subscribe("cp/load-%03d/cmd" % i, 1)
            clients.append(c)
        time.sleep(3)
        for _ in range(load):
            procs.append(subprocess.Popen(
                [sys.executable, "-c", LOAD_PROC], start_new_session=own_sessions,
                process_group=None if own_sessions else 0))
            if nice:
                os.setpriority(os.PRIO_PROCESS, procs[-1].pid, nice)
        time.sleep(settle_s)
        broker.kill()
        for c in clients:
            c.loop_stop()
        time.sleep(2)
        t0, m0 = time.time(), time.monotonic()
        r = {"sessions": sessions, "load_procs": load, "own_sessions": own_sessions,
             "nice": nice, "load_avg_before": os.getloadavg()[0]}
        try:
            broker.start(timeout=timeout)
            r["restart_s"] = round(time.monotonic() - m0, 1)
        except RuntimeError as e:
            r["error"] = str(e)
        r["load_avg"] = os.getloadavg()[0]
        time.sleep(2)                       # the node's log lines of that moment
        if hasattr(broker, "boot_phases"):
            r["boot_phases"] = broker.boot_phases(t0)
        return r
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
        broker.close()


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog="python -m tools.fleet_brokers",
                                description="check a broker for what the station relies on")
    p.add_argument("broker", choices=sorted(BROKERS))
    p.add_argument("--dir", default=os.path.join(ROOT, "build", "fleet-check"))
    p.add_argument("--restart-under-load", type=int, metavar="PROCS",
                   help="instead: time a restart (SIGKILL) with --sessions persistent "
                   "sessions beside PROCS processes of ~2 %% CPU each (0: alone)")
    p.add_argument("--sessions", type=int, default=100)
    p.add_argument("--one-session", action="store_true",
                   help="the load processes in this tool's session (one autogroup)")
    p.add_argument("--nice", type=int, default=0, help="the load processes' nice")
    args = p.parse_args(argv)
    cls = BROKERS[args.broker]
    if not cls.available():
        if args.broker == "rabbitmq":
            cls.install()
        else:
            print("mosquitto is not installed", file=sys.stderr)
            return 2
    clean(os.path.join(args.dir, args.broker))
    b = cls(os.path.join(args.dir, args.broker))
    if args.restart_under_load is not None:
        print(restart_under_load(b, args.sessions, args.restart_under_load,
                                 not args.one_session, args.nice))
        return 0
    b.start()
    try:
        r = check_features(b)
    finally:
        b.close()
    for k, (ok, detail) in r.items():
        print("%-22s %-4s %s" % (k, "ok" if ok else "FAIL", detail))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Virtual stations for backend developers: the real firmware, in real time, on any broker.

    make station BROKER=host:port [CONFIG=station.json] [ID=cp-0001] [N=20]
    python -m tools.station --broker HOST:PORT [--config FILE] [--id ID] [-n N]
        [--user U --password P] [--tls-ca CA [--cert C --key K]] [--prefix P]
        [--storage DIR] [--fresh] [--heap SIZE] [--no-mqtt] [--set KEY=VALUE ...]
    make station STATION_ARGS="--set backend=ocpp16 --set ocpp_url=ws://host:port/ocpp
        --set ocpp_id=CP-7"          (an OCPP 1.6J central system instead of a broker)

Each station is one MicroPython process (tools/station_sim.py) running firmware.station on
the simulator's board with the wall clock, a simulated EV and an SDM630 meter, connected to
the broker like a station in the field, until Ctrl-C (or `quit`). The process is the ESP32
stand-in (the production image's 32-bit build, with its own heap); a broker with TLS needs
PyPI's 64-bit port instead (the stand-in has no mbedtls): --tls-ca picks it.

The terminal drives the EVs and shows each station's state and every MQTT message it sends
(->) and receives (<-). Commands (`help` lists them) go to the selected station, or to the
station named first (`3 plug`, `cp-0003 plug`, `all unplug`).

`--set KEY=VALUE` sets one firmware setting (tools/setopt.py), over CONFIG and the flags.
With `--set backend=ocpp16` the stations speak OCPP 1.6J to `ocpp_url` (docs/ocpp.md) and no
broker is needed; a station's identity is `ocpp_id` (with -n: each station's id). A wss:// URL runs PyPI's 64-bit port, like TLS to a broker.

CONFIG is a JSON object of firmware config keys (docs/mqtt.md, firmware/config.py), e.g.
{"station_id": "cp-0042", "mqtt_user": "cp-0042", "mqtt_password": "...",
 "auth_mode": "backend", "broker": "mqtt.example.com:8883", "mqtt_tls": true,
 "mqtt_ca_file": "ca.crt"}; the flags override it. Certificate files are copied into each
station's storage (its flash), as they would be onto the device.

Each station keeps its flash in STORAGE/<id>/ (default build/station): sessions, the outbox
and the meter's register carry over to the next run, as on a real station; --fresh wipes it.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

from tools.devicefiles import MICROPYTHON, MICROPYTHON64, ROOT, micropython_env

DEFAULT_STORAGE = os.path.join(ROOT, "build", "station")
DEFAULT_HEAP = "512K"        # the firmware's own needs fit 112K; the simulation shares it
# PyPI's 64-bit port (TLS) has nothing frozen: every module's bytecode is in its heap, and
# its objects are twice the size.
DEFAULT_HEAP_64 = "4M"
METER_START_WH = 1234567     # a meter that has seen use: sessions are differences
QUIT_WAIT_S = 5.0

COMMANDS = (
    ("plug", "", "plug the EV in (state B)"),
    ("charge", "[AMPS]", "the EV asks for current (state C), drawing up to AMPS (16)"),
    ("pause", "", "the EV stops asking (C -> B)"),
    ("unplug", "", "unplug the EV (ends the session: its record goes to the backend)"),
    ("fault", "NAME [off]", "inject a fault: diode_short, cp_short_pe, cp_open, pe_loss, "
                            "rcd_trip, contactor_welded, contactor_stuck_open, ev_overdraw"),
    ("temp", "DEGREES", "the temperature sensor ramps to DEGREES C over 10 s"),
    ("tag", "IDTAG", "present an RFID card at the station"),
    ("status", "", "the station's status now"),
)
FAULTS = ("diode_short", "cp_short_pe", "cp_open", "pe_loss", "rcd_trip", "contactor_welded",
          "contactor_stuck_open", "ev_overdraw")


class UsageError(ValueError):
    pass


def station_ids(base, n):
    """n distinct ids from `base`: cp-0001 -> cp-0001 .. cp-00NN (a trailing number counts
    up, zero-padded to its width); without one, base-1 .. base-N."""
    if n == 1:
        return [base]
    digits = len(base) - len(base.rstrip("0123456789"))
    if digits:
        stem, first = base[:-digits], int(base[-digits:])
        return ["%s%0*d" % (stem, digits, first + k) for k in range(n)]
    return ["%s-%d" % (base, k + 1) for k in range(n)]


def check_command(words):
    """Raise UsageError unless `words` is a station command with valid arguments."""
    name = words[0]
    names = [c[0] for c in COMMANDS]
    if name not in names:
        raise UsageError("unknown command %r (help lists them)" % name)
    args = words[1:]
    if name == "charge" and args:
        amps = _number(args[0], "AMPS")
        if not 1 <= amps <= 80:
            raise UsageError("charge: AMPS 1..80")
    elif name == "fault":
        if not args or args[0] not in FAULTS:
            raise UsageError("fault: one of %s" % ", ".join(FAULTS))
        if len(args) > 1 and args[1] != "off":
            raise UsageError("fault NAME [off]")
    elif name == "temp":
        if not args:
            raise UsageError("temp DEGREES")
        _number(args[0], "DEGREES")
    elif name == "tag" and not args:
        raise UsageError("tag IDTAG")


def _number(text, what):
    try:
        return float(text)
    except ValueError:
        raise UsageError("%s: not a number: %r" % (what, text))


def load_config(args):
    """The firmware config every station gets (before its station_id), and the broker."""
    cfg = {}
    if args.config:
        with open(args.config) as f:
            cfg = json.load(f)
        if not isinstance(cfg, dict):
            raise UsageError("%s: expected a JSON object" % args.config)
    from tools import setopt
    try:
        cfg.update(setopt.parse(getattr(args, "set", None)))
    except setopt.SetError as e:
        raise UsageError(str(e))
    broker = args.broker or cfg.pop("broker", None)
    cfg.pop("broker", None)
    if setopt.uses_ocpp(cfg):
        if not cfg.get("ocpp_url"):
            raise UsageError("backend=ocpp16 needs --set ocpp_url=ws://host:port/path")
        if broker:
            raise UsageError("backend=ocpp16: no broker (the central system is the backend)")
        base = args.id or cfg.get("station_id") or "cp-0001"
        from firmware.config import Config, ConfigError
        try:
            Config(dict(cfg, station_id=base))
        except ConfigError as e:
            raise UsageError("config: %s" % e)
        return cfg, base, {}
    if not broker:
        raise UsageError("no broker: BROKER=host:port (or \"broker\" in the config file)")
    host, _, port = broker.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError("broker %r: expected host:port" % broker)
    cfg["mqtt_host"] = host.strip("[]")
    # A developer's virtual stations connect at once (tools/fleet.py keeps the firmware's
    # randomized first connect, docs/mqtt.md "Reconnect storms").
    cfg.setdefault("mqtt_boot_spread_s", 0)
    cfg["mqtt_port"] = int(port)
    for flag, key in (("user", "mqtt_user"), ("password", "mqtt_password"),
                      ("prefix", "mqtt_prefix"), ("tls_ca", "mqtt_ca_file"),
                      ("cert", "mqtt_cert_file"), ("key", "mqtt_key_file")):
        value = getattr(args, flag)
        if value is not None:
            cfg[key] = value
    if args.tls_ca:
        cfg["mqtt_tls"] = True
    base = args.id or cfg.get("station_id") or "cp-0001"
    # Certificates: copied onto each station's flash, named there as on a device.
    files = {}
    base_dir = os.path.dirname(os.path.abspath(args.config)) if args.config else os.getcwd()
    for key, name in (("mqtt_ca_file", "ca.crt"), ("mqtt_cert_file", "client.crt"),
                      ("mqtt_key_file", "client.key")):
        if cfg.get(key):
            path = os.path.join(base_dir, cfg[key])
            if not os.path.exists(path):
                raise UsageError("%s: %s not found" % (key, path))
            files[name] = path
            cfg[key] = name
    from firmware.config import Config, ConfigError
    try:
        Config(dict(cfg, station_id=base))
    except ConfigError as e:
        raise UsageError("config: %s" % e)
    return cfg, base, files


class Child:
    """One station process and the thread that prints what it says."""

    def __init__(self, index, sid, cfg, files, storage, heap, runtime, show_mqtt, out):
        self.index = index
        self.id = sid
        self.show_mqtt = show_mqtt
        self.out = out
        self.bye = threading.Event()
        self.states = []
        self.dir = os.path.join(storage, sid)
        os.makedirs(os.path.join(self.dir, "data"), exist_ok=True)
        for name, path in files.items():
            shutil.copyfile(path, os.path.join(self.dir, name))
        self._meter_file = os.path.join(self.dir, "meter.json")
        meter_wh = METER_START_WH
        if os.path.exists(self._meter_file):
            with open(self._meter_file) as f:
                meter_wh = json.load(f)["energy_wh"]
        run = {"config": dict(cfg, station_id=sid), "storage": "data", "meter_wh": meter_wh}
        run_path = os.path.join(self.dir, "run.json")
        with open(run_path, "w") as f:
            json.dump(run, f)
        env = micropython_env(fakes=False, runtime=runtime)
        # Its own session: Ctrl-C reaches this tool, which then shuts each station down.
        # The station runs in its folder, the device's flash root (certificates, data/).
        self.proc = subprocess.Popen(
            [runtime, "-X", "heapsize=" + heap, "-m", "tools.station_sim", run_path],
            cwd=self.dir, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def send(self, line):
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            self.out("[%s] the station process has ended" % self.id)

    def _read(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            try:
                rec = json.loads(line)
            except ValueError:
                self.out("[%s] %s" % (self.id, line))
                continue
            if not isinstance(rec, dict):
                self.out("[%s] %s" % (self.id, line))
                continue
            self._show(rec)

    def _show(self, rec):
        k = rec.get("k")
        tag = "[%s]" % self.id
        if k == "state":
            self.states.append(rec["state"])
            self.out("%s %s" % (tag, format_state(rec)))
        elif k == "mqtt":
            if self.show_mqtt:
                arrow = "->" if rec["dir"] == "out" else "<-"
                retained = " (retained)" if rec.get("retain") else ""
                self.out("%s %s %s%s %s" % (tag, arrow, rec["topic"], retained,
                                            _compact(rec["payload"])))
        elif k == "reply":
            self.out("%s %s" % (tag, _compact(rec)))
        elif k == "error":
            self.out("%s error: %s" % (tag, rec["error"]))
        elif k == "reset":
            self.out("%s reset (%s): the firmware starts again" % (tag, rec.get("cause")))
        elif k == "bye":
            with open(self._meter_file, "w") as f:
                json.dump({"energy_wh": rec["energy_wh"]}, f)
            self.out("%s stopped (offline status published)" % tag)
            self.bye.set()
        else:
            self.out("%s %s" % (tag, _compact(rec)))

    def stop(self):
        if self.proc.poll() is None:
            self.send("quit")

    def wait(self, timeout):
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.thread.join(2)


def format_state(rec):
    faults = ", ".join(rec["faults"]) or "-"
    link = {True: "online", False: "offline", None: "no backend"}[rec.get("online")]
    return ("%-3s offered %4.1f A  EV %4.1f A  contactor %-6s  meter %d Wh  faults %s  %s"
            % (rec["state"], rec["offered_ma"] / 1000, rec["current_ma"] / 1000,
               "closed" if rec["contactor"] else "open", rec["energy_wh"], faults, link))


def _compact(payload):
    if isinstance(payload, str):
        return payload
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def print_help(out):
    out("commands (to the selected station; `N cmd`, `ID cmd` or `all cmd` picks others):")
    for name, args, what in COMMANDS:
        out("  %-22s %s" % ((name + " " + args).strip(), what))
    out("  %-22s %s" % ("use N|ID", "select a station"))
    out("  %-22s %s" % ("list", "the stations"))
    out("  %-22s %s" % ("quit (or Ctrl-C)", "stop every station (offline status, clean)"))


class Terminal:
    """The user's side: reads command lines and routes them to the stations."""

    def __init__(self, children, out):
        self.children = children
        self.out = out
        self.selected = children[0]

    def _find(self, word):
        if word == "all":
            return list(self.children)
        for c in self.children:
            if word == c.id or (word.isdigit() and int(word) == c.index):
                return [c]
        return None

    def handle(self, line):
        """One command line. Returns False on quit."""
        words = line.split()
        if not words:
            return True
        if words[0] in ("quit", "exit"):
            return False
        if words[0] == "help":
            print_help(self.out)
            return True
        if words[0] == "list":
            for c in self.children:
                mark = "*" if c is self.selected else " "
                self.out("%s %d %s (pid %d)" % (mark, c.index, c.id, c.proc.pid))
            return True
        if words[0] == "use":
            found = self._find(words[1]) if len(words) > 1 else None
            if not found or len(found) != 1:
                self.out("use N|ID (list shows them)")
            else:
                self.selected = found[0]
                self.out("selected %s" % self.selected.id)
            return True
        targets = [self.selected]
        if len(words) > 1:
            found = self._find(words[0])
            if found is not None:
                targets = found
                words = words[1:]
        try:
            check_command(words)
        except UsageError as e:
            self.out(str(e))
            return True
        for c in targets:
            c.send(" ".join(words))
        return True


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.station", description=__doc__.split("\n")[0])
    p.add_argument("--broker", help="host:port of the MQTT broker")
    p.add_argument("--config", help="JSON file of firmware config keys (and \"broker\")")
    p.add_argument("--id", help="station id (with -n: the first; the others count up)")
    p.add_argument("-n", type=int, default=1, help="how many stations (default 1)")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--prefix", help="topic prefix (mqtt_prefix, default cp)")
    p.add_argument("--tls-ca", help="CA file: TLS with certificate verification (64-bit port)")
    p.add_argument("--cert", help="client certificate (with --tls-ca)")
    p.add_argument("--key", help="client key (with --cert)")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="the stations' flash folders")
    p.add_argument("--fresh", action="store_true", help="wipe the stations' flash first")
    p.add_argument("--heap", default=None,
                   help="MicroPython heap of each station (default %s; %s on the 64-bit port)"
                   % (DEFAULT_HEAP, DEFAULT_HEAP_64))
    p.add_argument("--no-mqtt", action="store_true", help="do not print MQTT messages")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a firmware setting (repeatable), e.g. --set backend=ocpp16")
    args = p.parse_args(argv)
    try:
        if args.n < 1:
            raise UsageError("-n must be at least 1")
        cfg, base, files = load_config(args)
    except (UsageError, OSError, ValueError) as e:
        print("station: %s" % e, file=sys.stderr)
        return 2
    ocpp = cfg.get("backend") == "ocpp16"
    if ocpp and args.n > 1:
        cfg["ocpp_id"] = ""        # one identity each: the station ids, counting up
    tls = cfg.get("ocpp_url", "").startswith("wss://") if ocpp else cfg.get("mqtt_tls")
    runtime = MICROPYTHON64 if tls else MICROPYTHON
    if args.heap is None:
        args.heap = DEFAULT_HEAP_64 if runtime == MICROPYTHON64 else DEFAULT_HEAP
    ids = station_ids(base, args.n)
    if len(set(ids)) != len(ids) or any(len(i) > 64 for i in ids):
        print("station: ids %s..%s are not distinct valid ids" % (ids[0], ids[-1]),
              file=sys.stderr)
        return 2

    lock = threading.Lock()

    def out(text):
        with lock:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    def stop_signal(signum, frame):
        raise KeyboardInterrupt()

    signal.signal(signal.SIGTERM, stop_signal)
    # Ctrl-C stops the stations even when this was started with SIGINT ignored (a job put
    # in the background by a non-interactive shell, a test runner's worker): it is how the
    # tool is meant to be ended.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    where = ("PyPI's 64-bit MicroPython (TLS: the stand-in has no mbedtls)"
             if runtime == MICROPYTHON64 else "the ESP32 stand-in")
    if ocpp:
        peer = "OCPP 1.6J central system %s" % cfg["ocpp_url"]
    else:
        peer = "broker %s:%d%s" % (cfg["mqtt_host"], cfg["mqtt_port"],
                                   " with TLS" if cfg.get("mqtt_tls") else "")
    out("%d station%s (%s) on %s, one process each, heap %s; %s; flash in %s"
        % (len(ids), "s" if len(ids) > 1 else "", ", ".join(ids) if len(ids) <= 4 else
           "%s .. %s" % (ids[0], ids[-1]), where, args.heap, peer, args.storage))
    out("type help for the commands; Ctrl-C stops")
    children = []
    try:
        for k, sid in enumerate(ids):
            if args.fresh:
                shutil.rmtree(os.path.join(args.storage, sid), ignore_errors=True)
            children.append(Child(k + 1, sid, cfg, files, args.storage, args.heap, runtime,
                                  not args.no_mqtt, out))
        term = Terminal(children, out)
        for line in sys.stdin:
            if not term.handle(line):
                break
        else:
            # End of input (a script piped in): keep running until Ctrl-C.
            while any(c.proc.poll() is None for c in children):
                time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)     # a second Ctrl-C must not cut this
        for c in children:
            c.stop()
        deadline = time.monotonic() + QUIT_WAIT_S
        for c in children:
            c.wait(max(0.1, deadline - time.monotonic()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make station` (tools/station.py): virtual stations, the real firmware on the stand-in in
real time, against a real mosquitto; and the Home Assistant discovery configs they publish
(firmware/ha_discovery.py), checked against what Home Assistant's MQTT integration requires.
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from tools.cpo import Console, wait_first
from tools.devicefiles import ROOT, ensure_standin
from tools.station import check_command, station_ids, UsageError

WAIT_S = 20.0


class StationTool:
    """The tool as a user runs it: lines in on stdin, its terminal output collected."""

    def __init__(self, argv):
        # Its own process group: Ctrl-C goes to make and the tool, as from a terminal.
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1, start_new_session=True)
        self.lines = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def type(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait_line(self, predicate, timeout=WAIT_S, start=0):
        return wait_first(self._cond, self.lines, predicate, timeout, start)

    def mark(self):
        with self._cond:
            return len(self.lines)

    def ctrl_c(self, timeout=WAIT_S):
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise
        self._reader.join(5)

    def kill(self):
        # SIGTERM first: the tool stops its stations, and a make or build it runs removes
        # its half-written target (a SIGKILL there would leave an empty binary behind).
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def text(self):
        with self._cond:
            return "\n".join(self.lines)


@pytest.fixture(scope="module", autouse=True)
def standin_built():
    # Built here, not by the tool under test: a rebuild (after a change to firmware/) would
    # otherwise run inside the tool's process group and eat the tests' waiting time.
    ensure_standin()


@pytest.fixture
def tools():
    started = []

    def start(argv):
        t = StationTool(argv)
        started.append(t)
        return t
    yield start
    for t in started:
        t.kill()


@pytest.fixture
def console(broker):
    c = Console(broker.host, broker.port)
    yield c
    c.close()


def _status(console, sid, online, start=0, timeout=WAIT_S):
    topic = "cp/%s/status" % sid
    return console.wait_for(lambda t, p, r: t == topic and isinstance(p, dict)
                            and p.get("online") is online, timeout, start)


# -- the virtual station ------------------------------------------------------------------

def test_make_station_connects_answers_the_backend_and_charges_from_the_terminal(
        broker, console, tools, tmp_dir):
    sid = "vs-make"
    cfg_path = os.path.join(tmp_dir, "station.json")
    with open(cfg_path, "w") as f:
        json.dump({"station_id": sid, "ha_discovery": True, "telemetry_interval_s": 5}, f)
    console.subscribe("cp/%s/#" % sid)
    console.subscribe("homeassistant/#")
    tool = tools(["make", "-s", "station", "BROKER=%s:%d" % (broker.host, broker.port),
                  "CONFIG=" + cfg_path,
                  "STATION_ARGS=--storage %s --fresh" % os.path.join(tmp_dir, "flash")])
    assert _status(console, sid, True), tool.text()
    assert tool.wait_line(lambda l: l.startswith("[%s] -> status (retained)" % sid))

    # A backend command: the reply on the broker, the command and reply on the terminal.
    reply = console.command(sid, "set_limit", {"limit_ma": 10000}, timeout=WAIT_S)
    assert reply is not None and reply["ok"] is True, tool.text()
    assert reply["data"]["limit_ma"] == 10000
    assert tool.wait_line(lambda l: l.startswith("[%s] <- cmd " % sid) and "set_limit" in l)
    assert tool.wait_line(lambda l: l.startswith("[%s] -> reply " % sid) and '"ok":true' in l)

    # The EV from the terminal: plug, charge at 16 A (the backend's 10 A limit holds), unplug.
    mark = console.mark()
    tool.type("plug")
    assert tool.wait_line(lambda l: l.startswith("[%s] B2" % sid)), tool.text()
    tool.type("charge 16")
    charging = tool.wait_line(lambda l: l.startswith("[%s] C2" % sid) and "EV 10.0 A" in l
                              and "contactor closed" in l)
    assert charging and "offered 10.0 A" in charging, tool.text()
    # Real time: the meter counts the energy while the EV draws 10 A on three phases.
    assert console.wait_for(lambda t, p, r: t == "cp/%s/telemetry" % sid
                            and (p.get("session_wh") or 0) >= 2, WAIT_S, mark), tool.text()
    tool.type("unplug")
    rec = console.wait_for(lambda t, p, r: t == "cp/%s/record" % sid and p["kind"] == "session",
                           WAIT_S, mark)
    assert rec is not None, tool.text()
    session = rec[1]["data"]
    assert session["station_id"] == sid and session["energy_wh"] >= 2
    assert abs(session["stop_time"] - time.time()) < 60       # the host's real clock
    console.ack(sid, [rec[1]["id"]])
    status = [p for p in console.on_topic(sid, "status", mark) if p.get("online")]
    assert [p["state"] for p in status][:1] == ["B2"] and status[-1]["state"] == "A"
    assert "C2" in [p["state"] for p in status]

    # Home Assistant: the discovery configs, retained, against the real payloads.
    configs = _discovery(broker, expect=11)
    _check_home_assistant(configs, sid, console.on_topic(sid, "status", mark),
                          console.on_topic(sid, "telemetry", mark))
    # Option off: empty retained payloads, and a new subscriber gets no config any more.
    reply = console.command(sid, "set_config", {"changes": {"ha_discovery": False}},
                            timeout=WAIT_S)
    assert reply is not None and reply["ok"] is True, tool.text()
    assert _discovery(broker, expect=0) == {}

    # Ctrl-C: the station says goodbye with its retained offline status.
    mark = console.mark()
    tool.ctrl_c()
    offline = _status(console, sid, False, start=mark, timeout=5)
    assert offline and offline[1]["reason"] == "shutdown", tool.text()
    assert "[%s] stopped" % sid in tool.text()


def test_twenty_stations_means_distinct_ids_and_one_process_each(broker, console, tools,
                                                                tmp_dir):
    assert station_ids("cp-0001", 20)[-1] == "cp-0020"
    assert station_ids("cp-98", 3) == ["cp-98", "cp-99", "cp-100"]
    assert station_ids("hall", 2) == ["hall-1", "hall-2"]
    console.subscribe("cp/+/status")
    tool = tools([sys.executable, "-m", "tools.station", "--broker",
                  "%s:%d" % (broker.host, broker.port), "--id", "vs-01", "-n", "3",
                  "--storage", os.path.join(tmp_dir, "flash"), "--no-mqtt"])
    ids = ("vs-01", "vs-02", "vs-03")
    for sid in ids:
        assert _status(console, sid, True), tool.text()
    # `N cmd` picks a station: only the second charges.
    mark = console.mark()
    tool.type("all plug")
    tool.type("2 charge 8")
    assert tool.wait_line(lambda l: l.startswith("[vs-02] C2") and "EV  8.0 A" in l), \
        tool.text()
    for sid in ids:
        assert console.wait_for(lambda t, p, r: t == "cp/%s/status" % sid
                                and p.get("state") in ("B2", "C2"), WAIT_S, mark)
    time.sleep(0.5)
    states = dict((sid, [p["state"] for p in console.on_topic(sid, "status", mark)
                         if p.get("online")]) for sid in ids)
    assert "C2" in states["vs-02"]
    assert "C2" not in states["vs-01"] and "C2" not in states["vs-03"]
    pids = set()
    tool.type("list")
    for sid in ids:
        line = tool.wait_line(lambda l: (" %s (pid " % sid) in l)
        pids.add(re.search(r"pid (\d+)", line).group(1))
    assert len(pids) == 3
    mark = console.mark()
    tool.ctrl_c()
    for sid in ids:
        assert _status(console, sid, False, start=mark, timeout=5)


@pytest.mark.parametrize("runtime", ["unix64"])     # counted as such in make test's SUMMARY
def test_a_tls_broker_runs_the_station_on_the_64_bit_port(runtime, tls_broker, certs, tools,
                                                         tmp_dir):
    # The stand-in has no mbedtls: the tool says so and runs PyPI's 64-bit port, with the
    # certificates copied onto the station's flash and verified against the host name.
    console = Console(tls_broker.host, tls_broker.port)
    try:
        console.subscribe("cp/vs-tls/status")
        cfg_path = os.path.join(tmp_dir, "tls.json")
        with open(cfg_path, "w") as f:
            json.dump({"broker": "localhost:%d" % tls_broker.tls_port, "station_id": "vs-tls",
                       "mqtt_tls": True, "mqtt_ca_file": certs.ca_crt,
                       "mqtt_cert_file": certs.client_crt, "mqtt_key_file": certs.client_key}, f)
        tool = tools([sys.executable, "-m", "tools.station", "--config", cfg_path,
                      "--storage", os.path.join(tmp_dir, "flash")])
        assert tool.wait_line(lambda l: "64-bit" in l and "with TLS" in l), tool.text()
        assert _status(console, "vs-tls", True), tool.text()
        assert os.path.exists(os.path.join(tmp_dir, "flash", "vs-tls", "ca.crt"))
        tool.ctrl_c()
    finally:
        console.close()


def test_terminal_commands_are_checked_before_they_reach_a_station():
    for ok in (["plug"], ["charge"], ["charge", "32"], ["fault", "rcd_trip"],
               ["fault", "rcd_trip", "off"], ["temp", "72.5"], ["tag", "04A1B2"]):
        check_command(ok)
    for bad in (["fly"], ["charge", "x"], ["charge", "0"], ["fault", "meteor"],
                ["fault", "rcd_trip", "later"], ["temp"], ["tag"]):
        with pytest.raises(UsageError):
            check_command(bad)


def test_no_broker_is_a_usage_error():
    r = subprocess.run([sys.executable, "-m", "tools.station"], cwd=ROOT, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "BROKER=host:port" in r.stderr


# -- Home Assistant's MQTT discovery ---------------------------------------------------------

def _discovery(broker, expect, timeout=WAIT_S):
    """The retained configs a new subscriber gets: {topic: config}. Waits until `expect`
    configs are there (or, for 0, until every one of them has gone)."""
    deadline = time.monotonic() + timeout
    while True:
        c = Console(broker.host, broker.port)
        try:
            c.subscribe("homeassistant/#")
            time.sleep(0.3)             # retained messages follow the SUBACK at once
            got = dict((t, p) for t, p, r in c.messages if r and p not in (b"", ""))
        finally:
            c.close()
        if len(got) == expect or time.monotonic() > deadline:
            assert len(got) == expect, sorted(got)
            return got
        time.sleep(0.3)


# What Home Assistant's MQTT integration requires and accepts (home-assistant.io,
# integrations sensor.mqtt, number.mqtt, button.mqtt; the sensor device classes' units and
# state classes from developers.home-assistant.io, sensor entity).
_COMMON = {"name", "unique_id", "device", "availability_topic", "availability_template"}
_KEYS = {
    "sensor": ({"state_topic"}, {"value_template", "device_class", "state_class",
                                 "unit_of_measurement"}),
    "number": ({"command_topic"}, {"command_template", "min", "max", "step", "mode",
                                   "optimistic", "device_class", "unit_of_measurement"}),
    "button": ({"command_topic"}, {"payload_press"}),
}
_SENSOR_CLASSES = {
    "current": ({"A", "mA"}, {"measurement"}),
    "power": ({"W", "kW", "MW", "mW"}, {"measurement"}),
    "energy": ({"Wh", "kWh", "MWh", "mWh", "GWh", "MJ", "GJ"}, {"total", "total_increasing"}),
    "temperature": ({"\u00b0C", "\u00b0F", "K"}, {"measurement"}),
}
_NUMBER_CLASSES = {"current": {"A", "mA"}}
_TOPIC = re.compile(r"^homeassistant/(sensor|number|button)/([A-Za-z0-9_-]+)/"
                    r"([A-Za-z0-9_-]+)/config$")


def _check_home_assistant(configs, sid, statuses, telemetry):
    status_topic = "cp/%s/status" % sid
    by_object = {}
    unique = set()
    for topic, conf in configs.items():
        m = _TOPIC.match(topic)
        assert m, topic
        component, node, obj = m.groups()
        assert node == sid
        required, optional = _KEYS[component]
        keys = set(conf)
        assert required | _COMMON <= keys, (topic, sorted(required | _COMMON - keys))
        assert keys <= required | optional | _COMMON, (topic, sorted(keys - required -
                                                                      optional - _COMMON))
        assert conf["name"] and isinstance(conf["name"], str)
        assert conf["unique_id"] not in unique
        unique.add(conf["unique_id"])
        dev = conf["device"]
        assert dev["identifiers"] and isinstance(dev["identifiers"], list)
        assert dev["name"] == sid
        # Availability is the status topic's online flag: true while connected, false in
        # the last will and in the clean shutdown's status.
        assert conf["availability_topic"] == status_topic
        assert "value_json.online" in conf["availability_template"]
        by_object[obj] = (component, conf)
        if component == "sensor":
            _check_sensor(topic, conf, sid, statuses, telemetry)
        elif component == "number":
            assert conf["command_topic"] == "cp/%s/cmd" % sid
            assert isinstance(conf["min"], (int, float)) and isinstance(conf["max"], (int, float))
            assert conf["min"] < conf["max"] and conf["step"] > 0
            assert conf["unit_of_measurement"] in _NUMBER_CLASSES[conf["device_class"]]
            assert "{{" in conf["command_template"] and "set_limit" in conf["command_template"]
        else:
            assert conf["command_topic"] == "cp/%s/cmd" % sid
            assert json.loads(conf["payload_press"])["cmd"] in ("start", "stop")
    # The entities the brief of a charge point needs, each once.
    assert sorted(by_object) == sorted(["state", "offered_current", "current", "power",
                                        "session_energy", "total_energy", "temperature",
                                        "fault", "current_limit", "start", "stop"])
    for obj in ("session_energy", "total_energy"):
        conf = by_object[obj][1]
        assert (conf["device_class"], conf["state_class"]) == ("energy", "total_increasing")


def _check_sensor(topic, conf, sid, statuses, telemetry):
    dev_class = conf.get("device_class")
    unit = conf.get("unit_of_measurement")
    state_class = conf.get("state_class")
    if dev_class is not None:
        units, classes = _SENSOR_CLASSES[dev_class]
        assert unit in units, (topic, unit)
        assert state_class in classes, (topic, state_class)
    else:
        # A text sensor (state, fault): no unit and no state class, or HA expects numbers.
        assert unit is None and state_class is None, topic
    # The template reads fields the station really sends on that topic.
    if conf["state_topic"] == "cp/%s/status" % sid:
        samples = [p for p in statuses if p.get("online")]
    else:
        assert conf["state_topic"] == "cp/%s/telemetry" % sid
        samples = [p for p in telemetry if p.get("session")]
    assert samples, topic
    fields = set(re.findall(r"value_json\.(\w+)", conf["value_template"]))
    assert fields, topic
    for f in fields:
        assert f in samples[-1], (topic, f, samples[-1])

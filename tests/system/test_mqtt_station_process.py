"""The MQTT link in a station process (tests/system/mqtt_station.py) on the MicroPython unix
port, and the same script on CPython, against a real mosquitto and the operator console.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from mosquitto import Mosquitto
from tools.cpo import Console
from tools.devicefiles import MICROPYTHON, MICROPYTHON64, ROOT, micropython_env, mp_cwd

RUNTIMES = ["micropython", "cpython"]
# The stand-in's source has no mbedtls: TLS runs on PyPI's 64-bit unix port (with the same
# micropython-lib tree, umqtt.simple 1.7.0) and on CPython.
TLS_RUNTIMES = ["unix64", "cpython"]


def _command(runtime):
    if runtime == "micropython":
        return [MICROPYTHON], micropython_env()
    if runtime == "unix64":
        return [MICROPYTHON64], micropython_env(runtime=MICROPYTHON64)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "tests", "fakes")])
    # umqtt.simple: after the standard library, so micropython-lib's logging never shadows it.
    return [sys.executable, "-c", "import sys; sys.path.append('build/standin/lib'); "
            "sys.argv = sys.argv[1:]; exec(open(sys.argv[0]).read())"], env


class StationProcess:
    def __init__(self, runtime, opts):
        cmd, env = _command(runtime)
        path = os.path.join(opts["store"] + "-%s.json" % runtime)
        with open(path, "w") as f:
            json.dump(opts, f)
        self.proc = subprocess.Popen(cmd + ["tests/system/mqtt_station.py", path],
                                     cwd=mp_cwd(), env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait(self, predicate, timeout=20.0):
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if predicate(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.2))

    def stats(self):
        with self._cond:
            found = [l for l in self.lines if l.startswith("STATS ")]
        return json.loads(found[-1][6:]) if found else {}

    def wait_stats(self, predicate, timeout=20.0):
        line = self.wait(lambda l: l.startswith("STATS ") and predicate(json.loads(l[6:])),
                         timeout)
        return json.loads(line[6:]) if line else None

    def calls(self):
        with self._cond:
            return [json.loads(l[5:]) for l in self.lines if l.startswith("CALL ")]

    def acked(self):
        with self._cond:
            return [l.split()[2] for l in self.lines if l.startswith("ACKED ")]

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stderr(self):
        try:
            return self.proc.stderr.read() if self.proc.poll() is not None else ""
        except ValueError:
            return ""


@pytest.fixture
def station_proc():
    started = []

    def start(runtime, opts):
        p = StationProcess(runtime, opts)
        started.append(p)
        return p
    yield start
    for p in started:
        p.kill()


def _opts(port, tmp_dir, station, **extra):
    cfg = {"mqtt_host": "127.0.0.1", "mqtt_port": port, "mqtt_keepalive_s": 10,
           "mqtt_backoff_max_s": 2, "outbox_resend_s": 5}
    cfg.update(extra.pop("config", {}))
    opts = {"config": cfg, "station": station, "store": os.path.join(tmp_dir, station),
            "stats_every_ms": 200, "status": {"state": "B1"}}
    opts.update(extra)
    return opts


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_station_connects_answers_commands_delivers_records_and_leaves_a_will(
        runtime, broker, tmp_dir, station_proc):
    station = "cp-%s" % runtime[:2]
    backend = Console(broker.host, broker.port)
    try:
        backend.subscribe("cp/%s/#" % station)
        st = station_proc(runtime, _opts(broker.port, tmp_dir, station,
                                         sessions=[{"id": "s-1", "energy_wh": 4200}]))
        assert st.wait_stats(lambda s: s["state"] == "online"), st.lines
        status = backend.wait_for(lambda t, p, r: t.endswith("/status") and p.get("online"))
        assert status[1] == {"v": 1, "online": True, "state": "B1"}
        rec = backend.wait_for(lambda t, p, r: t.endswith("/record"))
        assert rec[1]["id"] == "s-1" and rec[1]["data"]["energy_wh"] == 4200

        reply = backend.command(station, "set_limit", {"limit_ma": 10000})
        assert reply["ok"] is True
        reply = backend.command(station, "set_limit", {"limit_ma": 80001})
        assert reply["ok"] is False and "0..80000" in reply["error"]
        reply = backend.command(station, "get_config", {"keys": ["mqtt_password"]})
        assert reply["data"] == {"mqtt_password": ""}
        assert st.calls() == [["set_limit", 10000, None], ["get_config", ["mqtt_password"]]]
        backend.ack(station, ["s-1"])
        assert st.wait(lambda l: l == "ACKED session s-1")
        # A STATS line written after the ack was applied (an earlier one may predate it).
        s = st.wait_stats(lambda s: s["rejected_commands"] == 1 and s["accepted_commands"] == 2
                          and s["rx_acks"] >= 1 and s["pending"] == 0)
        assert s is not None and s["rx_acks"] == 1 and s["pending"] == 0

        mark = backend.mark()
        st.kill()                                   # no DISCONNECT: the broker sends the will
        will = backend.wait_for(lambda t, p, r: t.endswith("/status") and not p["online"],
                                30, mark)
        assert will is not None and will[1]["reason"] == "connection lost"
    finally:
        backend.close()


# On CPython the same scenario runs in-process (test_mqtt_link.py).
@pytest.mark.parametrize("runtime", ["micropython"])
def test_broker_restart_mid_session_loses_no_record(runtime, broker, tmp_dir, station_proc):
    station = "cp-r%s" % runtime[:2]
    backend = Console(broker.host, broker.port)
    try:
        backend.subscribe("cp/%s/#" % station)
        sessions = [{"id": "s-%d" % i, "energy_wh": i} for i in range(6)]
        st = station_proc(runtime, _opts(broker.port, tmp_dir, station, sessions=sessions))
        assert st.wait_stats(lambda s: s["state"] == "online")
        assert backend.wait_for(lambda t, p, r: t.endswith("/record"))
        broker.kill()
        assert st.wait_stats(lambda s: s["state"] != "online" and s["failures"] >= 1)
        broker.start()
        assert backend.wait_ready(15)
        assert st.wait_stats(lambda s: s["state"] == "online" and s["reconnects"] == 1, 30)
        # The backend acknowledges whatever it has seen until the outbox is empty.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(st.acked()) < 6:
            seen = sorted({p["id"] for t, p, r in list(backend.messages)
                           if t.endswith("/record")})
            if seen:
                backend.ack(station, seen)
            time.sleep(0.3)
        assert sorted(st.acked()) == ["s-%d" % i for i in range(6)]
        copies = {}
        for t, p, r in list(backend.messages):
            if t.endswith("/record"):
                copies.setdefault(p["id"], set()).add(p["seq"])
        assert all(len(v) == 1 for v in copies.values())
        # Resubscribed after the restart.
        reply = backend.command(station, "stop")
        assert reply is not None and reply["ok"] is True
    finally:
        backend.close()


@pytest.mark.parametrize("runtime", TLS_RUNTIMES)
def test_tls_verified_and_refused(runtime, certs, tmp_dir, station_proc):
    other_ca, _key, _crt = certs.other_ca("stranger-%s" % runtime)
    with Mosquitto(tls=certs) as b:
        good = station_proc(runtime, _opts(b.tls_port, tmp_dir, "cp-tls-ok", config={
            "mqtt_tls": True, "mqtt_ca_file": certs.ca_crt, "mqtt_host": "localhost"}))
        bad = station_proc(runtime, _opts(b.tls_port, tmp_dir, "cp-tls-bad", config={
            "mqtt_tls": True, "mqtt_ca_file": other_ca}))
        assert good.wait_stats(lambda s: s["state"] == "online"), good.lines
        s = bad.wait_stats(lambda s: s["tls_errors"] >= 1)
        assert s is not None and s["connects"] == 0 and "tls" in s["last_error"]


@pytest.mark.parametrize("runtime", TLS_RUNTIMES)
def test_tls_checks_the_host_name(runtime, certs, tmp_dir, station_proc):
    # A certificate from the right CA, but for another host: refused.
    with Mosquitto(tls=certs, server_cert=certs.server_for("broker.example")) as b:
        st = station_proc(runtime, _opts(b.tls_port, tmp_dir, "cp-tls-name", config={
            "mqtt_tls": True, "mqtt_ca_file": certs.ca_crt, "mqtt_host": "localhost"}))
        s = st.wait_stats(lambda s: s["tls_errors"] >= 1)
        assert s is not None and s["connects"] == 0, st.lines[-3:]

"""Broken brokers: a scripted TCP peer answers CONNECT with chosen bytes. umqtt.simple's
checks are asserts; the link must turn every violation, refusal and stall into a clean
disconnect (counted), never an exception into the control loop and never a long wait."""
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from test_mqtt_blackhole import IO_TIMEOUT_MS, WatchedSockets
from test_mqtt_link import Station
from tools.devicefiles import MICROPYTHON, ROOT, micropython_env, mp_cwd

CONNACK_OK = b"\x20\x02\x00\x00"


class ScriptedBroker:
    """Accepts connections; after the client's first bytes (CONNECT) sends `script`, a list
    of byte strings, one every 20 ms, then keeps the connection open (or closes it when
    `close_after`)."""

    def __init__(self, script, close_after=False):
        self.script = script
        self.close_after = close_after
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.connections = 0
        self._stop = False
        self._conns = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            self._conns.append(c)
            c.settimeout(2)
            try:
                self.received += c.recv(4096)
                for chunk in self.script:
                    c.sendall(chunk)
                    time.sleep(0.02)
                if self.close_after:
                    c.close()
            except OSError:
                pass

    def close(self):
        self._stop = True
        for c in self._conns:
            c.close()
        self.sock.close()


@pytest.fixture
def scripted():
    made = []

    def make(script, close_after=False):
        b = ScriptedBroker(script, close_after)
        made.append(b)
        return b
    yield make
    for b in made:
        b.close()


def drive(peer, tmp_dir, sim_ms=1500, **cfg):
    sockets = WatchedSockets()
    cfg.setdefault("mqtt_backoff_min_ms", 60000)     # one attempt is enough to judge
    st = Station(peer.port, tmp_dir, factory=sockets, mqtt_io_timeout_ms=IO_TIMEOUT_MS, **cfg)
    st.run(sim_ms, real_s=0.002)
    assert sockets.unbounded() == []
    assert sockets.longest() <= IO_TIMEOUT_MS / 1000
    return st


def test_connect_packet_is_well_formed(scripted, tmp_dir):
    peer = scripted([CONNACK_OK])
    drive(peer, tmp_dir, mqtt_user="u1", mqtt_password="pw", mqtt_keepalive_s=60)
    pkt = peer.received
    assert pkt[0] == 0x10
    assert pkt[1] < 0x80                      # one-byte remaining length
    assert pkt[2:9] == b"\x00\x04MQTT\x04"
    flags = pkt[9]
    # user, password, will retain, will QoS 1, will flag, clean session
    assert flags == 0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02
    assert pkt[10:12] == b"\x00\x3c"
    assert b"cp/cp-t1/status" in pkt and b'"online": false' in pkt and pkt.endswith(b"\x00\x02pw")
    assert pkt[1] == len(pkt) - 2


def test_long_connect_packet_has_a_two_byte_length(scripted, tmp_dir):
    peer = scripted([CONNACK_OK])
    drive(peer, tmp_dir, mqtt_user="u" * 60, mqtt_password="p" * 100)
    pkt = peer.received
    length = (pkt[1] & 0x7F) | (pkt[2] << 7)
    assert pkt[1] & 0x80 and length == len(pkt) - 3 and length > 127
    assert pkt.endswith(b"\x00\x64" + b"p" * 100)


@pytest.mark.parametrize("script, fragment", [
    ([b"\x20\x02\x00\x05"], "not authorized"),
    ([b"\x20\x02\x00\x04"], "bad user name or password"),
    ([b"\x20\x03\x00\x00\x00"], "CONNACK length"),
    ([b"\x40\x02\x00\x01"], "expected CONNACK"),
])
def test_connack_problems_fail_the_attempt(scripted, tmp_dir, script, fragment):
    st = drive(scripted(script), tmp_dir)
    assert not st.link.online and st.link.connects == 0
    assert fragment in st.link.last_error
    assert st.link.failures == 1


@pytest.mark.parametrize("script, fragment", [
    # PINGRESP must have length 0: umqtt asserts it.
    ([CONNACK_OK, b"\xd0\x01\x00"], "protocol error"),
    # A packet type a broker never sends to a client.
    ([CONNACK_OK, b"\x00\x00"], "unexpected packet"),
    # SUBACK for another packet id.
    ([CONNACK_OK, b"\x90\x04\x00\x07\x00\x00"], "unexpected SUBACK"),
    # A remaining length beyond the heap-safety limit.
    ([CONNACK_OK, b"\x30\xff\xff\x7f"], "exceeds"),
    # A PUBLISH whose topic length runs past its remaining length: the topic would be read
    # out of the packets that follow (up to 64 KB of heap for a 2-byte packet).
    ([CONNACK_OK, b"\x30\x02\x00\x05cp/cp"], "beyond the packet"),
    ([CONNACK_OK, b"\x30\x04\xff\xff" + b"x" * 65600], "beyond the packet"),
    # QoS 1 PUBLISH too short for its packet id.
    ([CONNACK_OK, b"\x32\x03\x00\x00\x00\xd0\x00"], "beyond the packet"),
    # A remaining length encoded in more than 4 bytes (MQTT 3.1.1 2.2.3).
    ([CONNACK_OK, b"\x30\x80\x80\x80\x80\x00"], "remaining length"),
])
def test_protocol_violations_close_the_connection(scripted, tmp_dir, script, fragment):
    st = drive(scripted(script), tmp_dir)
    assert st.link.connects == 1 and not st.link.online
    assert st.link.stats()["protocol_errors"] == 1
    assert fragment in st.link.last_error


def test_subscription_refused_closes_the_connection(scripted, tmp_dir):
    st = drive(scripted([CONNACK_OK, b"\x90\x04\x00\x01\x00\x80"]), tmp_dir)
    assert st.link.connects == 1 and not st.link.online
    assert "subscription refused" in st.link.last_error


def test_a_packet_that_stops_midway_is_a_dead_connection(scripted, tmp_dir):
    # PUBLISH announcing 50 bytes, then 10 bytes and silence: reading the rest waits only
    # within the step's I/O budget, then the connection is dropped.
    st = drive(scripted([CONNACK_OK, b"\x30\x32\x00\x0bcp/cp-t1/cm"]), tmp_dir)
    assert st.link.connects == 1 and not st.link.online
    assert "ETIMEDOUT" in st.link.last_error
    assert st.link.stats()["rx_commands"] == 0


def test_the_broker_closing_the_connection_is_noticed(scripted, tmp_dir):
    st = drive(scripted([CONNACK_OK], close_after=True), tmp_dir)
    assert st.link.connects == 1 and not st.link.online
    assert "closed by the broker" in st.link.last_error or "ECONNRESET" in st.link.last_error
    assert st.link.disconnects == 1


def test_a_good_subscription_resets_the_backoff(scripted, tmp_dir):
    st = drive(scripted([CONNACK_OK, b"\x90\x04\x00\x01\x00\x00"]), tmp_dir,
               mqtt_backoff_min_ms=1000)
    assert st.link.online and st.link.subscribed
    assert st.link._attempt == 0


@pytest.mark.parametrize("script, fragment", [
    ([b"\x20\x02\x00\x05"], "not authorized"),
    ([CONNACK_OK, b"\xd0\x01\x00"], "protocol error"),
    ([CONNACK_OK, b"\x30\x32\x00\x0bcp/cp-t1/cm"], "ETIMEDOUT"),
    ([CONNACK_OK, b"\x90\x04\x00\x01\x00\x80"], "subscription refused"),
    ([CONNACK_OK, b"\x30\x02\x00\x05cp/cp"], "beyond the packet"),
])
def test_the_same_on_the_unix_port(scripted, tmp_dir, script, fragment):
    peer = scripted(script)
    opts = {"config": {"mqtt_host": "127.0.0.1", "mqtt_port": peer.port,
                       "mqtt_backoff_min_ms": 60000, "mqtt_io_timeout_ms": IO_TIMEOUT_MS},
            "station": "cp-t1", "store": os.path.join(tmp_dir, "store"), "loop_ms": 5,
            "steps": 100}
    path = os.path.join(tmp_dir, "opts.json")
    with open(path, "w") as f:
        json.dump(opts, f)
    r = subprocess.run([MICROPYTHON, "tests/system/mqtt_station.py", path], cwd=mp_cwd(),
                       env=micropython_env(), capture_output=True, text=True, timeout=60)
    done = [l for l in r.stdout.splitlines() if l.startswith("DONE ")]
    assert r.returncode == 0 and done, r.stdout + r.stderr
    s = json.loads(done[0][5:])
    assert fragment in s["last_error"], s
    assert s["state"] == "offline" and s["steps"] == 100

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

    def __init__(self, script, close_after=False, keep_reading=False):
        self.script = script
        self.close_after = close_after
        self.keep_reading = keep_reading   # record everything the client sends after it
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.connections = 0
        self._stop = False
        self._conns = []
        self.eof = threading.Event()        # a connection read to its end (keep_reading)
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
                c.settimeout(0.05)
                while self.keep_reading and not self._stop:
                    try:
                        data = c.recv(4096)
                    except socket.timeout:
                        continue
                    if not data:
                        self.eof.set()
                        break
                    self.received += data
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

    def make(script, close_after=False, keep_reading=False):
        b = ScriptedBroker(script, close_after, keep_reading)
        made.append(b)
        return b
    yield make
    for b in made:
        b.close()


def drive(peer, tmp_dir, sim_ms=1500, **cfg):
    sockets = WatchedSockets()
    cfg.setdefault("mqtt_backoff_min_ms", 60000)     # one attempt is enough to judge
    # The retry delay is jittered (a lost session's first retry anywhere in 0..backoff):
    # draw the longest, so a second attempt never falls inside the run.
    st = Station(peer.port, tmp_dir, factory=sockets, rand=lambda n: n - 1,
                 mqtt_io_timeout_ms=IO_TIMEOUT_MS, **cfg)
    st.run(sim_ms, real_s=0.002)
    assert sockets.unbounded() == []
    assert sockets.longest() <= IO_TIMEOUT_MS / 1000
    return st


def test_connect_packet_is_well_formed(scripted, tmp_dir):
    peer = scripted([CONNACK_OK])
    drive(peer, tmp_dir, mqtt_user="u1", mqtt_password="pw", mqtt_keepalive_s=60,
          mqtt_plain_credentials=True)
    pkt = peer.received
    assert pkt[0] == 0x10
    assert pkt[1] < 0x80                      # one-byte remaining length
    assert pkt[2:9] == b"\x00\x04MQTT\x04"
    flags = pkt[9]
    # user, password, will retain, will QoS 1, will flag; no clean session: the broker
    # keeps the QoS 1 subscription and queues commands while the station is offline
    assert flags == 0x80 | 0x40 | 0x20 | 0x08 | 0x04
    assert pkt[10:12] == b"\x00\x3c"
    assert b"cp/cp-t1/status" in pkt and b'"online": false' in pkt and pkt.endswith(b"\x00\x02pw")
    assert pkt[1] == len(pkt) - 2


def test_long_connect_packet_has_a_two_byte_length(scripted, tmp_dir):
    peer = scripted([CONNACK_OK])
    drive(peer, tmp_dir, mqtt_user="u" * 60, mqtt_password="p" * 100,
          mqtt_plain_credentials=True)
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


# -- commands on the wire: strict JSON and UTF-8 in, valid UTF-8 JSON out -----------------------

SUBACK_OK = b"\x90\x04\x00\x01\x00\x00"
EMOJI = "\U0001F600"


def publish(topic, payload):
    """A QoS 0 PUBLISH packet (remaining length up to 16383 bytes)."""
    body = len(topic).to_bytes(2, "big") + topic + payload
    n = len(body)
    length = bytes([n]) if n < 128 else bytes([(n & 0x7F) | 0x80, n >> 7])
    return b"\x30" + length + body


def published(stream):
    """(topic, payload) of every PUBLISH in the bytes a client sent."""
    out = []
    i = 0
    while i < len(stream):
        kind = stream[i]
        n = shift = 0
        i += 1
        while True:
            b = stream[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        body = stream[i:i + n]
        i += n
        if kind >> 4 == 3:
            tlen = int.from_bytes(body[:2], "big")
            out.append((body[2:2 + tlen], body[2 + tlen + (2 if kind & 0x06 else 0):]))
    return out


def _no_lone_surrogates(value):
    if isinstance(value, str):
        value.encode("utf-8")           # strict: a lone surrogate escape raises
    elif isinstance(value, list):
        for v in value:
            _no_lone_surrogates(v)
    elif isinstance(value, dict):
        for k in value:
            _no_lone_surrogates(k)
            _no_lone_surrogates(value[k])


def strict_loads(payload):
    """The host side's strict reading: UTF-8 decode without replacement (overlong forms and
    encoded surrogates raise), JSON without NaN/Infinity, no lone surrogate escapes."""
    def refuse(name):
        raise ValueError("not JSON: " + name)
    value = json.loads(payload.decode("utf-8", "strict"), parse_constant=refuse)
    _no_lone_surrogates(value)
    return value


# (payload, expected reply id, ok, a fragment of the error or None)
WIRE_COMMANDS = [
    (b'{"id": "c-\xc3\xa9\xf0\x9f\x98\x80", "cmd": "start"}', "c-\u00e9" + EMOJI, True, None),
    (b'{"id": "\\ud83d\\ude00x", "cmd": "stop"}', EMOJI + "x", True, None),
    (b'{"id": "' + b"\xf0\x9f\x98\x80" * 64 + b'", "cmd": "selftest"}', EMOJI * 64, True, None),
    (b'{"id": "s-1", "cmd": "set_limit", "args": {"limit_ma": 3000}}', "s-1", True, None),
    (b'{"id": "\xed\xa0\xbd\xed\xb8\x80", "cmd": "start"}', None, False, "invalid UTF-8"),
    (b'{"id": "\xc0\xaf", "cmd": "reboot"}', None, False, "invalid UTF-8"),
    (b'{"id": "ok", "cmd": "re\xe2\x82"}', None, False, "invalid UTF-8"),
    (b'{"id": "\\udc00", "cmd": "reboot"}', None, False, "lone surrogate"),
    (b'{"id": "c-5" "cmd": "reboot"}', None, False, "not valid JSON: byte 13"),
    (b'{"id": "c-6", "cmd": "reboot",}', None, False, "not valid JSON"),
    (b'{"id": "c-7", "cmd": "reboot"}\x00', None, False, "not valid JSON"),
    (b'{"id": "c-8", "cmd": "' + b"\xf0\x9f\x98\x80" * 50 + b'"}', "c-8", False,
     "unknown command " + EMOJI * 37 + "..."),
]
WIRE_CALLS = [["start"], ["stop"], ["selftest"], ["set_limit", 3000, None]]


def check_wire(sent):
    """Every PUBLISH the station sent is strict UTF-8 JSON; the replies match WIRE_COMMANDS."""
    messages = published(sent)
    assert messages, sent[:200]
    replies = []
    for topic, payload in messages:
        body = strict_loads(payload)
        if topic == b"cp/cp-t1/reply":
            replies.append(body)
    assert len(replies) == len(WIRE_COMMANDS), replies
    for (payload, corr, ok, fragment), reply in zip(WIRE_COMMANDS, replies):
        assert reply["id"] == corr and reply["ok"] is ok, (payload, reply)
        if fragment is not None:
            assert fragment in reply["error"], (payload, reply)
    assert replies[3]["data"] == {"limit_ma": 3000, "paused_by_limit": True}


def wire_script():
    return [CONNACK_OK, SUBACK_OK] + [publish(b"cp/cp-t1/cmd", p) for p, _, _, _ in WIRE_COMMANDS]


def test_commands_on_the_wire_get_strict_utf8_json_replies(scripted, tmp_dir):
    peer = scripted(wire_script(), keep_reading=True)
    st = drive(peer, tmp_dir, sim_ms=3000, mqtt_backoff_min_ms=1000)
    assert st.link.online
    assert [list(c) for c in st.target.calls] == WIRE_CALLS
    assert st.link.stats()["rejected_commands"] == 8
    check_wire(peer.received)


def test_commands_on_the_wire_on_the_unix_port(scripted, tmp_dir):
    peer = scripted(wire_script(), keep_reading=True)
    opts = {"config": {"mqtt_host": "127.0.0.1", "mqtt_port": peer.port,
                       "mqtt_io_timeout_ms": IO_TIMEOUT_MS},
            "station": "cp-t1", "store": os.path.join(tmp_dir, "store"), "loop_ms": 5,
            "steps": 200}
    path = os.path.join(tmp_dir, "opts.json")
    with open(path, "w") as f:
        json.dump(opts, f)
    r = subprocess.run([MICROPYTHON, "tests/system/mqtt_station.py", path], cwd=ROOT,
                       env=micropython_env(), capture_output=True, text=True, timeout=60)
    done = [l for l in r.stdout.splitlines() if l.startswith("DONE ")]
    assert r.returncode == 0 and done, r.stdout + r.stderr
    calls = [json.loads(l[5:]) for l in r.stdout.splitlines() if l.startswith("CALL ")]
    assert calls == WIRE_CALLS
    assert json.loads(done[0][5:])["rejected_commands"] == 8
    # The station's process has ended: its last bytes are read once the peer sees the end.
    assert peer.eof.wait(10)
    check_wire(peer.received)

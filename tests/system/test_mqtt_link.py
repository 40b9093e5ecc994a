"""MqttLink on CPython against a real mosquitto, in simulated time.

The link runs in this process with a simulated clock (10 ms per step) while the broker,
the sockets and the backend (tools/cpo.py's Console, paho) are real. Nothing here asserts
wall-clock durations: behaviour, counts and simulated time only.
"""
import json
import socket

import pytest

from firmware.compat import ticks_add, ticks_diff
from firmware.config import Config
from firmware.mqtt_link import MqttLink, ONLINE
from firmware.outbox import Outbox
from firmware.storage import Journal, Store
from mqtt_doubles import RecordingTarget
from mosquitto import Mosquitto, Relay, free_port
from test_commands import MALFORMED
from tools.cpo import Console

import time

STATION = "cp-t1"
START = ticks_add(0, -30000)   # the simulated clock wraps 30 s into every test
STEP_MS = 10


class Station:
    """The link with an outbox and a recording target, stepped in simulated time."""

    def __init__(self, port, store_dir, station=STATION, factory=None, rand=None, **cfg):
        values = {"mqtt_host": "127.0.0.1", "mqtt_port": port, "mqtt_keepalive_s": 30,
                  "mqtt_boot_spread_s": 0}
        values.update(cfg)
        self.cfg = Config(values)
        self.acked = []
        self.outbox = Outbox(Journal(Store(store_dir), "outbox"),
                             capacity=self.cfg["outbox_capacity"],
                             window=self.cfg["outbox_window"],
                             resend_ms=self.cfg["outbox_resend_s"] * 1000,
                             on_ack=lambda kind, rid: self.acked.append((kind, rid)))
        self.target = RecordingTarget(self.cfg)
        self.link = MqttLink(self.cfg, station, self.outbox, self.target,
                             socket_factory=factory, rand=rand)
        self.now = START
        self.steps = 0
        self.states = []

    def run(self, sim_ms, until=None, real_s=0.001):
        """Step for up to sim_ms of simulated time; True as soon as until() holds."""
        for _ in range(sim_ms // STEP_MS):
            self.now = ticks_add(self.now, STEP_MS)
            self.link.step(self.now)
            self.steps += 1
            if not self.states or self.states[-1] != self.link.state:
                self.states.append(self.link.state)
            if until is not None and until():
                return True
            if real_s:
                time.sleep(real_s)
        return until is None

    def run_until_online(self, sim_ms=20000):
        return self.run(sim_ms, lambda: self.link.online and self.link.subscribed)


@pytest.fixture
def console(broker):
    c = Console(broker.host, broker.port)
    c.subscribe("cp/#")
    yield c
    c.close()


def replies(console, start=0):
    return [p for p in console.on_topic(STATION, "reply", start)]


# -- connection, status, will, commands ---------------------------------------------------

def test_connects_publishes_retained_status_and_answers_commands(broker, console, tmp_dir):
    st = Station(broker.port, tmp_dir)
    st.link.publish_status({"state": "A", "connector": 1})
    assert st.run_until_online()
    assert console.wait_for(lambda t, p, r: t == "cp/%s/status" % STATION and p.get("online"))
    # A backend that connects later gets the status from the broker (retained).
    late = Console(broker.host, broker.port)
    try:
        late.subscribe("cp/+/status")
        m = late.wait_for(lambda t, p, r: t == "cp/%s/status" % STATION)
        assert m[2] is True
        assert m[1] == {"v": 1, "online": True, "state": "A", "connector": 1}
    finally:
        late.close()

    mark = console.mark()
    console.send(STATION, "set_limit", {"limit_ma": 16000, "expires_s": 600}, corr_id="c-1")
    console.send(STATION, "authorize", {"id_tag": "04A2B3C4"}, corr_id="c-2")
    st.target.refuse["start"] = "no EV connected"
    console.send(STATION, "start", corr_id="c-3")
    assert st.run(5000, lambda: len(replies(console, mark)) == 3)
    got = {p["id"]: p for p in replies(console, mark)}
    assert got["c-1"] == {"v": 1, "id": "c-1", "cmd": "set_limit", "ok": True, "time": None,
                          "data": {"limit_ma": 16000, "paused_by_limit": False}}
    assert got["c-2"]["ok"] is True
    assert got["c-3"] == {"v": 1, "id": "c-3", "cmd": "start", "ok": False, "time": None,
                          "code": "GenericError", "error": "no EV connected"}
    assert st.target.calls == [("set_limit", 16000, 600), ("authorize", "04A2B3C4"), ("start",)]
    s = st.link.stats()
    assert (s["rx_commands"], s["accepted_commands"], s["failed_commands"]) == (3, 2, 1)
    assert s["connects"] == 1 and s["reconnects"] == 0


class SlowTarget(RecordingTarget):
    """Commands that take the station longer than the step's I/O budget, as a config or a
    limit written to the ESP32's flash does (tens of ms; mqtt_io_timeout_ms is 20)."""

    def cmd_set_config(self, changes):
        time.sleep(3 * self.cfg["mqtt_io_timeout_ms"] / 1000)
        return RecordingTarget.cmd_set_config(self, changes)


def test_a_command_slower_than_the_io_budget_is_answered_on_the_same_connection(
        broker, console, tmp_dir):
    # The station's work on a command is not a network wait: the reply (and the next
    # packet of the same step) must not be lost with a connection timed out by it.
    st = Station(broker.port, tmp_dir)
    st.target = SlowTarget(st.cfg)
    st.link.dispatcher.target = st.target
    assert st.run_until_online()
    mark = console.mark()
    console.send(STATION, "set_config", {"changes": {"telemetry_interval_s": 30}},
                 corr_id="s-1")
    console.send(STATION, "set_limit", {"limit_ma": 16000}, corr_id="s-2")
    assert st.run(5000, lambda: len(replies(console, mark)) == 2)
    assert sorted((p["id"], p["ok"]) for p in replies(console, mark)) == [("s-1", True),
                                                                          ("s-2", True)]
    s = st.link.stats()
    assert (s["connects"], s["disconnects"], s["last_error"]) == (1, 0, None)


def test_the_will_says_offline_when_the_connection_dies(broker, console, tmp_dir):
    st = Station(broker.port, tmp_dir)
    assert st.run_until_online()
    mark = console.mark()
    st.link._conn.raw.close()      # the station vanishes without DISCONNECT
    m = console.wait_for(lambda t, p, r: t == "cp/%s/status" % STATION and not p["online"],
                         10, mark)
    assert m is not None
    assert m[1] == {"v": 1, "online": False, "reason": "connection lost"}


def test_a_clean_close_publishes_offline_itself_and_no_will(broker, console, tmp_dir):
    st = Station(broker.port, tmp_dir)
    assert st.run_until_online()
    mark = console.mark()
    st.link.close("reboot")
    m = console.wait_for(lambda t, p, r: t == "cp/%s/status" % STATION and not p["online"],
                         10, mark)
    assert m[1] == {"v": 1, "online": False, "reason": "reboot"}
    time.sleep(0.3)
    assert len([1 for p in console.on_topic(STATION, "status", mark) if not p["online"]]) == 1


def test_malformed_commands_get_error_replies_and_change_nothing(broker, console, tmp_dir):
    st = Station(broker.port, tmp_dir)
    assert st.run_until_online()
    before = st.cfg.public()
    mark = console.mark()
    for payload, _fragment in MALFORMED:
        console.send(STATION, None, raw=payload)
        st.run(30)       # keep order: one in flight at a time
    assert st.run(5000, lambda: len(replies(console, mark)) == len(MALFORMED))
    got = replies(console, mark)
    for (payload, fragment), reply in zip(MALFORMED, got):
        assert reply["ok"] is False
        assert fragment in reply["error"], (payload, reply)
    assert st.target.calls == []
    assert st.cfg.public() == before
    s = st.link.stats()
    assert s["rejected_commands"] == len(MALFORMED)
    assert s["rx_commands"] == len(MALFORMED)
    assert st.link.online


def test_an_oversized_packet_closes_the_connection_and_the_link_recovers(broker, console, tmp_dir):
    st = Station(broker.port, tmp_dir)
    assert st.run_until_online()
    console.send(STATION, None, raw=b"x" * 20000)
    assert st.run(5000, lambda: st.link.stats()["protocol_errors"] == 1)
    assert "exceeds" in st.link.last_error
    assert st.run_until_online()
    mark = console.mark()
    console.send(STATION, "stop", corr_id="after")
    assert st.run(5000, lambda: replies(console, mark))
    assert replies(console, mark)[0]["ok"] is True


def test_a_retained_command_is_refused_not_run_at_every_connect(broker, console, tmp_dir):
    console.client.publish("cp/%s/cmd" % STATION, json.dumps(
        {"v": 1, "id": "old", "cmd": "reboot"}), qos=1, retain=True)
    time.sleep(0.2)
    st = Station(broker.port, tmp_dir)
    assert st.run_until_online()
    assert st.run(3000, lambda: replies(console))
    reply = replies(console)[0]
    assert reply["ok"] is False and "retained" in reply["error"]
    assert st.target.calls == []
    assert st.link.stats()["rejected_commands"] == 1
    # A fresh (not retained) command is obeyed as usual.
    mark = console.mark()
    console.send(STATION, "stop", corr_id="new")
    assert st.run(3000, lambda: replies(console, mark))
    assert st.target.calls == [("stop",)]
    console.client.publish("cp/%s/cmd" % STATION, b"", qos=1, retain=True)   # clear it


def test_commands_for_another_station_are_not_acted_on(broker, console, tmp_dir):
    st = Station(broker.port, tmp_dir)
    assert st.run_until_online()
    console.send("cp-other", "stop", corr_id="x")
    console.send(STATION + "x", "stop", corr_id="y")
    st.run(500)
    assert st.target.calls == []
    # Even if a broker delivered it (ACL or bridge mistake), only the own topic is obeyed.
    st.link._on_message(b"cp/cp-other/cmd", b'{"id": "z", "cmd": "stop"}')
    assert st.target.calls == []
    assert st.link.stats()["foreign_messages"] == 1


# -- outbox over the link ---------------------------------------------------------------------

def records(console, start=0):
    return console.on_topic(STATION, "record", start)


def test_records_are_resent_until_acked_and_resends_keep_the_id(broker, console, tmp_dir):
    st = Station(broker.port, tmp_dir, outbox_window=2, outbox_resend_s=5)
    for i in range(3):
        st.outbox.put("session", {"id": "s-%d" % i, "energy_wh": 100 * i})
    assert st.run_until_online()
    assert st.run(1000, lambda: len(records(console)) >= 2)
    st.run(500)
    assert [r["id"] for r in records(console)] == ["s-0", "s-1"]   # the window holds 2
    assert st.run(6000, lambda: len(records(console)) >= 4)       # resent after 5 s
    first = records(console)
    assert [(r["id"], r["seq"]) for r in first[2:4]] == [("s-0", 1), ("s-1", 2)]
    console.ack(STATION, ["s-0", "s-1"])
    assert st.run(3000, lambda: len(st.acked) == 2 and any(r["id"] == "s-2" for r in records(console)))
    console.ack(STATION, ["s-2"])
    assert st.run(3000, lambda: len(st.outbox) == 0)
    assert st.acked == [("session", "s-0"), ("session", "s-1"), ("session", "s-2")]
    assert st.link.stats()["rx_acks"] == 2


def test_broker_killed_and_restarted_reconnects_resubscribes_and_loses_nothing(broker, console, tmp_dir):
    st = Station(broker.port, tmp_dir, outbox_window=2, outbox_resend_s=3600,
                 rand=lambda n: n - 1)
    for i in range(3):
        st.outbox.put("session", {"id": "s-%d" % i})
    assert st.run_until_online()
    assert st.run(2000, lambda: len(records(console)) >= 2)
    console.ack(STATION, ["s-0"])
    assert st.run(2000, lambda: len(st.acked) == 1)

    broker.kill()
    assert st.run(5000, lambda: not st.link.online)
    assert "closed" in st.link.last_error or "ECONN" in st.link.last_error
    for i in range(3, 6):                          # sessions end while the broker is down
        st.outbox.put("session", {"id": "s-%d" % i})
    failures0 = st.link.failures
    # Refused attempts at 8 s (the first retry after a lost connection: full jitter over
    # 0..8 s, rand at its top), then 2 and 4 s later.
    st.run(16000)
    assert st.link.failures - failures0 == 3
    assert not st.link.online

    broker.start()
    assert console.wait_ready(15)      # the backend listens again before the station is back
    assert st.run_until_online(40000)
    assert st.link.stats()["reconnects"] == 1
    deadline = 200
    while len(st.outbox) and deadline:
        deadline -= 1
        seen = {r["id"] for r in records(console)}
        console.ack(STATION, sorted(seen))
        st.run(300)
    assert len(st.outbox) == 0
    assert sorted(i for _k, i in st.acked) == ["s-%d" % i for i in range(6)]
    # Every copy of a record carries the same seq: the backend can de-duplicate on the id.
    by_id = {}
    for r in records(console):
        by_id.setdefault(r["id"], set()).add((r["seq"], json.dumps(r["data"], sort_keys=True)))
    assert all(len(v) == 1 for v in by_id.values())
    assert len(by_id["s-1"] if "s-1" in by_id else ()) == 1
    # Resubscribed: commands reach the station again.
    mark = console.mark()
    console.send(STATION, "stop", corr_id="after-restart")
    assert st.run(5000, lambda: replies(console, mark))
    assert st.target.calls[-1] == ("stop",)


def test_a_batch_of_acks_is_applied_a_few_per_step(tmp_dir):
    # Each acknowledged record costs flash writes (the outbox index, its data file, the
    # session journal): a full ack message must not put all of them into one loop step.
    st = Station(1883, tmp_dir, mqtt_host="")
    for i in range(40):
        st.outbox.put("session", {"id": "s-%d" % i, "energy_wh": i})
    ack = st.link.topics.ack
    for first in (0, 32):
        ids = ["s-%d" % i for i in range(first, first + 32)]
        st.link._on_message(ack, json.dumps({"v": 1, "ids": ids}).encode())
    assert st.acked == []                       # nothing written inside the message callback
    done = []
    for _ in range(40):
        st.run(STEP_MS, real_s=0)
        done.append(len(st.acked))
    steps = [b - a for a, b in zip([0] + done, done)]
    assert max(steps) <= 2
    assert [i for _k, i in st.acked] == ["s-%d" % i for i in range(40)]
    assert len(st.outbox) == 0
    assert st.outbox.duplicate_acks == 24       # s-40..s-63 were never held
    # More ids than the queue holds are dropped (counted): their records are resent and
    # acknowledged again, nothing is lost.
    for _ in range(3):
        st.link._on_message(ack, json.dumps({"v": 1, "ids": ["x"] * 32}).encode())
    assert st.link.stats()["dropped_acks"] == 32


def test_backoff_doubles_with_jitter_up_to_the_maximum(tmp_dir):
    port = free_port()                             # nothing listens: every attempt is refused
    draws = []

    def rand(n):
        draws.append(n)
        return 0                                   # the smallest jittered delay: half
    st = Station(port, tmp_dir, rand=rand, mqtt_backoff_min_ms=1000, mqtt_backoff_max_s=8)
    times = []
    last = [0]

    def attempts():
        if st.link.attempts != last[0]:
            last[0] = st.link.attempts
            times.append(st.now)
        return False
    st.run(60000, attempts, real_s=0.0002)
    gaps = [ticks_diff(b, a) for a, b in zip(times, times[1:])]
    # Delay d = min(1 s * 2^k, 8 s), jittered into [d/2, d]; rand() gave 0, so d/2 (+ the
    # few steps the refused connect takes to be seen).
    expected = [500, 1000, 2000, 4000, 4000, 4000]
    assert len(gaps) >= len(expected)
    for gap, want in zip(gaps, expected):
        assert want <= gap <= want + 10 * STEP_MS, gaps
    assert draws[:6] == [501, 1001, 2001, 4001, 4001, 4001]
    assert not st.link.online


# -- comms loss, telemetry, bytes -------------------------------------------------------------

def test_comms_loss_applies_after_the_timeout_and_is_reported_when_back(broker, console, tmp_dir):
    st = Station(broker.port, tmp_dir, comms_loss_timeout_s=10, comms_fallback_ma=6000,
                 mqtt_backoff_max_s=2)
    assert st.run_until_online()
    assert not st.link.comms_lost(st.now)
    broker.kill()
    assert st.run(3000, lambda: not st.link.online)
    lost_at = None
    for _ in range(1200):
        st.run(STEP_MS)
        if st.link.comms_lost(st.now):
            lost_at = ticks_diff(st.now, st.link.offline_since_ms)
            break
    assert lost_at is not None and 10000 <= lost_at <= 10000 + STEP_MS
    st.run(5000)
    assert st.link.comms_lost(st.now)
    mark = console.mark()
    broker.start()
    assert console.wait_ready(15)
    assert st.run_until_online(30000)
    assert not st.link.comms_lost(st.now)
    m = console.wait_for(lambda t, p, r: t.endswith("/event") and p.get("type") == "link_up",
                         10, mark)
    ev = m[1]
    assert ev["fallback_applied"] is True and ev["fallback_ma"] == 6000
    assert ev["reconnect"] is True
    assert ev["offline_s"] >= 15
    assert ev["reason"]


def test_a_value_json_cannot_carry_is_the_callers_error(tmp_dir):
    st = Station(free_port(), tmp_dir)
    with pytest.raises(TypeError):
        st.link.publish_status({"state": object()})
    with pytest.raises(TypeError):
        st.link.publish_event({"type": "x", "bad": {1, 2}})
    st.run(100, real_s=0)
    assert st.link.stats()["internal_errors"] == 0


def test_no_backend_configured_is_never_a_comms_loss(tmp_dir):
    # A stand-alone station (mqtt_host empty) must not fall back to comms_fallback_ma.
    st = Station(1883, tmp_dir, mqtt_host="", comms_loss_timeout_s=10)
    st.run(20000, real_s=0)
    assert not st.link.comms_lost(st.now)
    assert st.link.attempts == 0 and st.link.disabled_reason == "mqtt_host not set"
    assert not st.link.publish_telemetry({"power_w": 1}, force=True)
    assert len(st.outbox) == 0


def test_telemetry_interval_deadband_and_offline_store(broker, console, tmp_dir):
    st = Station(broker.port, tmp_dir, telemetry_interval_s=5, telemetry_deadband_w=500)
    assert st.run_until_online()
    mark = console.mark()
    taken = []
    power = [1000]

    def feed():
        taken.append(st.link.publish_telemetry({"power_w": power[0]}))
        return False
    # 12 s of constant power: the first sample and one every 5 s.
    st.run(12000, feed, real_s=0.0003)
    assert taken.count(True) == 3
    power[0] = 1400                  # inside the deadband: nothing extra
    st.run(1000, feed)
    power[0] = 1600                  # 600 W from the last sample: sent at once
    n = taken.count(True)
    st.run(20, feed)
    assert taken.count(True) == n + 1
    assert st.run(2000, lambda: len(console.on_topic(STATION, "telemetry", mark)) == 4)
    assert console.on_topic(STATION, "telemetry", mark)[-1] == {"v": 1, "power_w": 1600,
                                                                "time": None}
    # Offline: interval samples go to the outbox and arrive as records later.
    broker.kill()
    assert st.run(3000, lambda: not st.link.online)
    st.run(11000, feed, real_s=0.0003)
    stored = st.outbox.pending("telemetry")
    assert stored == 2                 # only the interval samples, not every call
    assert not st.link.publish_telemetry({"power_w": 99999}, force=True)
    assert st.link.stats()["telemetry_stored"] == stored
    broker.start()
    assert console.wait_ready(15)
    assert st.run_until_online(30000)
    assert st.run(5000, lambda: len([r for r in records(console) if r["kind"] == "telemetry"]) == stored)


def test_bytes_are_counted_on_the_wire(broker, console, tmp_dir):
    st = Station(broker.port, tmp_dir)
    assert st.run_until_online()
    st.run(300)
    before = st.link.stats()["bytes_sent"]
    assert before > 0
    st.link.publish_telemetry({"power_w": 7}, force=True)
    st.run(STEP_MS)
    payload = json.dumps({"v": 1, "power_w": 7, "time": None}).encode()
    topic = ("cp/%s/telemetry" % STATION).encode()
    # PUBLISH QoS 0: fixed header (2) + topic length (2) + topic + payload.
    assert st.link.stats()["bytes_sent"] - before == 2 + 2 + len(topic) + len(payload)
    rx = st.link.stats()["bytes_received"]
    console.send(STATION, "diagnostics", corr_id="d")
    assert st.run(3000, lambda: st.link.stats()["bytes_received"] > rx)


def test_keepalive_pings_and_a_silent_broker_is_dropped(broker, tmp_dir):
    with Relay(broker.port) as relay:
        st = Station(relay.port, tmp_dir, mqtt_keepalive_s=10)
        assert st.run_until_online()
        st.run(6000, real_s=0.002)
        assert st.link.stats()["pings"] >= 1          # one every keepalive/2 of silence
        assert st.link.online                          # PINGRESPs arrived
        pings = st.link.stats()["pings"]
        relay.stall()                                  # the path hangs: TCP stays up
        assert st.run(15000, lambda: not st.link.online)
        assert st.link.stats()["ping_timeouts"] == 1
        assert st.link.stats()["pings"] == pings + 1
        assert "PINGRESP" in st.link.last_error
        relay.resume()
        relay.cut()
        assert st.run_until_online(40000)


def test_credentials_are_used_and_never_published(tmp_dir):
    with Mosquitto(users={"station1": "s3cret-pw"}) as b:
        backend = Console(b.host, b.port, user="station1", password="s3cret-pw")
        backend.subscribe("cp/#")
        try:
            # Plain MQTT here: credentials need the local setting that allows it.
            refused = Station(b.port, tmp_dir + "/plain", mqtt_user="station1",
                              mqtt_password="s3cret-pw")
            refused.run(1000)
            assert refused.link.stats()["attempts"] == 0
            assert refused.link.disabled_reason == \
                "mqtt_user needs mqtt_tls (or mqtt_plain_credentials)"
            bad = Station(b.port, tmp_dir + "/bad", mqtt_user="station1", mqtt_password="wrong",
                          mqtt_plain_credentials=True)
            bad.run(3000)
            assert not bad.link.online
            assert "bad user name or password" in bad.link.last_error \
                or "not authorized" in bad.link.last_error
            st = Station(b.port, tmp_dir, mqtt_user="station1", mqtt_password="s3cret-pw",
                         mqtt_plain_credentials=True)
            assert st.run_until_online()
            backend.send(STATION, "get_config", {"keys": ["mqtt_password", "mqtt_user"]},
                         corr_id="g")
            assert st.run(3000, lambda: backend.on_topic(STATION, "reply"))
            reply = backend.on_topic(STATION, "reply")[0]
            assert reply["data"] == {"mqtt_password": "***", "mqtt_user": "station1"}
            st.link.publish_event({"type": "diag", "note": "x"})
            st.run(300)
            for _t, p, _r in backend.messages:
                assert "s3cret-pw" not in json.dumps(p) if isinstance(p, dict) else True
        finally:
            backend.close()


# -- TLS --------------------------------------------------------------------------------------

def test_tls_with_certificate_verification(tls_broker, certs, tmp_dir):
    st = Station(tls_broker.tls_port, tmp_dir, mqtt_tls=True, mqtt_ca_file=certs.ca_crt)
    assert st.run_until_online()
    assert st.link.stats()["tls_errors"] == 0


def test_tls_refuses_a_server_certificate_from_another_ca(certs, tmp_dir):
    other_ca, key, crt = certs.other_ca("rogue")
    with Mosquitto(tls=certs, server_cert=(key, crt)) as b:
        st = Station(b.tls_port, tmp_dir, mqtt_tls=True, mqtt_ca_file=certs.ca_crt)
        st.run(5000)
        assert not st.link.online
        assert st.link.stats()["tls_errors"] >= 1
        assert "tls" in st.link.last_error


def test_tls_client_certificate(certs, tmp_dir):
    with Mosquitto(tls=certs, require_client_cert=True) as b:
        without = Station(b.tls_port, tmp_dir + "/a", mqtt_tls=True, mqtt_ca_file=certs.ca_crt)
        without.run(3000)
        assert not without.link.online
        st = Station(b.tls_port, tmp_dir, mqtt_tls=True, mqtt_ca_file=certs.ca_crt,
                     mqtt_cert_file=certs.client_crt, mqtt_key_file=certs.client_key)
        assert st.run_until_online()


def test_tls_without_a_ca_never_connects_unverified(tls_broker, tmp_dir):
    st = Station(tls_broker.tls_port, tmp_dir, mqtt_tls=True)
    st.run(3000)
    assert not st.link.online
    assert st.link.attempts == 0
    assert st.link.disabled_reason == "mqtt_tls needs mqtt_ca_file"

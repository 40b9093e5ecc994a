# The whole station (charger, sessions, outbox, MQTT link) against a real mosquitto and a
# paho-mqtt backend: a session record reaches the backend across a broker outage, is
# de-duplicable, and leaves the station only when the backend acknowledges it.
# The station runs in simulated time on the simulator's board; the broker in wall time.
import json
import queue
import time

import paho.mqtt.client as paho
import pytest

from firmware.storage import Store
from firmware.station import TICK_MS, Station
from tools.powercut_fs import PowerCutFs
from tools.pilotsim.model import S2_C, S2_OPEN
from tools.pilotsim.simboard import SimBoard

PREFIX = "cp/cp-0001/"


class Backend:
    """The operator's side: collects what the station publishes, sends commands and acks."""

    def __init__(self, port):
        self.port = port
        self.msgs = queue.Queue()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="backend-test")
        self.c.on_message = lambda c, u, m: self.msgs.put((m.topic, m.payload, m.retain))
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(PREFIX + "#", qos=1)
        self.c.reconnect_delay_set(0.1, 0.5)
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()

    def send(self, leaf, obj):
        self.c.publish(PREFIX + leaf, json.dumps(obj), qos=1)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


class Station1:
    def __init__(self, port, fs=None, start_ms=0):
        self.fs = fs or PowerCutFs()
        self.board = SimBoard(start_ms=start_ms)
        self.st = Station(self.board, config={"mqtt_host": "127.0.0.1", "mqtt_port": port,
                                              "mqtt_keepalive_s": 10,
                                              "mqtt_boot_spread_s": 0},
                          store=Store("/data", self.fs))

    def step(self, n=1):
        for _ in range(n):
            self.st.step()
            self.board.sleep_ms(TICK_MS)

    def ev(self, plugged, s2):
        m = self.board.model
        m.plugged = plugged
        m.s2 = s2
        m.update()


def pump(station, backend, want, wall_s=20):
    """Steps the station (1 ms of wall time per simulated step) until want(topic, payload)
    has matched a message; returns the decoded payload."""
    end = time.time() + wall_s
    while time.time() < end:
        station.step(5)
        time.sleep(0.005)
        while True:
            try:
                topic, payload, retain = backend.msgs.get_nowait()
            except queue.Empty:
                break
            try:
                body = json.loads(payload)
            except ValueError:
                continue
            if want(topic[len(PREFIX):], body):
                return body
    raise AssertionError("nothing matched within %d s" % wall_s)


def until(station, pred, wall_s=20):
    end = time.time() + wall_s
    while time.time() < end:
        if pred():
            return
        station.step(5)
        time.sleep(0.005)
    raise AssertionError("condition not met within %d s" % wall_s)


def test_status_commands_and_a_session_record_across_a_broker_outage(broker):
    be = Backend(broker.port)
    try:
        s = Station1(broker.port)
        status = pump(s, be, lambda leaf, b: leaf == "status" and b.get("online"))
        assert status["state"] == "A" and status["v"] == 1

        # A command round trip changes what the EV is offered.
        s.ev(True, S2_OPEN)
        be.send("cmd", {"v": 1, "id": "c-1", "cmd": "set_limit", "args": {"limit_ma": 10000}})
        reply = pump(s, be, lambda leaf, b: leaf == "reply" and b.get("id") == "c-1")
        assert reply["ok"] is True
        s.step(100)
        assert s.st.charger.offered_ma == 10000

        # Charge, then lose the broker; the EV leaves while it is down.
        s.ev(True, S2_C)
        until(s, lambda: s.board.contacts_closed)
        s.step(3000)
        sid = s.st.sessions.active["id"]
        broker.kill()
        s.step(500)
        s.ev(False, S2_OPEN)
        until(s, lambda: not s.board.contactor_cmd)
        s.step(500)
        assert [r.id for r in s.st.outbox.records() if r.kind == "session"] == [sid]

        # Back: the record arrives, the same id until acknowledged.
        broker.start()
        rec = pump(s, be, lambda leaf, b: leaf == "record" and b.get("kind") == "session",
                   wall_s=30)
        assert rec["id"] == sid and rec["data"]["id"] == sid
        assert rec["data"]["stop_reason"] == "ev_unplugged"
        assert rec["data"]["charging_s"] >= 29
        assert [r["id"] for r in s.st.sessions.pending()] == [sid]
        be.send("ack", {"v": 1, "ids": [sid]})
        until(s, lambda: s.st.sessions.pending() == [] and len(s.st.outbox) == 0)

        # Nothing comes back after a reset: the acknowledgement is on flash too.
        s.fs.restart()
        s2 = Station1(broker.port, fs=s.fs, start_ms=s.board.now_ms + 1000)
        assert s2.st.sessions.pending() == []
        assert [r for r in s2.st.outbox.records() if r.kind == "session"] == []
    finally:
        be.close()


def test_malformed_command_gets_an_error_reply_and_changes_nothing(broker):
    be = Backend(broker.port)
    try:
        s = Station1(broker.port)
        pump(s, be, lambda leaf, b: leaf == "status" and b.get("online"))
        s.ev(True, S2_OPEN)
        s.step(100)
        before = (s.st.charger.offered_ma, s.st.cfg.changed_from_defaults())
        for i, (cmd, args) in enumerate((("set_limit", {"limit_ma": 80001}),
                                         ("set_limit", {"limit_ma": "16A"}),
                                         ("set_config", {"changes": {"max_current_ma": 1}}),
                                         ("set_config", {"changes": {"mqtt_password": 5}}),
                                         ("launch", {}))):
            be.send("cmd", {"v": 1, "id": "bad-%d" % i, "cmd": cmd, "args": args})
            reply = pump(s, be, lambda leaf, b, i=i: leaf == "reply" and b.get("id") == "bad-%d" % i)
            assert reply["ok"] is False and reply["error"], reply
        s.step(100)
        assert (s.st.charger.offered_ma, s.st.cfg.changed_from_defaults()) == before
    finally:
        be.close()


def test_a_limit_below_6_amps_pauses_and_the_reply_and_status_say_so(broker):
    be = Backend(broker.port)
    try:
        s = Station1(broker.port)
        pump(s, be, lambda leaf, b: leaf == "status" and b.get("online"))
        s.ev(True, S2_C)
        until(s, lambda: s.board.contacts_closed)
        be.send("cmd", {"v": 1, "id": "p-1", "cmd": "set_limit", "args": {"limit_ma": 3000}})
        reply = pump(s, be, lambda leaf, b: leaf == "reply" and b.get("id") == "p-1")
        assert reply["ok"] is True
        assert reply["data"] == {"limit_ma": 3000, "paused_by_limit": True}
        status = pump(s, be, lambda leaf, b: leaf == "status" and b.get("paused_by_limit"))
        assert status["offered_ma"] == 0 and status["limit"] == "backend"
        assert status["paused"] is False and status["state"] in ("C1", "B1")
        until(s, lambda: not s.board.contacts_closed)
        be.send("cmd", {"v": 1, "id": "p-2", "cmd": "set_limit", "args": {"limit_ma": 16000}})
        reply = pump(s, be, lambda leaf, b: leaf == "reply" and b.get("id") == "p-2")
        assert reply["data"] == {"limit_ma": 16000, "paused_by_limit": False}
        until(s, lambda: s.board.contacts_closed)
        status = pump(s, be, lambda leaf, b: leaf == "status" and b.get("contactor"))
        # What the duty codes: 16 A is 26.6 % (duty_for_current rounds down), 15.96 A.
        assert status["paused_by_limit"] is False and status["offered_ma"] == 15960
    finally:
        be.close()


if __name__ == "__main__":
    pytest.main([__file__, "-q"])

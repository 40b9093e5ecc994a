"""The command contract on the ESP32 stand-in against a real mosquitto (docs/mqtt.md):
exactly once, retained commands, commands queued while offline (persistent session, QoS 1),
expiry, and settings only the owner may change. The station process is
tests/system/mqtt_station.py with UTC from the host's clock; the backend is tools/cpo.py's
Console."""
import json
import time

import pytest

from firmware import owner
from test_mqtt_station_process import _opts, station_proc  # noqa: F401 (fixture)
from tools.cpo import Console

RUNTIME = "micropython"
KEY = bytes(range(32))
KEY_HEX = "".join("%02x" % b for b in KEY)


def _payload(corr, name, args=None, **extra):
    msg = {"v": 1, "id": corr, "cmd": name, "args": args or {}}
    msg.update(extra)
    return json.dumps(msg).encode()


def _reply(backend, station, corr, mark=0, timeout=15):
    m = backend.wait_for(lambda t, p, r: t.endswith("/%s/reply" % station)
                         and p.get("id") == corr, timeout, mark)
    return m[1] if m else None


def _start(station_proc, broker, tmp_dir, station, **cfg):  # noqa: F811
    config = {"owner_key": KEY_HEX}
    config.update(cfg)
    st = station_proc(RUNTIME, _opts(broker.port, tmp_dir, station, clock="real",
                                     config=config))
    assert st.wait_stats(lambda s: s["state"] == "online"), st.lines
    return st


def test_a_repeated_id_is_answered_again_not_run_again_also_after_a_restart(
        broker, tmp_dir, station_proc):  # noqa: F811
    station = "cp-once"
    backend = Console(broker.host, broker.port)
    try:
        backend.subscribe("cp/%s/reply" % station)
        st = _start(station_proc, broker, tmp_dir, station)
        backend.send(station, None, raw=_payload("d-1", "set_limit", {"limit_ma": 10000}))
        first = _reply(backend, station, "d-1")
        mark = backend.mark()
        backend.send(station, None, raw=_payload("d-1", "set_limit", {"limit_ma": 10000}))
        again = _reply(backend, station, "d-1", mark)
        assert first["ok"] is True and again["duplicate"] is True
        assert {k: again[k] for k in first} == first
        assert st.calls() == [["set_limit", 10000, None]]
        # A reset between the execution and a resend: the ring is on flash.
        backend.send(station, None, raw=_payload("r-1", "reboot"))
        assert _reply(backend, station, "r-1")["ok"] is True
        st.kill()
        st2 = _start(station_proc, broker, tmp_dir, station)
        mark = backend.mark()
        backend.send(station, None, raw=_payload("r-1", "reboot"))
        again = _reply(backend, station, "r-1", mark)
        assert again["ok"] is True and again["duplicate"] is True
        assert st2.calls() == []
        assert st2.wait_stats(lambda s: s["duplicate_commands"] == 1)
    finally:
        backend.close()


def test_a_retained_command_is_refused_with_its_id(broker, tmp_dir, station_proc):  # noqa: F811
    station = "cp-ret"
    backend = Console(broker.host, broker.port)
    try:
        backend.subscribe("cp/%s/reply" % station)
        backend.client.publish("cp/%s/cmd" % station, _payload("old-1", "reboot"), qos=1,
                               retain=True)
        time.sleep(0.2)
        st = _start(station_proc, broker, tmp_dir, station)
        reply = _reply(backend, station, "old-1")
        assert (reply["ok"], reply["code"], reply["cmd"]) == (False, "RETAINED", "reboot")
        assert st.calls() == []
        backend.client.publish("cp/%s/cmd" % station, b"", qos=1, retain=True)
    finally:
        backend.close()


def test_commands_sent_while_offline_arrive_and_stale_ones_are_refused(
        broker, tmp_dir, station_proc):  # noqa: F811
    station = "cp-offl"
    backend = Console(broker.host, broker.port)
    try:
        backend.subscribe("cp/%s/reply" % station)
        st = _start(station_proc, broker, tmp_dir, station)   # subscribes: the session exists
        st.kill()
        time.sleep(0.3)
        now = int(time.time())
        backend.send(station, None, raw=_payload("q-1", "set_limit", {"limit_ma": 8000}))
        backend.send(station, None, raw=_payload("q-2", "stop", expires_at=now + 600))
        backend.send(station, None, raw=_payload("q-3", "start", sent_at=now - 3600, ttl_s=60))
        st2 = _start(station_proc, broker, tmp_dir, station)
        replies = {c: _reply(backend, station, c) for c in ("q-1", "q-2", "q-3")}
        assert replies["q-1"]["ok"] is True and replies["q-2"]["ok"] is True
        assert (replies["q-3"]["ok"], replies["q-3"]["code"]) == (False, "EXPIRED")
        assert st2.calls() == [["set_limit", 8000, None], ["stop"]]
        assert all(isinstance(r["time"], int) and abs(r["time"] - now) < 60
                   for r in replies.values())
    finally:
        backend.close()


def test_only_the_owner_changes_whom_the_station_trusts(broker, tmp_dir, station_proc):  # noqa: F811
    station = "cp-own"
    backend = Console(broker.host, broker.port)
    try:
        backend.subscribe("cp/%s/reply" % station)
        st = _start(station_proc, broker, tmp_dir, station)
        expires = int(time.time()) + 300
        backend.send(station, None, raw=_payload("a-1", "set_config",
                                                 {"changes": {"mqtt_host": "evil.example"}}))
        assert _reply(backend, station, "a-1")["code"] == "OWNER_ONLY"
        forged = owner.sign(_payload("a-2", "set_config",
                                     {"changes": {"mqtt_host": "evil.example"}},
                                     expires_at=expires), station, bytes(32))
        backend.send(station, None, raw=forged)
        assert _reply(backend, station, "a-2")["code"] == "SecurityError"
        plain = owner.sign(_payload("a-3", "set_config",
                                    {"changes": {"mqtt_password": "s3cret"}},
                                    expires_at=expires), station, KEY)
        backend.send(station, None, raw=plain)
        assert _reply(backend, station, "a-3")["code"] == "INSECURE"
        signed = owner.sign(_payload("a-4", "set_config",
                                     {"changes": {"mqtt_host": "new.example"}},
                                     expires_at=expires), station, KEY)
        backend.send(station, None, raw=signed)
        reply = _reply(backend, station, "a-4")
        assert reply["ok"] is True, reply
        assert reply["data"] == {"keys": ["mqtt_host"], "reboot_required": ["mqtt_host"]}
        assert st.calls() == [["set_config", {"mqtt_host": "new.example"}]]
    finally:
        backend.close()


if __name__ == "__main__":
    pytest.main([__file__, "-q"])

"""A broker that accepts TCP and never answers must not hold up the control loop.

step() is bounded when every socket call it makes is non-blocking (timeout 0: on the ESP32
any timeout below 100 ms becomes a 100 ms wait, ports/esp32/modsocket.c). The sockets here are real (to a real black-hole listener);
a thin wrapper records the timeout in force at every call, so the bound is asserted by
inspection and by counting, never by measuring wall time.
"""
import json
import os
import socket
import subprocess

from firmware.mqtt_link import CONNACK, OFFLINE, ONLINE, TCP
from tools.devicefiles import MICROPYTHON, ROOT, micropython_env, mp_cwd

from mosquitto import Relay
from test_mqtt_link import STEP_MS, Station

IO_TIMEOUT_MS = 20


class WatchedSockets:
    """A socket_factory handing out real sockets that record how long each call could wait:
    0 (non-blocking), a timeout in seconds, or None (forever)."""

    def __init__(self):
        self.resolves = 0
        self.sockets = []
        self.waits = []            # (call, timeout)

    def getaddrinfo(self, *args):
        self.resolves += 1
        return socket.getaddrinfo(*args)

    def socket(self, *args):
        s = _Watched(self, socket.socket(*args))
        self.sockets.append(s)
        return s

    def unbounded(self):
        return [w for w in self.waits if w[1] is None]

    def longest(self):
        return max([w[1] for w in self.waits if w[1] is not None] or [0])


class _Watched:
    def __init__(self, owner, s):
        self._owner = owner
        self._s = s
        self._timeout = None      # a new socket blocks forever

    def _call(self, name, *args):
        self._owner.waits.append((name, self._timeout))
        return getattr(self._s, name)(*args)

    def setblocking(self, flag):
        self._timeout = None if flag else 0
        self._s.setblocking(flag)

    def settimeout(self, t):
        self._timeout = t
        self._s.settimeout(t)

    def connect(self, addr):
        return self._call("connect", addr)

    def recv(self, n):
        return self._call("recv", n)

    def send(self, b):
        return self._call("send", b)

    def fileno(self):
        return self._s.fileno()

    def getsockopt(self, *a):
        return self._s.getsockopt(*a)

    def close(self):
        self._s.close()


def test_black_holed_broker_every_socket_wait_is_bounded(black_hole, tmp_dir):
    sockets = WatchedSockets()
    st = Station(black_hole.port, tmp_dir, factory=sockets, rand=lambda n: n - 1,
                 mqtt_io_timeout_ms=IO_TIMEOUT_MS, mqtt_connect_timeout_ms=2000,
                 mqtt_backoff_min_ms=1000, mqtt_backoff_max_s=4)
    st.link.publish_status({"state": "C2"})
    st.outbox.put("session", {"id": "s-1"})
    connack_steps = 0
    for _ in range(3000):                   # 30 s of simulated loop at 10 ms per iteration
        st.run(STEP_MS, real_s=0.0005)
        if st.link.state == CONNACK:
            connack_steps += 1
        assert st.link.state != ONLINE
    s = st.link.stats()
    # Accepted by TCP, CONNECT written, CONNACK never: each attempt ends at the connect
    # timeout, then backoff 1, 2, 4, 4 ... s.
    assert s["attempts"] >= 5
    assert s["failures"] == s["attempts"] - (1 if st.link.state != OFFLINE else 0)
    assert "ETIMEDOUT" in s["last_error"]
    assert len(black_hole.accepted) >= s["failures"] - 1   # the listener thread may lag one
    # Every step ran to completion: 3000 iterations, each one step (no step was skipped
    # or merged), and the link was waiting for CONNACK for most of them.
    assert st.steps == 3000
    assert connack_steps >= s["failures"] * (2000 // STEP_MS - 2)
    # Nothing ever waited: every socket call was made with timeout 0.
    assert sockets.unbounded() == []
    assert sockets.waits and sockets.longest() == 0
    assert {name for name, _ in sockets.waits} <= {"connect", "recv", "send"}
    assert all(t == 0 for name, t in sockets.waits)
    # The name was resolved once (it is cached; an IP literal needs no DNS anyway), then
    # again every 4th failed attempt.
    assert sockets.resolves == 1 + (s["attempts"] - 1) // 4
    # Nothing was lost meanwhile.
    assert len(st.outbox) == 1


def test_a_hung_path_then_the_broker_answers_again(broker, tmp_dir):
    # A relay in front of the broker that accepts and forwards nothing (a hung load
    # balancer), then recovers: the link keeps trying, bounded, and gets through.
    with Relay(broker.port) as relay:
        relay.stall()
        st = Station(relay.port, tmp_dir, mqtt_connect_timeout_ms=1000, mqtt_backoff_max_s=2)
        st.run(6000, real_s=0.0005)
        assert not st.link.online and st.link.failures >= 2
        assert "ETIMEDOUT" in st.link.last_error
        # The attempts the station gave up on are dropped, not forwarded late: a stale
        # CONNECT reaching the broker after the new one would take the client id over and
        # make the link connect twice (a race of the relay's threads, not of the link).
        relay.resume(drop_closed=True)
        assert relay.dropped >= st.link.failures - 1 >= 1
        assert st.run_until_online(20000)
        assert st.link.stats()["connects"] == 1


def test_black_hole_on_the_unix_port_steps_run_to_completion(black_hole, tmp_dir):
    # The station loop on MicroPython with a simulated clock: 3000 steps, 10 ms apiece,
    # against a black hole. A step that waited on the network would hang this process
    # (the subprocess timeout is generous, so only a real hang fails it).
    opts = {"config": {"mqtt_host": "127.0.0.1", "mqtt_port": black_hole.port,
                       "mqtt_connect_timeout_ms": 2000, "mqtt_backoff_max_s": 4,
                       "mqtt_io_timeout_ms": IO_TIMEOUT_MS},
            "store": os.path.join(tmp_dir, "store"), "sim_step_ms": 10, "loop_ms": 0,
            "steps": 3000, "stats_every_ms": 1000}
    path = os.path.join(tmp_dir, "opts.json")
    with open(path, "w") as f:
        json.dump(opts, f)
    r = subprocess.run([MICROPYTHON, "tests/system/mqtt_station.py", path],
                       cwd=mp_cwd(), env=micropython_env(), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    done = [l for l in r.stdout.splitlines() if l.startswith("DONE ")]
    assert done, r.stdout + r.stderr
    s = json.loads(done[0][5:])
    assert s["steps"] == 3000
    assert s["connects"] == 0
    assert s["attempts"] >= 5
    assert "ETIMEDOUT" in s["last_error"]
    stats = [json.loads(l[6:]) for l in r.stdout.splitlines() if l.startswith("STATS ")]
    # One STATS line per simulated second: 100 steps completed in every 1000 ms.
    steps = [x["steps"] for x in stats]
    assert [b - a for a, b in zip(steps, steps[1:])] == [100] * (len(steps) - 1)

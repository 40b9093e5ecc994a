"""A small fleet (tools/fleet.py): 10 virtual stations, one mosquitto, the backend, one broker
restart while EVs charge. Counts only: records, duplicates, reconnects, interruptions."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import mosquitto
from tools import fleet, fleet_brokers
from tools.devicefiles import ROOT

N = 10


@pytest.mark.skipif(not mosquitto.available(), reason="mosquitto not installed")
def test_a_broker_restart_loses_no_record_and_interrupts_no_charge(tmp_path):
    r = fleet.run(n=N, duration=24, fault="restart", fault_at=8, down=2, seed=3,
                  cmd_per_min=2, storage=str(tmp_path / "fleet"), first_id="ft-01",
                  out=lambda *a: None, charge_s=(12, 22), idle_s=(1, 4), drain_s=40,
                  report=str(tmp_path / "fleet.json"),
                  extra_cfg={"mqtt_boot_spread_s": 3})      # a shorter boot, same restart
    assert r["fleet_online_after_boot"] == N
    assert r["fleet_online_at_fault"] == N
    assert r["fleet_charging_at_fault"] >= 1          # the fault hits running sessions
    assert r["fleet_dropped_by_fault"] == N
    assert r["fleet_reconnected"] == N and r["fleet_not_reconnected"] == 0
    assert r["fleet_reconnects_at_broker"] >= N       # the broker's log saw every one
    assert r["fleet_online_at_end"] == N
    assert r["fleet_sessions"] >= N                    # every EV's session reached the backend
    assert r["fleet_records_published"] >= 2 * N       # a start and an end record each
    assert r["fleet_records_lost"] == 0, r["fleet_records_lost_ids"]
    assert r["fleet_records_undelivered_at_end"] == 0
    assert r["fleet_records_duplicated"] == 0
    assert r["fleet_interruptions"] == 0, r["fleet_interruption_examples"]
    # Full jitter on the first retry: ten stations do not come back in the same second.
    assert 1 <= r["fleet_reconnect_peak_per_s"] < 10
    assert r["fleet_commands_sent"] >= 1 and r["fleet_replies"] >= 1
    with open(tmp_path / "fleet.json") as f:
        report = json.load(f)
    assert report["mosquitto"]["runs"]["restart-n10"]["fleet_records_lost"] == 0


def test_reconnect_times_count_from_the_broker_back_to_each_dropped_stations_connack():
    t_fault, t_back = 100.0, 110.0
    changes = [
        [(0.0, True), (100.5, False), (112.0, True)],      # back 2 s after the broker
        [(0.0, True), (100.5, False), (109.9, True)],      # its CONNACK before the probe
        [(0.0, True)],                                     # never dropped (a black hole)
        [(0.0, True), (101.0, False)],                     # not back
        [(0.0, True), (101.0, False), (104.0, True), (104.5, False), (117.0, True)],
    ]
    times, dropped, missing = fleet.reconnect_times(changes, t_fault, t_back)
    assert dropped == 4 and missing == 1
    assert times == [2.0, 0.0, 0.0, 0.0]


def test_the_relay_black_holes_the_path_without_closing_a_socket():
    """tools/fleet_relay.py: while black-holed nothing is forwarded either way and no
    socket closes; a connection opened meanwhile is held; restored, the held bytes flow."""
    import socket
    import threading

    from tools.fleet_relay import Relay

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    accepted = []

    def echo():
        while len(accepted) < 2:
            c, _ = srv.accept()
            accepted.append(c)
            threading.Thread(target=_echo, args=(c,), daemon=True).start()

    def _echo(c):
        while True:
            data = c.recv(100)
            if not data:
                return
            c.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    relay = Relay(srv.getsockname()[1])
    try:
        a = socket.create_connection(("127.0.0.1", relay.port), timeout=5)
        a.sendall(b"one")
        assert a.recv(10) == b"one"
        relay.blackhole()
        a.sendall(b"held")
        a.settimeout(1)
        with pytest.raises(socket.timeout):
            a.recv(10)
        b = socket.create_connection(("127.0.0.1", relay.port), timeout=5)
        b.sendall(b"new")
        b.settimeout(1)
        with pytest.raises(socket.timeout):
            b.recv(10)
        assert relay.upstream_connects == 1 and len(accepted) == 1   # b not forwarded
        assert relay.connections == 2                                 # nothing closed
        # A station gives up on a connection it opened during the black hole: its stale
        # CONNECT never reaches the broker (it would take over the live session).
        c = socket.create_connection(("127.0.0.1", relay.port), timeout=5)
        c.sendall(b"stale")
        c.close()
        relay.restore()
        a.settimeout(5)
        b.settimeout(5)
        assert a.recv(10) == b"held"
        assert b.recv(10) == b"new"
        assert relay.upstream_connects == 2 and relay.abandoned == 1
    finally:
        relay.close()
        srv.close()


# -- clean-up: every way out of `make fleet BROKER=rabbitmq` ends the node, its epmd and the
# stations (the tool started as a terminal starts it: its own process group, Ctrl-C = SIGINT
# to that group, which reaches neither the stations nor the node) --------------------------
rabbit = pytest.mark.skipif(not fleet_brokers.RabbitBroker.available(),
                            reason="rabbitmq-server not installed")


def _processes_of(path):
    """{pid: comm} of the live processes started for a fleet in `path`: the node (its
    environment names the broker's folder), its epmd (ditto), the stations (their cwd)."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/environ" % name, "rb") as f:
                env = f.read()
            cwd = os.readlink("/proc/%s/cwd" % name)
            with open("/proc/%s/stat" % name) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            with open("/proc/%s/comm" % name) as f:
                comm = f.read().strip()
        except OSError:
            continue
        if state != "Z" and (path.encode() in env or cwd.startswith(path)):
            found[int(name)] = comm
    return found


def _start_tool(tmp_path, *args):
    storage = str(tmp_path / "fleet")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.fleet", "--broker", "rabbitmq", "--storage", storage,
         "--report", str(tmp_path / "fleet.json"), "--plot", str(tmp_path / "fleet.png")]
        + list(args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    lines = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    return proc, storage, lines


def _wait_for(what, timeout=240.0):
    """The thing `what` returns, once truthy (a guard against a hang, not a measurement)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = what()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError("timed out waiting for %s" % what)


def _beams(storage):
    return {p for p, comm in _processes_of(storage).items() if comm.startswith("beam")}


def _assert_all_ended(proc, storage, lines, sig):
    try:
        rc = proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the tool did not end on %s:\n%s" % (sig, "".join(lines[-20:])))
    left = _processes_of(storage)
    if left:
        for pid in left:                 # ours: do not leave them to the next test
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    assert not left, "left running after %s: %s" % (sig, left)
    assert rc == 130, "".join(lines[-20:])


@rabbit
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_sigterm_or_sighup_while_the_node_boots_ends_the_node_and_its_epmd(tmp_path, sig):
    proc, storage, lines = _start_tool(tmp_path, "-n", "2", "--fault", "none")
    _wait_for(lambda: _beams(storage))
    seen = set(_processes_of(storage).values())
    assert "epmd" in seen, seen                 # the node's own epmd ran
    proc.send_signal(getattr(signal, sig))
    _assert_all_ended(proc, storage, lines, sig)


@rabbit
def test_what_a_killed_run_left_is_ended_by_the_next(tmp_path):
    """SIGKILL leaves the tool no clean-up: the next run in the same storage ends the node
    and its epmd before it starts (tools.fleet_brokers.end_leftovers)."""
    proc, storage, lines = _start_tool(tmp_path, "-n", "2", "--fault", "none")
    _wait_for(lambda: _beams(storage))
    proc.kill()
    proc.wait(10)
    left = fleet_brokers.leftovers(storage)
    assert {"beam.smp", "epmd"} <= set(_processes_of(storage).values())
    assert sorted(fleet_brokers.end_leftovers(storage)) == sorted(left)
    _wait_for(lambda: not _processes_of(storage), timeout=30)


@rabbit
def test_ctrl_c_twice_while_the_node_restarts_ends_the_node_its_epmd_and_the_stations(
        tmp_path):
    proc, storage, lines = _start_tool(tmp_path, "-n", "2", "--fault", "restart",
                                       "--fault-at", "1", "--down", "1", "--duration", "600",
                                       "--set", "mqtt_boot_spread_s=1")
    first = _wait_for(lambda: _beams(storage))
    _wait_for(lambda: any("broker killed" in line for line in lines))
    # The fault's thread boots a new node: Ctrl-C now.
    _wait_for(lambda: _beams(storage) - first)
    stations = [p for p, comm in _processes_of(storage).items() if comm == "micropython"]
    assert len(stations) == 2
    os.killpg(proc.pid, signal.SIGINT)          # what a terminal's Ctrl-C does
    time.sleep(0.3)
    try:                                        # and a second one during the clean-up
        os.killpg(proc.pid, signal.SIGINT)
    except ProcessLookupError:
        pass
    _assert_all_ended(proc, storage, lines, "SIGINT")

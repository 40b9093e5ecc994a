"""A small fleet (tools/fleet.py): 10 virtual stations, one mosquitto, the backend, one broker
restart while EVs charge. Counts only: records, duplicates, reconnects, interruptions."""
import os

import pytest

import mosquitto
from tools import fleet

pytestmark = pytest.mark.skipif(not mosquitto.available(), reason="mosquitto not installed")

N = 10


def test_a_broker_restart_loses_no_record_and_interrupts_no_charge(tmp_path):
    r = fleet.run(n=N, duration=24, fault="restart", fault_at=8, down=2, seed=3,
                  cmd_per_min=2, storage=str(tmp_path / "fleet"), first_id="ft-01",
                  out=lambda *a: None, charge_s=(12, 22), idle_s=(1, 4), drain_s=40,
                  report=str(tmp_path / "fleet.json"))
    assert r["fleet_online_after_boot"] == N
    assert r["fleet_online_at_fault"] == N
    assert r["fleet_charging_at_fault"] >= 1          # the fault hits running sessions
    assert r["fleet_reconnected"] == N and r["fleet_not_reconnected"] == 0
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
    assert os.path.exists(tmp_path / "fleet.json")

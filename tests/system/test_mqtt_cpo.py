"""The operator console (python -m tools.cpo) against a station process on the unix port."""
import csv
import json
import os
import subprocess
import sys
import time

from tools.devicefiles import ROOT

from test_mqtt_station_process import StationProcess, _opts, station_proc  # noqa: F401


def _cmd(broker, *args):
    return [sys.executable, "-m", "tools.cpo", "--host", broker.host, "--port",
            str(broker.port)] + list(args)


def cpo(broker, *args, timeout=60):
    r = subprocess.run(_cmd(broker, *args), cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout)
    return r.returncode, r.stdout, r.stderr


def test_list_cmd_and_collect_sessions_into_a_csv(broker, tmp_dir, station_proc):  # noqa: F811
    station = "cp-cpo"
    # s-1 was collected by an earlier run: it must not appear twice.
    path = os.path.join(tmp_dir, "sessions.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["station", "id", "seq", "id_tag", "start_time", "stop_time", "duration_s",
                    "charging_s", "energy_wh", "meter_start_wh", "meter_stop_wh", "tariff_id",
                    "currency", "cost_minor", "stop_reason", "record"])
        w.writerow([station, "s-1", 1, "A1", "", "", "", "", 1000, "", "", "", "", 30, "", "{}"])
    # The collector runs while the station comes up and is commanded.
    collector = subprocess.Popen(_cmd(broker, "collect", "--csv", path, "--seconds", "6"),
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
    try:
        time.sleep(1.0)        # the collector's subscription is in place
        sessions = [{"id": "s-1", "energy_wh": 1000, "id_tag": "A1", "cost_minor": 30},
                    {"id": "s-2", "energy_wh": 2500, "id_tag": "B2", "cost_minor": 75}]
        st = station_proc("micropython", _opts(broker.port, tmp_dir, station, sessions=sessions))
        assert st.wait_stats(lambda s: s["state"] == "online")

        rc, out, err = cpo(broker, "list")
        assert rc == 0, err
        line = [l for l in out.splitlines() if l.startswith(station)]
        assert line and "online" in line[0] and '"state": "B1"' in line[0]

        rc, out, err = cpo(broker, "follow", station, "--seconds", "1")
        assert rc == 0, err
        assert "cp/%s/status (retained) " % station in out and '"online": true' in out

        rc, out, err = cpo(broker, "cmd", station, "set_limit", '{"limit_ma": 16000}')
        assert rc == 0, err
        assert json.loads(out)["ok"] is True
        rc, out, err = cpo(broker, "cmd", station, "set_limit", '{"limit_ma": 80001}')
        assert rc == 1
        assert "0..80000" in json.loads(out)["error"]
        assert st.calls() == [["set_limit", 16000, None]]

        out, err = collector.communicate(timeout=30)
    finally:
        if collector.poll() is None:
            collector.kill()
    assert collector.returncode == 0, err
    assert "collected 1 new session record" in out
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["station"], r["id"]) for r in rows] == [(station, "s-1"), (station, "s-2")]
    assert rows[1]["energy_wh"] == "2500" and rows[1]["id_tag"] == "B2"
    assert rows[1]["cost_minor"] == "75"
    # Both were acknowledged (the CSV already had s-1): the station's outbox is empty.
    assert st.wait(lambda l: l == "ACKED session s-2")
    assert st.wait(lambda l: l == "ACKED session s-1")
    assert st.wait_stats(lambda s: s["pending"] == 0)

"""The simulator pointed at an OCPP 1.6J central system with --set (as a user points it at
their own): python -m tools.pilotsim run SCENARIO --set backend=ocpp16 --set ocpp_url=...
against the `ocpp` library's central system (tests/system/ocpp_cs.py)."""
import asyncio
import json
import os
import sys

import pytest

pytest.importorskip("ocpp")

from ocpp_cs import IDENTITY, PASSWORD, CentralSystem  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCENARIO = {
    "name": "ocpp-session",
    "description": "A free-charging session reported to an OCPP central system",
    "duration_ms": 12000,
    "config": {"max_current_ma": 16000, "auth_mode": "free"},
    "ev": {"phases": 3, "draw_a": 16, "cable_a": 32},
    "meter": False,            # no Modbus peer: a short run (the OCPP tests cover meter values)
    "expect": {"states": ["C2", "A"], "no_faults": True},
    "steps": [{"at": 2000, "ev": "plug"}, {"at": 3000, "ev": "request"},
              {"at": 9000, "ev": "unplug"}],
}


def test_simulator_against_an_ocpp_central_system(tmp_dir):
    path = os.path.join(tmp_dir, "ocpp-session.json")
    with open(path, "w") as f:
        json.dump(SCENARIO, f)

    async def scenario():
        cs = CentralSystem()
        port = await cs.start()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tools.pilotsim", "run", path, "--quiet",
                "--trace", os.path.join(tmp_dir, "t.jsonl"),
                "--set", "backend=ocpp16", "--set", "ocpp_url=ws://127.0.0.1:%d/ocpp" % port,
                "--set", "ocpp_id=" + IDENTITY, "--set", "ocpp_password=" + PASSWORD,
                cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await asyncio.wait_for(proc.communicate(), 240)
            return proc.returncode, out.decode(), cs
        finally:
            await cs.stop()

    rc, out, cs = asyncio.run(scenario())
    assert rc == 0, out
    assert "OCPP 1.6J at ws://127.0.0.1" in out and PASSWORD not in out
    assert cs.auth_seen and cs.auth_seen[0].startswith("Basic ")
    assert len(cs.actions("BootNotification")) == 1
    tx = cs.tx_calls()
    kinds = [a for a, _ in tx]
    assert kinds[0] == "StartTransaction" and kinds[-1] == "StopTransaction", kinds
    assert tx[0][1]["idTag"] == "FREE" and tx[-1][1]["reason"] == "EVDisconnected"
    assert tx[-1][1]["transactionId"] == 1001
    charging = [s for s in cs.actions("StatusNotification") if s["status"] == "Charging"]
    assert charging


def test_a_bad_setting_is_refused(tmp_dir):
    from tools.pilotsim.__main__ import main
    import io
    out = io.StringIO()
    assert main(["demo", "--set", "no_such_key=1"], out=out) == 2
    assert "no_such_key" in out.getvalue()
    out = io.StringIO()
    assert main(["demo", "--set", "ocpp_ping_s=often"], out=out) == 2


def test_make_station_against_an_ocpp_central_system(tmp_dir):
    # `make station STATION_ARGS="--set backend=ocpp16 ..."`: a virtual station in real time.
    async def until(pred, secs=60):
        for _ in range(secs * 10):
            if pred():
                return True
            await asyncio.sleep(0.1)
        return False

    async def scenario():
        cs = CentralSystem()
        port = await cs.start()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tools.station", "--storage", os.path.join(tmp_dir, "flash"),
            "--set", "backend=ocpp16", "--set", "ocpp_url=ws://127.0.0.1:%d/ocpp" % port,
            "--set", "ocpp_id=" + IDENTITY, "--set", "ocpp_password=" + PASSWORD,
            cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        try:
            assert await until(lambda: cs.actions("StatusNotification")), "no boot"
            for line in ("plug", "charge 10"):
                proc.stdin.write((line + "\n").encode())
            await proc.stdin.drain()
            assert await until(lambda: cs.actions("StartTransaction")), "no transaction"
            proc.stdin.write(b"unplug\n")
            await proc.stdin.drain()
            assert await until(lambda: cs.actions("StopTransaction")), "no stop"
            proc.stdin.write(b"quit\n")
            await proc.stdin.drain()
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            return out.decode(), cs
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await cs.stop()

    out, cs = asyncio.run(scenario())
    assert "OCPP 1.6J central system ws://127.0.0.1" in out and PASSWORD not in out
    assert cs.actions("BootNotification")[0]["chargePointSerialNumber"] == "cp-0001"
    assert cs.actions("StartTransaction")[0]["idTag"] == "FREE"
    assert cs.actions("StopTransaction")[0]["reason"] == "EVDisconnected"

"""The central system's process is killed (SIGKILL: no WebSocket close, no answer) in the middle
of a session and started again: every transaction message reaches it once, in order, with
the transactionId the first process assigned. The central system is the `ocpp` library in a
process of its own (tests/system/ocpp_cs.py main()); the station runs on the stand-in."""
import asyncio
import json
import os
import signal
import socket
import sys

from ocpp_cs import Station

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def start_cs(port, log):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + HERE)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, os.path.join(HERE, "ocpp_cs.py"), str(port), log, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE)
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.decode().strip() == "listening %d" % port, line
    return proc


def calls(log):
    with open(log) as f:
        return [json.loads(line) for line in f]


def test_central_system_killed_mid_session_then_restarted(tmp_dir):
    async def scenario():
        port = free_port()
        log = os.path.join(tmp_dir, "cs.jsonl")
        cs = await start_cs(port, log)
        st = await Station.start(tmp_dir, "ws://127.0.0.1:%d/ocpp" % port,
                                 config={"ocpp_meter_interval_s": 10})
        try:
            await st.run(20000, until="online")
            await st.do("ev", plugged=True, charge=True)
            await st.do("tag", id="CARD-OK")
            snap = await st.run(10000, until="tx")
            assert snap["tx_id"] == 1001
            await st.run(15000)
            await st.run(5000, until="idle")        # nothing of ours in flight at the kill
            before = len(calls(log))
            cs.send_signal(signal.SIGKILL)
            await cs.wait()
            await st.run(30000, until="offline")
            await st.run(25000)
            await st.do("ev", plugged=False)
            snap = await st.run(3000)
            assert snap["pending"] >= 3 and not snap["online"]
            assert len(calls(log)) == before
            cs = await start_cs(port, log)
            snap = await st.run(150000, until="delivered")
            got = calls(log)
            tx = [(a, p) for a, p in got
                  if a in ("StartTransaction", "MeterValues", "StopTransaction")]
            kinds = [a for a, _ in tx]
            assert kinds[0] == "StartTransaction" and kinds.count("StartTransaction") == 1
            assert kinds[-1] == "StopTransaction" and kinds.count("StopTransaction") == 1
            assert len(kinds) >= 6
            assert [p["transactionId"] for _, p in tx[1:]] == [1001] * (len(tx) - 1)
            stamps = [p["meterValue"][0]["timestamp"] if a == "MeterValues" else p["timestamp"]
                      for a, p in tx]
            assert stamps == sorted(stamps)
            assert len({json.dumps(p, sort_keys=True) for _, p in tx}) == len(tx)   # once each
            regs = [int(p["meterValue"][0]["sampledValue"][0]["value"]) for a, p in tx
                    if a == "MeterValues"]
            assert regs == sorted(regs) and tx[-1][1]["meterStop"] >= regs[-1]
            assert len([a for a, _ in got if a == "BootNotification"]) == 1
            assert snap["stats"]["tx_dropped"] == 0 and snap["stats"]["connects"] == 2
        finally:
            await st.close()
            if cs.returncode is None:
                cs.kill()
                await cs.wait()
    asyncio.run(asyncio.wait_for(scenario(), 240))

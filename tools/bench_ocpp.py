"""The OCPP 1.6J figures of `make bench` (tools/bench.py, docs/performance.md):

- standin_heap_min_bytes_ocpp: the smallest -X heapsize with which an OCPP session completes
  on the stand-in, by bisection as for MQTT: boot, GetConfiguration (the largest answer,
  every key: a CALLERROR instead fails the session),
  an RFID card (Authorize), StartTransaction, meter values every 10 s, the EV unplugged,
  every transaction message confirmed.
- ocpp_frozen_code_bytes: the OCPP code in the frozen image (firmware/ocpp16, firmware/ws.py,
  firmware/backend/station_ops.py).
- ocpp_idle_bytes_per_hour: WebSocket bytes both ways while the station stands idle and
  online, with the defaults (WebSocket ping 60 s, HeartbeatInterval 300 s from the central
  system's BootNotification answer), per simulated hour.

The central system is the `ocpp` library (tests/system/ocpp_cs.py), the station
tests/system/ocpp_station.py on the stand-in in simulated time. The heap figure is the
firmware's: the station's harness (the SimBoard, the pilot model, the meter double) is
measured in every run and held apart, as in the MQTT bench (tools/bench_rig.py HarnessRoom).
"""
import asyncio
import os
import shutil
import sys

from tools.devicefiles import ROOT

_SYSTEM = os.path.join(ROOT, "tests", "system")
if _SYSTEM not in sys.path:
    sys.path.insert(0, _SYSTEM)

KB = 1024
OCPP_FROZEN = ("firmware/ocpp16/", "firmware/ws.mpy", "firmware/backend/station_ops.mpy")


def frozen_bytes(sizes):
    """The OCPP code's share of standin.frozen_sizes()."""
    return sum(n for path, n in sizes.items() if path.startswith(OCPP_FROZEN))


async def _run(st, ms, until=None, chunk=5000):
    """st.run in slices, so that no answer waits long on a loaded machine; with `until`, up
    to `ms` until the condition holds (AssertionError when it never does)."""
    snap = None
    while ms > 0:
        n = min(ms, chunk)
        ms -= n
        if until is None:
            snap = await st.run(n)
            continue
        try:
            return await st.run(n, until=until)
        except AssertionError as e:
            if "not reached" not in str(e) or ms <= 0:
                raise
    return snap


async def _session(tmp, heap_kb, quick, room):
    from ocpp.v16 import call
    from ocpp_cs import CentralSystem, Station, remote
    cs = CentralSystem()
    port = await cs.start()
    st = None
    try:
        st = await Station.start(tmp, "ws://127.0.0.1:%d/ocpp" % port, heap="%dK" % heap_kb,
                                 config={"ocpp_meter_interval_s": 5 if quick else 10})
        room.update(st.room)
        await _run(st, 30000, until="online")
        # A CALLERROR (out of memory building the answer) raises: the session failed.
        conf = await remote(cs, st, call.GetConfiguration(), suppress=False)
        assert len(conf.configuration_key) >= 30, conf
        await st.do("ev", plugged=True, charge=True)
        await st.do("tag", id="CARD-OK")
        await _run(st, 10000, until="tx")
        await _run(st, 16000 if quick else 35000)
        await st.do("ev", plugged=False)
        snap = await _run(st, 30000, until="delivered")
        return len(cs.actions("MeterValues")) >= 3 and snap["stats"]["errors_in"] == 0
    finally:
        if st is not None:
            await st.close()
        await cs.stop()


def session_completes(tmp, heap_kb, quick=False, room=None):
    """(ok, why) of one session whose firmware has the pool of -X heapsize=heap_kb K, the
    harness held apart (tests/system/ocpp_cs.py HARNESS_ROOM_KB); `room`, a dict, gets the
    harness's measured bytes (tools/bench_rig.py HarnessRoom)."""
    d = os.path.join(tmp, "ocpp-heap-%d" % heap_kb)
    shutil.rmtree(d, ignore_errors=True)
    try:
        return asyncio.run(asyncio.wait_for(
            _session(d, heap_kb, quick, {} if room is None else room), 600)), "completes"
    except Exception as e:  # noqa: BLE001 - out of heap shows as the station process failing
        lines = [x for x in ("%s: %s" % (type(e).__name__, e)).splitlines() if x.strip()]
        return False, " / ".join(lines[-2:])[:300]
    finally:
        shutil.rmtree(d, ignore_errors=True)


def heap_min(tmp, quick, log, lo_kb=32, hi_kb=112):
    """(bytes, detail): the smallest heap that completes (KB resolution 1; --quick: 16, a
    shorter session)."""
    step = 16 if quick else 1
    tried = {}
    harness = {}

    def completes(kb):
        room = {}
        ok, why = session_completes(tmp, kb, quick, room)
        if not ok and "MemoryError" not in why and "out of memory" not in why:
            # Not the heap (a wall-clock timeout on a loaded machine): once more, so that
            # the bisection only ever turns on what the heap decides.
            log("  OCPP heap %d KB: %s; again" % (kb, why))
            ok, why = session_completes(tmp, kb, quick)
        tried[kb] = why
        if room:
            harness[kb] = room["harness"]
        log("  OCPP heap %d KB: %s (harness %s B apart)" % (kb, why, room.get("harness")))
        return ok

    if not completes(hi_kb):
        raise RuntimeError("the OCPP session does not complete in %d KB: %s"
                           % (hi_kb, tried[hi_kb]))
    lo, hi = lo_kb, hi_kb
    while hi - lo > step:
        mid = (lo + hi) // 2
        if completes(mid):
            hi = mid
        else:
            lo = mid
    return hi * KB, {"resolution_kb": step, "tried_kb": tried, "harness_bytes": harness}


async def _idle(tmp, idle_s):
    from ocpp_cs import CentralSystem, Station
    # No pings of the central system's own: they come every 20 s of wall time, so their
    # share of a simulated hour would follow the machine's speed, not the station.
    cs = CentralSystem(interval=300, ping_interval=None)
    port = await cs.start()
    st = None
    try:
        st = await Station.start(tmp, "ws://127.0.0.1:%d/ocpp" % port)
        await _run(st, 30000, until="online")
        a = await _run(st, 70000)            # boot and status messages done
        hb_a = len(cs.actions("Heartbeat"))
        b = a
        left = idle_s * 1000
        while left > 0:
            b = await st.run(min(left, 5000))
            left -= 5000
        wa, wb = a["stats"], b["stats"]
        beats = len(cs.actions("Heartbeat")) - hb_a
        if beats < idle_s // 300 - 1 or b["service_errors"]:
            # Fewer heartbeats than the interval gives: the backend was not stepped as it
            # should have been; a figure from such a run would be wrong, not small.
            raise RuntimeError("idle run: %d heartbeats in %d s (HeartbeatInterval 300 s), "
                               "%d service errors (last: %s)"
                               % (beats, idle_s, b["service_errors"], b["last_error"]))
        return {"sim_ms": b["t"] - a["t"], "rx": wb["rx"] - wa["rx"], "tx": wb["tx"] - wa["tx"],
                "pings": wb["pings"] - wa["pings"], "pongs": wb["pongs"] - wa["pongs"],
                "connects": wb["connects"] - wa["connects"],
                "heartbeats": beats}
    finally:
        if st is not None:
            await st.close()
        await cs.stop()


def idle_bytes_per_hour(tmp, idle_s):
    d = os.path.join(tmp, "ocpp-idle")
    shutil.rmtree(d, ignore_errors=True)
    r = asyncio.run(asyncio.wait_for(_idle(d, idle_s), 3000))
    shutil.rmtree(d, ignore_errors=True)
    return round((r["rx"] + r["tx"]) * 3600000 / r["sim_ms"]), r

"""A central system for the OCPP tests: the `ocpp` library (PyPI) on a `websockets` server,
plus the station (tests/system/ocpp_station.py) on the ESP32 stand-in as a subprocess.

The library validates every message against the OCPP 1.6 JSON schemas in both directions
(an invalid one from the station is answered with a CALLERROR, which the tests see in the
station's error counts); the central system also keeps every frame as it came, in order.
"""
import asyncio
import base64
import itertools
import json
import os
import subprocess
from contextlib import asynccontextmanager
from datetime import datetime, timezone

import websockets
from websockets.asyncio.server import serve
from websockets.datastructures import Headers
from websockets.http11 import Response
from ocpp.messages import Call, validate_payload
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call_result
from ocpp.v16.datatypes import IdTagInfo
from ocpp.v16.enums import Action, AuthorizationStatus, RegistrationStatus

from tools.devicefiles import MICROPYTHON, micropython_env, mp_cwd

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
IDENTITY = "CP-1"
PASSWORD = "s3cret-passw0rd-16"


def now_iso():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class StationSide(ChargePoint):
    """The central system's view of one charge point."""

    def __init__(self, cs, cp_id, connection):
        ChargePoint.__init__(self, cp_id, connection, response_timeout=10)
        self.cs = cs

    async def route_message(self, raw):
        msg = json.loads(raw)
        if msg[0] == 2:
            # Schema check of our own, so a failure shows here and not only as a CALLERROR.
            await validate_payload(Call(msg[1], msg[2], msg[3]), "1.6")
            self.cs.calls.append((msg[2], msg[3]))
            if self.cs.log is not None:
                self.cs.log.write(json.dumps([msg[2], msg[3]]) + "\n")
                self.cs.log.flush()
        self.cs.frames.append(msg)
        return await ChargePoint.route_message(self, raw)

    @on(Action.boot_notification)
    def on_boot(self, **kw):
        status = self.cs.boot_status.pop(0) if self.cs.boot_status else "Accepted"
        return call_result.BootNotification(current_time=now_iso(), interval=self.cs.interval,
                                            status=RegistrationStatus(status))

    @on(Action.heartbeat)
    def on_heartbeat(self):
        return call_result.Heartbeat(current_time=now_iso())

    @on(Action.status_notification)
    def on_status(self, **kw):
        return call_result.StatusNotification()

    @on(Action.authorize)
    def on_authorize(self, id_tag):
        ok = id_tag in self.cs.accepted_tags
        return call_result.Authorize(id_tag_info=IdTagInfo(
            status=AuthorizationStatus.accepted if ok else AuthorizationStatus.invalid))

    @on(Action.start_transaction)
    def on_start(self, id_tag, **kw):
        return call_result.StartTransaction(
            transaction_id=next(self.cs.tx_ids),
            id_tag_info=IdTagInfo(status=AuthorizationStatus.accepted))

    @on(Action.meter_values)
    def on_meter_values(self, **kw):
        return call_result.MeterValues()

    @on(Action.stop_transaction)
    def on_stop(self, **kw):
        return call_result.StopTransaction()


# The station's meter (tests/system/ocpp_rig.py's Modbus double). Input registers, u32
# big-endian: voltage dV L1..L3, current mA L1..L3, power W, import Wh.
METER_MAP = ('{"fc": 4, "max_regs": 80, "max_gap": 80, "phases": 3,'
             ' "voltage": [0, "u32", 1, 1], "current": [6, "u32", 1, 1],'
             ' "power": [12, "i32", 1, 1], "import": [14, "u32", 1, 1]}')


class CentralSystem:
    def __init__(self, interval=300, password=PASSWORD, ping_interval=20):
        self.interval = interval
        # The server's own WebSocket pings (websockets' default: every 20 s of wall time):
        # None for a figure of the station's traffic alone (tools/bench_ocpp.py).
        self.ping_interval = ping_interval
        self.password = password
        self.boot_status = []
        self.accepted_tags = {"CARD-OK"}
        self.tx_ids = itertools.count(1001)
        self.calls = []          # (action, payload) of every CALL from the station, in order
        self.frames = []
        self.cp = None
        self.connected = asyncio.Event()
        self.server = None
        self.port = None
        self.auth_seen = []
        self.log = None          # a file: every CALL as a JSON line, as received (main())
        self.ssl = None

    def _check(self, connection, request):
        got = request.headers.get("Authorization")
        self.auth_seen.append(got)
        want = "Basic " + base64.b64encode(("%s:%s" % (IDENTITY, self.password)).encode()).decode()
        if self.password is not None and got != want:
            return Response(401, "Unauthorized", Headers([("WWW-Authenticate", "Basic")]), b"")
        return None

    async def _handler(self, ws):
        cp_id = ws.request.path.rstrip("/").split("/")[-1]
        self.cp = StationSide(self, cp_id, ws)
        self.connected.set()
        try:
            await self.cp.start()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.connected.clear()

    async def start(self, port=0, ssl=None):
        """Listen on 127.0.0.1 (`ssl`: an ssl.SSLContext for wss://)."""
        if ssl is not None:
            self.ssl = ssl
        self.server = await serve(self._handler, "127.0.0.1", port, subprotocols=["ocpp1.6"],
                                  process_request=self._check, ssl=self.ssl,
                                  ping_interval=self.ping_interval)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self):
        self.server.close()
        await self.server.wait_closed()
        self.connected.clear()

    def actions(self, name=None):
        return [p for a, p in self.calls if name is None or a == name]

    def tx_calls(self):
        return [(a, p) for a, p in self.calls
                if a in ("StartTransaction", "MeterValues", "StopTransaction")]


# Heap the station's process gets on top of the figure under test (`heap`), for the harness
# (tests/system/ocpp_station.py: the SimBoard, the pilot model, the meter double); what the
# harness does not take is held by a ballast block (tools/bench_rig.py HarnessRoom), so the
# firmware has the pool of `-X heapsize=<heap>`. Not a figure: the harness is measured in
# every run (Station.room).
HARNESS_ROOM_KB = 16
_pools = {}


def heap_pool(heap, runtime=MICROPYTHON):
    """The GC pool (gc.mem_alloc() + gc.mem_free()) of `runtime` at -X heapsize=`heap`."""
    key = (heap, runtime)
    if key not in _pools:
        out = subprocess.run([runtime, "-X", "heapsize=" + heap, "-c",
                              "import gc\nprint(gc.mem_alloc() + gc.mem_free())"],
                             cwd=mp_cwd() if runtime == MICROPYTHON else ROOT,
                             env=micropython_env(runtime=runtime), capture_output=True,
                             text=True, timeout=30, check=True)
        _pools[key] = int(out.stdout.strip())
    return _pools[key]


def _kb(heap):
    assert heap.endswith("K"), heap
    return int(heap[:-1])


class Station:
    """The station process: one JSON command, one JSON answer. `heap` ("76K"): the heap the
    firmware gets, the harness held apart (HARNESS_ROOM_KB); `room`: the first line's
    figures (harness, ballast, pool)."""

    def __init__(self, proc):
        self.proc = proc
        self.room = None

    @classmethod
    async def start(cls, tmp, url, config=None, heap=None, start_wh=1000, runtime=MICROPYTHON):
        opts = {"store": os.path.join(tmp, "data"), "start_wh": start_wh,
                "config": dict({"meter_map": "custom", "meter_custom_map": METER_MAP,
                                "backend": "ocpp16", "ocpp_url": url, "ocpp_id": IDENTITY,
                                "ocpp_password": PASSWORD, "auth_mode": "backend"},
                               **(config or {}))}
        if heap:
            opts["firmware_pool"] = heap_pool(heap, runtime)
        os.makedirs(tmp, exist_ok=True)
        path = os.path.join(tmp, "opts.json")
        with open(path, "w") as f:
            json.dump(opts, f)
        args = [runtime]
        if heap:
            args += ["-X", "heapsize=%dK" % (_kb(heap) + HARNESS_ROOM_KB)]
        args += [os.path.join(HERE, "ocpp_station.py"), path]
        proc = await asyncio.create_subprocess_exec(
            *args, cwd=mp_cwd() if runtime == MICROPYTHON else ROOT,
            env=micropython_env(runtime=runtime), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE)
        st = cls(proc)
        try:
            ready = await st._line()
            assert ready.pop("ready", None) is True, ready
            st.room = ready
        except BaseException:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()          # no process left behind when it could not start
            raise
        return st

    async def _line(self):
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        if not line:
            raise AssertionError("the station process ended (rc %s)" % await self.proc.wait())
        try:
            return json.loads(line)
        except ValueError:
            # Not an answer: the station printed an exception (MemoryError, ...).
            try:
                rest = await asyncio.wait_for(self.proc.stdout.read(), 5)   # to its end
            except asyncio.TimeoutError:
                rest = b""
            raise AssertionError("the station says: %s" % (line + rest).decode(errors="replace"))

    async def do(self, what, **kw):
        kw["do"] = what
        self.proc.stdin.write((json.dumps(kw) + "\n").encode())
        await self.proc.stdin.drain()
        out = await self._line()
        assert "error" not in out, out
        return out

    async def run(self, ms, until=None, paced=False):
        return await self.do("run", ms=ms, until=until, paced=paced)

    async def close(self):
        if self.proc.returncode is None:
            try:
                self.proc.stdin.write(b'{"do": "quit"}\n')
                await self.proc.stdin.drain()
                await asyncio.wait_for(self.proc.wait(), 10)
            except (asyncio.TimeoutError, ConnectionError):
                self.proc.kill()
                await self.proc.wait()


async def remote(cs, st, payload, wall_s=10, suppress=True):
    """A CALL from the central system, answered while the station steps 1:1 with wall time."""
    task = asyncio.ensure_future(cs.cp.call(payload, suppress=suppress))
    for _ in range(wall_s * 10):
        if task.done():
            break
        await st.run(100, paced=True)
    return await task


async def outage(cs, st):
    """Stop the central system while the station steps (it answers the closing handshake)."""
    task = asyncio.ensure_future(cs.stop())
    for _ in range(200):
        if task.done():
            break
        await st.run(100, paced=True)
    await task


@asynccontextmanager
async def session(tmp, cs=None, url=None, **station):
    """A central system (a fresh one unless given) on a free port and the station pointed at
    it; both stopped afterwards. Yields (cs, station). `station`: Station.start's options."""
    cs = cs if cs is not None else CentralSystem()
    port = await cs.start()
    st = None
    try:
        st = await Station.start(tmp, url or "ws://127.0.0.1:%d/ocpp" % port, **station)
        yield cs, st
    finally:
        if st is not None:
            await st.close()
        if cs.server is not None:
            await cs.stop()


async def _serve(port, log_path, first_tx_id):
    cs = CentralSystem()
    cs.tx_ids = itertools.count(first_tx_id)
    with open(log_path, "a") as log:
        cs.log = log
        await cs.start(port)
        print("listening %d" % cs.port, flush=True)
        await asyncio.Event().wait()


def main():
    """The central system as a process of its own (for a test that kills it):
    ocpp_cs.py PORT LOG_FILE [FIRST_TRANSACTION_ID]; prints "listening PORT" when ready and
    appends every CALL it receives to LOG_FILE as a JSON line."""
    import sys
    port = int(sys.argv[1])
    first = int(sys.argv[3]) if len(sys.argv) > 3 else 1001
    asyncio.run(_serve(port, sys.argv[2], first))


if __name__ == "__main__":
    main()

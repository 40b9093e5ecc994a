"""The Modbus master and the meter service against pymodbus as the meter (RTU over TCP).

Every supported map decodes to the values the peer serves; every fault a real bus shows
(corrupt CRC, no reply, exception 01..04, another slave's reply, truncated frame, noise
before the frame, slow replies) leaves the master running with the right counters; the
service's stale flag is set and cleared. Also: the master on the MicroPython unix port,
and the technician tool. Short timeouts keep it fast.
"""
import json
import os
import subprocess
import sys
import time

import pytest

from firmware import meters
from firmware.compat import ticks_ms, sleep_ms, ticks_diff
from firmware.config import Config
from firmware.meter_service import MeterService, NEW_READING, STALE_CHANGED
from firmware.modbus import (ModbusMaster, ModbusError, ERR_CRC, ERR_TIMEOUT, ERR_EXCEPTION,
                             ERR_BAD_FRAME)
from tests.system.meter_peer import MeterPeer, values_list
from tools.devicefiles import MICROPYTHON, ROOT, micropython_env, mp_cwd
from tools.tcpuart import open_stream

# Generous enough for a loaded test machine, short enough to keep the file fast.
FAST = {"meter_poll_ms": 200, "meter_timeout_ms": 150, "meter_retries": 0,
        "meter_stale_after": 2}

VALUES = {"voltage_dv": [2301, 2315, 2288], "current_ma": [15999, 16012, 15987],
          "power_w": -3502, "import_wh": 12345678, "export_wh": 4321}


def expected(mmap, values):
    want = [0 if v is None else v for v in values_list(values)]
    for _a, _w, q, code, mul, _d in mmap.items:
        if code not in (meters.ENC_F32, meters.ENC_F32_CDAB) and mul > 1:
            want[q] = (want[q] + mul // 2) // mul * mul
    if mmap.phases == 1:
        for q in (meters.V_L2, meters.V_L3, meters.I_L2, meters.I_L3):
            want[q] = 0
    if not mmap.has_export:
        want[meters.EXPORT] = 0
    return want


def service_values(svc):
    return (list(svc.voltage_dv) + list(svc.current_ma)
            + [svc.power_w, svc.import_wh, svc.export_wh if svc.has_export else 0])


def run_until(svc, cond, limit_ms=3000):
    start = ticks_ms()
    changes = 0
    while ticks_diff(ticks_ms(), start) < limit_ms:
        changes |= svc.poll(ticks_ms())
        if cond(changes):
            return changes
        sleep_ms(2)
    raise AssertionError("condition not reached within %d ms" % limit_ms)


@pytest.fixture
def peer():
    with MeterPeer("sdm630", VALUES) as p:
        yield p


@pytest.fixture
def master(peer):
    stream = open_stream(peer.spec)
    m = ModbusMaster(stream, 9600, timeout_ms=150, retries=0)
    yield m
    stream.close()


@pytest.mark.parametrize("name", meters.BUILTIN_NAMES)
def test_every_map_decodes_what_the_meter_serves(name):
    with MeterPeer(name, VALUES, slave=7) as peer:
        cfg = Config(dict(FAST, meter_map=name, meter_addr=7))
        stream = open_stream(peer.spec)
        svc = MeterService(cfg, stream)
        run_until(svc, lambda c: c & NEW_READING)
        stream.close()
    assert service_values(svc) == expected(svc.map, VALUES)
    if not svc.has_export:
        assert svc.export_wh is None
    assert not svc.implausible and not svc.stale
    # Bytes on the wire for one poll are what the plan says.
    assert peer.requests == len(svc.map.plan)
    assert peer.rx_bytes + peer.tx_bytes == svc.map.plan_bytes()


SERIAL_MAPS = [n for n in meters.BUILTIN_NAMES if meters.load_map(n).serial is not None]


def test_some_maps_have_a_serial_register():
    assert "sdm630" in SERIAL_MAPS and "abb_b23" in SERIAL_MAPS


@pytest.mark.parametrize("name", SERIAL_MAPS)
def test_the_serial_number_is_served_on_its_own_function_code(name):
    # The firmware's own serial request (its address, encoding and function code from the
    # map) against pymodbus; a live exchange then shows the new number and the new register
    # together, and the values' table is not disturbed by the serial's pending words.
    with MeterPeer(name, VALUES, slave=3, serial=31000017) as peer:
        cfg = Config(dict(FAST, meter_map=name, meter_addr=3))
        stream = open_stream(peer.spec)
        try:
            svc = MeterService(cfg, stream)
            svc.request_serial()
            run_until(svc, lambda c: svc.serial is not None)
            assert svc.serial == 31000017
            assert svc.serial_failures == 0
            peer.set_serial(31000042)
            peer.set_values(import_wh=1500)
            svc.request_serial()
            run_until(svc, lambda c: svc.serial == 31000042 and svc.import_wh == 1500)
        finally:
            stream.close()
    assert service_values(svc)[meters.IMPORT] == 1500


def test_a_map_without_serial_refuses_set_serial():
    with MeterPeer("em340", VALUES) as peer:
        with pytest.raises(ValueError):
            peer.set_serial(5)


def test_live_changes_reach_the_service(peer):
    stream = open_stream(peer.spec)
    svc = MeterService(Config(FAST), stream)
    run_until(svc, lambda c: c & NEW_READING)
    peer.set_values(import_wh=12345679, current_ma=[20000, 1000, 0])
    run_until(svc, lambda c: svc.import_wh == 12345679)
    assert svc.current_ma == [20000, 1000, 0]
    stream.close()


def test_corrupt_crc(peer, master):
    peer.inject("crc", count=1)
    with pytest.raises(ModbusError) as e:
        master.read_registers(1, 4, 0, 2)
    assert e.value.kind == ERR_CRC
    assert master.read_registers(1, 4, 0, 2) == [0x4366, 0x199A]   # 230.1 V, next one fine
    s = master.stats()
    assert (s["requests"], s["replies"], s["crc_errors"], s["timeouts"]) == (2, 1, 1, 0)


def test_retry_recovers_from_one_bad_reply(peer):
    stream = open_stream(peer.spec)
    m = ModbusMaster(stream, 9600, timeout_ms=150, retries=1)
    peer.inject("crc", count=1)
    assert m.read_registers(1, 4, 0, 2) == [0x4366, 0x199A]
    assert (m.requests, m.retries, m.crc_errors, m.replies) == (2, 1, 1, 1)
    stream.close()


def test_no_reply(peer, master):
    peer.inject("no_reply", count=1)
    with pytest.raises(ModbusError) as e:
        master.read_registers(1, 4, 0, 2)
    assert e.value.kind == ERR_TIMEOUT
    assert master.timeouts == 1 and master.replies == 0
    assert peer.requests == 1


@pytest.mark.parametrize("code", [1, 2, 3, 4])
def test_exception_codes(peer, master, code):
    peer.inject("exception", count=1, code=code)
    with pytest.raises(ModbusError) as e:
        master.read_registers(1, 4, 0, 2)
    assert (e.value.kind, e.value.exception_code) == (ERR_EXCEPTION, code)
    assert (master.exceptions, master.replies, master.retries) == (1, 1, 0)


def test_illegal_address_from_the_datastore(peer, master):
    # The SDM630 map has nothing at 0x100: pymodbus itself answers exception 02.
    with pytest.raises(ModbusError) as e:
        master.read_registers(1, 4, 0x100, 2)
    assert e.value.exception_code == 2
    # Input registers only: FC03 is not served either.
    with pytest.raises(ModbusError) as e:
        master.read_registers(1, 3, 0, 2)
    assert e.value.kind == ERR_EXCEPTION


def test_reply_from_another_slave(peer, master):
    peer.inject("wrong_slave", count=1)
    with pytest.raises(ModbusError) as e:
        master.read_registers(1, 4, 0, 2)
    assert e.value.kind == ERR_TIMEOUT
    assert (master.bad_frames, master.replies, master.timeouts) == (1, 0, 1)


def test_truncated_frame(peer, master):
    peer.inject("truncated", count=1)
    with pytest.raises(ModbusError) as e:
        master.read_registers(1, 4, 0, 2)
    assert e.value.kind == ERR_BAD_FRAME
    assert (master.bad_frames, master.timeouts, master.crc_errors) == (1, 0, 0)
    assert master.read_registers(1, 4, 0, 2) == [0x4366, 0x199A]


def test_garbage_before_the_frame(peer, master):
    peer.inject("garbage", count=1, garbage=b"\x00\x01\x04\xff\x55")
    assert master.read_registers(1, 4, 0, 2) == [0x4366, 0x199A]
    assert (master.bad_frames, master.replies) == (1, 1)


def test_slow_reply_inside_the_timeout(peer):
    stream = open_stream(peer.spec)
    m = ModbusMaster(stream, 9600, timeout_ms=400, retries=0)
    peer.inject("delay", count=1, delay_ms=100)
    assert m.read_registers(1, 4, 0, 2) == [0x4366, 0x199A]
    assert m.timeouts == 0
    stream.close()


def test_slow_reply_beyond_the_timeout(peer, master):
    peer.inject("delay", count=1, delay_ms=400)
    with pytest.raises(ModbusError) as e:
        master.read_registers(1, 4, 0, 2)
    assert e.value.kind == ERR_TIMEOUT
    time.sleep(0.5)              # the late reply lands in the receiver
    peer.set_values(voltage_dv=[2400, 0, 0])
    # The late (stale) reply is dropped before the next request, not taken as its answer.
    assert master.read_registers(1, 4, 0, 2) == [0x4370, 0]
    assert (master.timeouts, master.bad_frames, master.replies) == (1, 1, 1)


def test_stale_is_set_and_cleared(peer):
    stream = open_stream(peer.spec)
    events = []
    svc = MeterService(Config(FAST), stream, on_change=lambda *e: events.append(e))
    run_until(svc, lambda c: c & NEW_READING)
    peer.inject("no_reply")
    run_until(svc, lambda c: c & STALE_CHANGED)
    assert svc.stale and svc.consecutive_failures == 2
    assert svc.import_wh == 12345678          # last good value still there
    peer.clear_faults()
    run_until(svc, lambda c: c & STALE_CHANGED)
    assert not svc.stale
    assert [e[:2] for e in events] == [("stale", True), ("stale", False)]
    assert svc.stats()["timeouts"] >= 2
    stream.close()


def test_every_fault_in_a_row_never_crashes_the_service(peer):
    stream = open_stream(peer.spec)
    svc = MeterService(Config(dict(FAST, meter_stale_after=20)), stream)
    for fault in ("crc", "no_reply", "exception", "wrong_slave", "truncated", "garbage"):
        peer.inject(fault, count=1, code=3)
        run_until(svc, lambda c: c & NEW_READING)
    s = svc.stats()
    assert s["crc_errors"] == 1 and s["exceptions"] == 1 and s["timeouts"] == 2
    assert s["bad_frames"] == 3          # wrong slave, truncated, garbage
    assert s["cycles_failed"] == 5 and not svc.stale
    assert service_values(svc) == expected(svc.map, VALUES)
    stream.close()


def test_two_meters_on_one_bus():
    peer = MeterPeer("sdm630", VALUES, slave=1)
    peer.add_meter(5, "em340", {"import_wh": 777700})
    with peer:
        stream = open_stream(peer.spec)
        a = MeterService(Config(dict(FAST, meter_addr=1)), stream)
        run_until(a, lambda c: c & NEW_READING)
        b = MeterService(Config(dict(FAST, meter_map="em340", meter_addr=5)), stream)
        run_until(b, lambda c: c & NEW_READING)
        stream.close()
    assert a.import_wh == 12345678
    assert b.import_wh == 777700


MP_CLIENT = r"""
import json
from firmware.compat import ticks_ms, sleep_ms, ticks_diff
from firmware.config import Config
from firmware.meter_service import MeterService, NEW_READING
from tools.tcpuart import open_stream
stream = open_stream(SPEC)
svc = MeterService(Config(CFG), stream)
start = ticks_ms()
got = 0
while got < 2 and ticks_diff(ticks_ms(), start) < 5000:
    if svc.poll(ticks_ms()) & NEW_READING:
        got += 1
    sleep_ms(2)
out = svc.reading()
out["stats"] = svc.stats()
out["got"] = got
print("RESULT " + json.dumps(out))
"""


@pytest.mark.parametrize("name", ["sdm630", "abb_b23", "em340"])
def test_master_on_the_unix_port_against_pymodbus(name):
    if not os.path.exists(MICROPYTHON):
        pytest.skip("MicroPython unix port not installed")
    with MeterPeer(name, VALUES) as peer:
        peer.inject("garbage", count=1)
        cfg = dict(FAST, meter_map=name)
        code = MP_CLIENT.replace("SPEC", repr(peer.spec)).replace("CFG", json.dumps(cfg))
        r = subprocess.run([MICROPYTHON, "-c", code], cwd=mp_cwd(), env=micropython_env(),
                           capture_output=True, text=True, timeout=60)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, r.stdout + r.stderr
    out = json.loads(line[0][7:])
    assert out["got"] == 2
    mmap = meters.load_map(name)
    want = expected(mmap, VALUES)
    assert out["voltage_dv"] == want[0:3]
    assert out["current_ma"] == want[3:6]
    assert [out["power_w"], out["import_wh"], out["export_wh"] or 0] == want[6:9]
    assert out["stats"]["bad_frames"] == 1           # the noise before the first reply
    assert out["stats"]["replies"] == 2 * len(mmap.plan)


def run_tool(*args):
    return subprocess.run([sys.executable, "-m", "tools.meter"] + list(args), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_technician_tool_prints_readings_with_units(peer):
    r = run_tool("--port", peer.spec, "--map", "sdm630", "--addr", "1", "--timeout-ms", "100")
    assert r.returncode == 0, r.stdout + r.stderr
    for text in ("L1 230.1 V", "L3 228.8 V", "L2 16.012 A", "-3502 W", "12345.678 kWh",
                 "4.321 kWh", "bus: requests 3, replies 3", "75 bytes per poll (minimum 75)"):
        assert text in r.stdout


def test_technician_tool_scan():
    peer = MeterPeer("sdm630", VALUES, slave=2)
    peer.add_meter(4, "sdm630")
    with peer:
        r = run_tool("--port", peer.spec, "--scan", "--scan-range", "1-5", "--timeout-ms", "50")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "address 2 answers" in r.stdout and "address 4 answers" in r.stdout
    assert "address 1 answers" not in r.stdout
    assert "2 of 5 addresses answer" in r.stdout


def test_technician_tool_reports_a_silent_meter(peer):
    r = run_tool("--port", peer.spec, "--addr", "9", "--timeout-ms", "50", "--retries", "0",
                 "--interval-ms", "200")
    assert r.returncode == 1
    assert "no reading: timeout" in r.stdout


def test_technician_tool_rejects_bad_arguments():
    r = run_tool("--port", "tcp:127.0.0.1:1", "--addr", "300")
    assert r.returncode == 2
    assert "meter_addr" in r.stderr
    r = run_tool("--port", "tcp:127.0.0.1:1", "--map", "custom", "--custom-map", '{"fc": 5}')
    assert r.returncode == 2
    assert "'voltage' is required" in r.stderr

"""The reference board's RS-485 stream (Esp32Board.meter_uart) on the unix port, wired
through the fake UART's socket to a real Modbus server (pymodbus as an SDM630, RTU framing
over TCP), read by the firmware's own Modbus master in simulated time."""
import json
import os
import subprocess

from meter_peer import MeterPeer
from tools.devicefiles import MICROPYTHON, ROOT, micropython_env, mp_cwd

SNIPPET = r"""
import json, struct, sys
import machine
from drivers.boardfile import load
from drivers.esp32_board import Esp32Board
from firmware.modbus import ModbusMaster
sim = machine.sim
clk = sim.clock
board = Esp32Board(load(sys.argv[1]), clock=clk)
uart = board.meter_uart(9600, "N")
sim.uart_peer(2).connect("127.0.0.1", int(sys.argv[2]))
master = ModbusMaster(uart, baud=9600, parity="N", timeout_ms=300)
regs = master.read_registers(1, 4, 0x00, 2, clock=clk.ticks_ms, sleep=clk.sleep_ms)
volts = struct.unpack(">f", struct.pack(">HH", regs[0], regs[1]))[0]
frames = [(f[0], f[1]) for f in sim.uart_peer(2).frames]
de = sim.history(4)
print("RESULT " + json.dumps({"mv": int(volts * 1000 + 0.5), "frames": frames, "de": de,
                             "stats": master.stats()}))
"""


def test_meter_read_over_the_rs485_stream(tmp_path):
    script = tmp_path / "rs485_read.py"     # a file: the unix port aborts on long argv
    script.write_text(SNIPPET)
    with MeterPeer("sdm630", {"voltage_dv": [2301, 2315, 2288]}) as peer:
        r = subprocess.run([MICROPYTHON, str(script),
                            os.path.join(ROOT, "boards", "reference.json"), str(peer.port)],
                           cwd=mp_cwd(), env=micropython_env(), capture_output=True, text=True,
                           timeout=60)
        assert peer.requests == 1
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, r.stdout + r.stderr
    res = json.loads(line[0][7:])
    assert res["mv"] == 230100
    assert res["stats"]["replies"] == 1 and res["stats"]["timeouts"] == 0
    # DE high from before the request's first bit until after its last one, then low so
    # the meter can answer.
    (start, end), = res["frames"]
    ups = [t for t, v in res["de"] if v == 1]
    downs = [t for t, v in res["de"] if v == 0 and t > 0]
    assert ups and ups[0] <= start
    assert downs and downs[-1] > end
    assert res["de"][-1][1] == 0

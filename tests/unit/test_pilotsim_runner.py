"""The runner's meter stream in simulated time, and its lock-step channel. Both runtimes."""
import io
import unittest

from tools.pilotsim.runner import Channel, PacedUart
from tools.pilotsim.simboard import SimBoard


class _Wire:
    """An in-memory byte pipe standing in for the TCP stream (the peer writes `rx`)."""

    def __init__(self):
        self.rx = bytearray()
        self.tx = bytearray()

    def write(self, buf):
        self.tx += buf
        return len(buf)

    def any(self):
        return len(self.rx)

    def read(self, n=-1):
        if not self.rx:
            return None
        n = len(self.rx) if n is None or n < 0 else n
        out = bytes(self.rx[:n])
        self.rx = self.rx[n:]
        return out

    def readinto(self, buf, n=None):
        data = self.read(len(buf) if n is None else n)
        if not data:
            return 0
        buf[:len(data)] = data
        return len(data)


class MeterLineTime(unittest.TestCase):
    def setUp(self):
        self.board = SimBoard()
        self.board.meter_uart(9600, "N")
        self.wire = _Wire()
        self.u = PacedUart(self.wire, self.board)

    def test_answer_visible_after_request_and_answer_crossed_the_line(self):
        self.u.write(b"\x01\x04\x00\x00\x00\x02\x71\xcb")        # 8 bytes
        self.assertTrue(self.u.waiting())
        self.wire.rx += bytes(9)                                   # 9-byte answer arrives
        self.assertFalse(self.u.waiting())
        # 17 characters x 10 bits at 9600 baud = 17.7 ms (+1): not before 18 ms.
        self.assertEqual(self.u.any(), 0)
        self.assertIsNone(self.u.read(9))
        self.board.now_ms += 17
        self.assertEqual(self.u.any(), 0)
        self.board.now_ms += 1
        self.assertEqual(self.u.any(), 9)
        buf = bytearray(9)
        self.assertEqual(self.u.readinto(buf), 9)
        self.assertFalse(self.u.pending)

    def test_parity_adds_a_bit_per_character(self):
        self.board.meter_uart(9600, "E")
        self.u.write(bytes(8))
        self.wire.rx += bytes(9)
        self.u.any()
        self.board.now_ms += 19
        self.assertEqual(self.u.any(), 0)          # 17 x 11 bits = 19.5 ms (+1)
        self.board.now_ms += 1
        self.assertEqual(self.u.any(), 9)

    def test_give_up_stops_waiting(self):
        self.u.write(bytes(8))
        self.assertTrue(self.u.waiting())
        self.u.give_up()
        self.assertFalse(self.u.waiting())


class LockStepChannel(unittest.TestCase):
    def test_request_waits_for_ok(self):
        out = io.StringIO()
        ch = Channel(out, io.StringIO("ok\n"))
        ch.request({"req": "meter", "import_wh": 5})
        self.assertIn('"req"', out.getvalue())

    def test_refusal_is_an_error(self):
        ch = Channel(io.StringIO(), io.StringIO("err no such meter\n"))
        self.assertRaises(RuntimeError, ch.request, {"req": "meter"})
        ch = Channel(io.StringIO(), io.StringIO(""))
        self.assertRaises(RuntimeError, ch.request, {"req": "meter"})


class _Station:
    link = None


class MeterFollowsTheEV(unittest.TestCase):
    """The simulated meter behaves like one: voltage stays, current and power drop to zero
    when the contacts open, energy keeps its value; readings carry a little noise."""

    def _runner(self):
        from tools.pilotsim.runner import Runner
        sc = {"name": "m", "duration_ms": 1000, "steps": [{"at": 0, "mark": "x"}]}
        out = io.StringIO()
        ch = Channel(out, io.StringIO("ok\n" * 50))
        r = Runner({"scenario": sc, "meter_start_wh": 1000}, channel=ch,
                   station_factory=lambda board, cfg: _Station())
        r.uart = object()           # a meter on the bus (its stream is not used here)
        return r, out

    def _pushes(self, out):
        import json
        return [json.loads(line) for line in out.getvalue().splitlines()
                if '"req"' in line]

    def test_readings_after_unplug_and_noise(self):
        r, out = self._runner()
        r.board.contacts_closed = True
        r.ev.current_ma = 16000
        r.energy.wh = 1500
        r._push_meter(force=True)
        r.board.now_ms += 600
        r._push_meter(force=True)
        r.board.contacts_closed = False       # unplugged: contacts open
        r.ev.current_ma = 0
        r.board.now_ms += 600
        r._push_meter(force=True)
        p = self._pushes(out)
        self.assertEqual(len(p), 3)
        for q in p[:2]:
            for i in q["current_ma"]:
                self.assertTrue(15900 <= i <= 16100, q)
            self.assertTrue(q["power_w"] > 10000, q)
        # a little noise: not every reading is the ideal one
        self.assertTrue(p[0]["current_ma"] != p[1]["current_ma"]
                        or p[0]["voltage_dv"] != p[1]["voltage_dv"])
        last = p[2]
        self.assertEqual(last["current_ma"], [0, 0, 0])
        self.assertEqual(last["power_w"], 0)
        self.assertEqual(last["import_wh"], 1500)
        for v in last["voltage_dv"]:
            self.assertTrue(2295 <= v <= 2305, last)

    def test_noise_is_seeded(self):
        from tools.pilotsim.model import MeterNoise
        a = MeterNoise(3)
        b = MeterNoise(3)
        self.assertEqual([a.current(16000) for _ in range(5)], [b.current(16000) for _ in range(5)])
        self.assertEqual(a.current(0), 0)
        self.assertEqual(a.voltage(0), 0)

"""The harness of tests/system/ocpp_station.py: the simulator's board, the EV's pilot model,
the Modbus meter double, and the station stepped on them; one JSON command in, one answer.

Imported by ocpp_station.py after HarnessRoom.begin() (tools/bench_rig.py), so that this
module's code and what Rig builds before the station count as the harness, not as firmware;
the firmware (firmware.station and what it imports) is imported only in Rig.start().
"""
import json
import sys
import time

sys.path.insert(0, "tests/unit")

from meter_doubles import SlaveStream  # noqa: E402
from tools.pilotsim.model import S2_C, S2_OPEN, PilotModel  # noqa: E402
from tools.pilotsim.simboard import SimBoard, SimReset  # noqa: E402
from tools.bench_rig import ROOM, say  # noqa: E402

TICK_MS = 10     # firmware.station.TICK_MS, checked in Rig.start (imported after the room)


class _Clock:
    def __init__(self, rig):
        self.rig = rig

    @property
    def now(self):
        return self.rig.board.now_ms


class Rig:
    def __init__(self, opts):
        self.store = opts["store"]
        self.config = opts["config"]     # with the meter's map (tests/system/ocpp_cs.py)
        self.mwh = opts.get("start_wh", 1000) * 1000
        self.power_w = 7200
        self.model = PilotModel()
        self.board = None
        self.boots = 0
        self.paced_steps = 0
        self.wall_shift = 0           # seconds the board's clock was set on ("clock")
        self.station = None
        self.slave = None
        self.board_up(0)

    def start(self):
        """The station on the board: the firmware is imported here, after the room."""
        import firmware.station
        assert firmware.station.TICK_MS == TICK_MS
        self.station_up()

    def boot(self, start_ms):
        self.board_up(start_ms)
        self.station_up()

    def board_up(self, start_ms):
        self.board = SimBoard(model=self.model, start_ms=start_ms)
        wall = self.board.wall_time
        # The board's clock as NTP may set it: the simulator's plus the shift.
        self.board.wall_time = lambda: wall() + self.wall_shift
        # log=False: the double's logs of every poll would grow on the station's heap.
        self.slave = SlaveStream(_Clock(self), regs={}, slave=1, fcs=(4,), log=False)
        self.board.attach_meter(self.slave)
        self.registers()

    def station_up(self):
        from firmware.station import Station
        from firmware.storage import Store
        self.station = Station(self.board, config=self.config, store=Store(self.store))
        self.boots += 1

    def registers(self):
        closed = self.board.contacts_closed
        w = self.power_w if closed else 0
        ma = w * 1000 // 690 if closed else 0
        r = self.slave.regs
        vals = (2300, 2300, 2300, ma, ma, ma, w, self.mwh // 1000)
        for i, v in enumerate(vals):
            r[2 * i] = (v >> 16) & 0xFFFF
            r[2 * i + 1] = v & 0xFFFF

    def step(self, paced):
        try:
            self.station.step()
        except SimReset:
            self.boot(self.board.now_ms + 500)
            return
        if self.board.contacts_closed:
            self.mwh += self.power_w * TICK_MS // 3600
        self.registers()
        b = self.station.backend
        if paced or (b is not None and b.owed()):
            self.paced_steps += 1
            time.sleep_ms(TICK_MS)
        self.board.sleep_ms(TICK_MS)

    def holds(self, name):
        st = self.station
        b = st.backend
        if name == "online":
            return b.online
        if name == "tx":
            return b.log.running is not None and b.log.running_tx_id() is not None
        if name == "no_tx":
            return b.log.running is None
        if name == "contactor":
            return self.board.contacts_closed
        if name == "no_contactor":
            return not self.board.contacts_closed
        if name == "delivered":
            # Said and answered, and nothing left to say: a transaction whose EV has left
            # is stopped a few iterations after the unplug (the iteration that opens the
            # contactor does nothing else), so its StopTransaction is still to come.
            return b.online and b.log.pending() == 0 and not b.caller.busy() \
                and (b.log.running is None or self.model.plugged)
        if name == "idle":           # online, no CALL of ours in flight
            return b.online and not b.caller.busy()
        if name == "offline":
            from firmware.ws import CLOSED
            return b.ws.state == CLOSED
        raise ValueError("unknown condition %s" % name)

    def snapshot(self):
        st = self.station
        b = st.backend
        c = st.charger
        from firmware import states
        r = b.log.running
        return {"t": self.board.now_ms, "state": states.NAMES[c.state],
                "contactor": self.board.contacts_closed, "authorized": c.authorized,
                "available": c.available, "offered_ma": c.offered_ma,
                "duty": self.board.duty, "wall": self.board.wall_time(),
                "profiles": None if b.smart is None else len(b.smart.profiles),
                "tx": r[0] if r else None, "tx_id": b.log.running_tx_id(),
                "pending": b.log.pending(), "online": b.online, "boots": self.boots,
                "wh": self.mwh // 1000, "paced": self.paced_steps, "stats": b.stats(),
                "service_errors": st.service_errors, "last_error": st.last_service_error}

    def do(self, cmd):
        what = cmd["do"]
        if what == "run":
            until = cmd.get("until")
            paced = cmd.get("paced", False)
            n = cmd.get("ms", 0) // TICK_MS
            for _ in range(n):
                self.step(paced)
                if until is not None and self.holds(until):
                    break
            if until is not None and not self.holds(until):
                return {"error": "%s not reached" % until, "snap": self.snapshot()}
        elif what == "ev":
            m = self.model
            m.plugged = cmd.get("plugged", True)
            m.s2 = S2_C if cmd.get("charge") else S2_OPEN
            m.update()
        elif what == "power":
            self.power_w = cmd["w"]
        elif what == "tag":
            self.station.present_id_tag(cmd["id"], self.board.ticks_ms())
        elif what == "powercut":
            # No shutdown: the station object is dropped as it stands, the flash kept.
            self.board.power_off()
            self.boot(self.board.now_ms + 2000)
        elif what == "clock":
            self.wall_shift += cmd["shift_s"]
        elif what == "heap":
            # The live heap after a collection (a leak shows as growth between two calls).
            import gc
            gc.collect()
            return {"alloc": gc.mem_alloc(), "free": gc.mem_free()}
        elif what == "modules":
            # What the station has imported (an OCPP station must not hold the MQTT side).
            return {"modules": sorted(sys.modules)}
        elif what == "config":
            return {"cfg": self.station.cfg.public(cmd.get("keys"))}
        return self.snapshot()


def main(opts, start):
    """The command loop; `start`: gc.mem_alloc() before the harness was imported."""
    ROOM.start = start
    rig = Rig(opts)
    ROOM.reserve(opts.get("firmware_pool"))
    opts = None
    rig.start()
    say({"ready": True, "harness": ROOM.harness, "ballast": ROOM.ballast_bytes,
         "pool": ROOM.firmware_pool()})
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        cmd = json.loads(line)
        line = None
        if cmd["do"] == "quit":
            break
        try:
            out = rig.do(cmd)
        except Exception as e:  # noqa: BLE001 - reported to the test
            sys.print_exception(e)
            out = {"error": "%s: %s" % (type(e).__name__, e)}
        cmd = None
        # Written piece by piece (json.dump to the stream): no string of the whole answer.
        say(out)
        out = None

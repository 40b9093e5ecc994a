"""The energy ledger under random meter behaviour: one scenario, played and checked.

A scenario is a list of operations (see OPS) played against the real SessionManager,
MeterService and Counters on a power-cut filesystem, with a simulated SDM630 (serial number
register included) on the byte-level RTU double and a simulated clock. The glue between
them is station.py's, step for step (_poll_meter, _drain_events and the two holds), so the
unplug hold, the boot recovery hold, the live contactor and every flag go through the
firmware's own paths.

check() then asserts the issue's invariants on the records and the counters:
  - ledger: sum of records' energy_wh + unbilled_wh == the meter's true energy, exactly,
    when no discontinuity happened; otherwise no more, and no less than the true energy
    minus, per discontinuity, what flowed between the accepted readings around it;
  - per EV visit (a plug-in to its unplug; a power cut splits it into several records):
    never more than the energy that EV drew (+1 Wh resolution per record), and exactly
    that energy when none of its records is flagged as estimated or rebased;
  - every record from a register carries energy_source "register".
Both runtimes run it: tests/unit/test_energy_ledger.py (seeded cases) and
tests/system/test_energy_ledger_properties.py (hypothesis).
"""
from firmware import meters
from firmware.config import Config
from firmware.counters import Counters
from firmware.meter_service import FAILED, NEW_READING, STALE_CHANGED, MeterService
from firmware.session import SessionManager
from firmware.states import STATE_A, STATE_B2, STATE_C2, ev_connected
from firmware.storage import Store
from meter_doubles import SimClock, SlaveStream
from tools.powercut_fs import PowerCutFs

LOOP_MS = 100
POLL_MS = 1000
MAX_W = 22000
MS_PER_WH = 3600000
RECOVER_WAIT_MS = 5000        # firmware/station.py _RECOVER_WAIT_MS
FINAL_WAIT_MS = 3000          # firmware/station_events.py _FINAL_READING_WAIT_MS

CFG = {"meter_map": "sdm630", "meter_poll_ms": POLL_MS, "meter_timeout_ms": 100,
       "meter_retries": 0, "meter_stale_after": 3, "meter_max_power_w": MAX_W,
       "session_checkpoint_s": 10, "session_checkpoint_wh": 10}

EV_STATE = 0
EV_CONTACTOR = 1
EV_FAULT = 2

# Operations: (name, argument). Arguments are small ints the generators draw.
OPS = ("plug", "charge", "stop", "unplug", "replug", "wait", "reset", "swap", "jump",
       "silence", "garbage", "cut")


class TrueMeter:
    """What really flows, and an SDM630 showing it (or not) on the bus."""

    def __init__(self, clock):
        self.map = meters.load_map("sdm630")
        self.stream = SlaveStream(clock, fcs=(3, 4), log=False)   # long runs: no wire log
        self.wms = 0                 # energy through the meter, W*ms (true)
        self.offset = 5000000        # register = offset + true Wh (5 MWh: an older meter)
        self.serial = 11111
        self.power_w = 0
        self.garbage = None          # a corrupt value for the next cycle
        self.garbage_n = 0
        self.publish()

    def true_wh(self):
        return self.wms // MS_PER_WH

    def register(self):
        return self.offset + self.true_wh()

    def publish(self):
        amps = self.power_w * 1000 // (3 * 230) if self.power_w else 0
        values = [2300, 2300, 2300, amps, amps, amps, self.power_w, self.register(), 0]
        g = self.garbage
        # Garbage readings in a row never agree with each other (two that did would be a
        # reset to anyone): each lies 1 kWh further off than the one before.
        off = 1000 * (self.garbage_n % 7)
        if g == 0:
            values[meters.IMPORT] = self.register() + 5000000 + off   # far ahead
        elif g == 1:
            # Far behind; a register too close to zero for that gets one far ahead (two
            # zeros in a row would agree).
            r = self.register()
            values[meters.IMPORT] = r - 40000 - off if r > 100000 else r + 5000000 + off
        elif g == 2:
            values[meters.POWER] = 40000                           # 40 kW at these amps
        regs = self.map.encode(values)
        lo = min(regs)
        hi = max(regs)
        for a in range(lo, hi + 1):
            regs.setdefault(a, 0)
        if g == 3:
            regs[0x48] = 0x7FC0                                    # import register NaN
            regs[0x49] = 0
        regs.update(self.map.encode_serial(self.serial))
        self.stream.regs.clear()
        self.stream.regs.update(regs)


class Rig:
    def __init__(self):
        self.fs = PowerCutFs()
        self.clock = SimClock(1000)
        self.cfg = Config(CFG)
        self.meter = TrueMeter(self.clock)
        self.plugged = False
        self.closed = False          # the contactor as the charger drives it
        self.visit = 0               # EV visits so far (the current one while plugged)
        self.visit_wh = {}           # visit -> true W*ms drawn
        self.owner = {}              # session id -> visit
        self.records = []
        self.discontinuities = []    # times of reset / swap / jump
        self.readings = []           # (time, accepted) of every completed cycle
        self.unbilled_start = None
        self.true_start = 0
        self.garbage_cycle = None    # the cycle that reads the corrupt value
        self.boot()

    # -- the station's glue (firmware/station.py) -------------------------------------
    def boot(self):
        self.store = Store("/data", self.fs)
        self.counters = Counters.from_config(self.cfg, self.store)
        self.boot_id = self.counters.boot(self.clock.now)
        self.sm = SessionManager(self.cfg, self.store, self.counters, self.boot_id)
        self.svc = MeterService(self.cfg, self.meter.stream)
        expected = self.sm.expected_register()
        if expected is not None:
            self.svc.expect(expected[0], self.clock.now, expected[1], expected[2])
        self.events = []
        self.held = None
        self.held_cycle = 0
        self.held_until = 0
        self.recover_until = None
        self.stale_fault = False
        if self.sm.recovering:
            self.recover_until = self.clock.now + RECOVER_WAIT_MS
        if self.plugged:
            self.push(EV_STATE, STATE_B2)          # the EV is seen at boot

    def push(self, kind, a):
        self.events.append((self.clock.now, kind, a, self.visit))

    def step(self):
        now = self.clock.now
        m = self.meter
        if self.closed:
            m.wms += m.power_w * LOOP_MS
            self.visit_wh[self.visit] = self.visit_wh.get(self.visit, 0) + m.power_w * LOOP_MS
        svc = self.svc
        if svc._step < 0:
            m.publish()        # a meter updates its registers between our cycles, as one
            if m.garbage is not None and self.garbage_cycle is None:
                self.garbage_cycle = svc.cycles + 1     # the cycle that reads it

        sm = self.sm
        changed = svc.poll(now)
        if svc.stale != self.stale_fault:           # FaultSet -> event ring -> sessions
            self.stale_fault = svc.stale
            self.push(EV_FAULT, svc.stale)
        if sm.serial_wanted:
            sm.serial_wanted = False
            svc.request_serial()
        if self.closed:
            if self.held is not None:
                self.release_now()
            if sm.recovering:
                sm.recover(now)
        if changed & FAILED:
            sm.on_meter(now, None, None, False)
        if changed & STALE_CHANGED and svc.stale:
            sm.recover(now)
        if changed & NEW_READING:
            self.readings.append((now, not svc.implausible))
            if self.garbage_cycle is not None and svc.cycles >= self.garbage_cycle:
                m.garbage = None
                self.garbage_cycle = None
            if svc.implausible:
                sm.on_rejected(now)
            else:
                sm.on_meter(now, svc.import_wh, svc.power_w, True, svc.base_wh,
                            svc.sampled_ms, self.closed, svc.serial)
                if self.unbilled_start is None:
                    # The ledger starts at the first reading: what flowed before it is
                    # no meter difference anyone could account.
                    self.unbilled_start = self.counters.unbilled_wh
                    self.true_start = svc.import_wh - m.offset
        self.drain(now)
        sm.tick(now)
        self.collect()
        self.clock.advance(LOOP_MS)

    def drain(self, now):
        if self.recover_until is not None:
            if self.svc.stale or now - self.recover_until >= 0:
                self.sm.recover(now)
            if self.sm.recovering:
                return
            self.recover_until = None
        if self.held is not None:
            if self.sm.awaiting_final and not self.svc.stale and now - self.held_until < 0:
                if self.svc.cycle_finished(self.held_cycle):
                    self.held_cycle = self.svc.request_reading(True)
                return
            self.release_now()
        while self.events:
            ev = self.events.pop(0)
            if ev[1] == EV_STATE and ev[2] == STATE_A and not self.svc.stale \
                    and self.sm.active is not None:
                self.held = ev
                self.sm.unplugged(ev[0])
                self.held_cycle = self.svc.request_reading(True)
                self.held_until = now + FINAL_WAIT_MS
                return
            self.handle(ev)

    def release_now(self):
        ev = self.held
        self.held = None
        self.handle(ev)

    def handle(self, ev):
        t, kind, a, visit = ev
        sm = self.sm
        if kind == EV_STATE:
            sm.on_state(t, a)
            s = sm._session
            if s is not None and s.id not in self.owner and ev_connected(a):
                self.owner[s.id] = visit
        elif kind == EV_CONTACTOR:
            sm.on_contactor(t, a)
        elif a:
            sm.on_fault(t, "METER_STALE")
        else:
            sm.on_fault_cleared(t, "METER_STALE")

    def collect(self):
        for rec in self.sm.pop_completed():
            self.records.append(rec)
            self.sm.acknowledged(rec["id"])

    # -- the world ------------------------------------------------------------------------
    def run(self, ms):
        end = self.clock.now + ms
        while self.clock.now - end < 0:
            self.step()

    def set_power(self, closed, power_w=0):
        if closed != self.closed:
            self.closed = closed
            self.push(EV_CONTACTOR, 1 if closed else 0)
        self.meter.power_w = power_w if closed else 0

    def op(self, name, arg):
        m = self.meter
        if name == "plug":
            if not self.plugged:
                self.visit += 1
                self.plugged = True
                self.push(EV_STATE, STATE_B2)
            self.run(LOOP_MS * (1 + arg % 40))
        elif name == "charge":
            if self.plugged:
                if not self.closed:
                    self.push(EV_STATE, STATE_C2)
                self.set_power(True, 1000 + arg * 1000 % (MAX_W - 1000))
            self.run(2000 + arg * 100)
        elif name == "stop":
            if self.closed:
                self.set_power(False)
                self.push(EV_STATE, STATE_B2)
            self.run(LOOP_MS * (1 + arg % 60))
        elif name in ("unplug", "replug"):
            if self.plugged:
                self.set_power(False)
                self.push(EV_STATE, STATE_A)
                self.plugged = False
                if name == "replug":
                    # The next EV arrives (and charges, in free mode) within the hold.
                    self.run(LOOP_MS * (1 + arg % 20))
                    self.visit += 1
                    self.plugged = True
                    self.push(EV_STATE, STATE_B2)
                    self.push(EV_STATE, STATE_C2)
                    self.set_power(True, 3000 + arg * 500 % 19000)
            self.run(LOOP_MS * (1 + arg % 80))
        elif name == "wait":
            self.run(500 + arg * 250)
        elif name in ("reset", "swap", "jump"):
            self.discontinuities.append(self.clock.now)
            # Registers stay below 2**13 kWh, where a float32 still shows every Wh.
            # A discontinuity is one only where the new register lies far from the last
            # one the firmware saw (several may happen while the meter is silent): a
            # reset to about zero from a few Wh, back to 0 and up again, is ordinary
            # counting to anyone.
            known = self.svc.import_wh or 0
            if name == "reset" and m.register() > 100000 and known > 100000:
                m.offset = -m.true_wh() + arg % 5
            elif name == "swap":
                m.serial += 1 + arg
                target = ((arg * 7919 + len(self.discontinuities) * 1237) % 700 + 100) * 10000
                if abs(target - known) < 20000:
                    target += 30000
                m.offset = target - m.true_wh()
            elif m.register() < 7000000:
                m.offset += 1000000 + arg * 1000
            else:
                m.offset -= 1000000 + arg * 1000
            # A discontinuity is confirmed within two cycles; nothing else meanwhile.
            self.run(3 * POLL_MS + 500)
        elif name == "silence":
            m.stream.set_fault("silent", 1 + arg % 6)      # failed cycles (no retries)
            self.run(POLL_MS * (1 + arg % 6))
        elif name == "garbage":
            m.garbage = arg % 4
            m.garbage_n += 1
            end = self.clock.now + 5 * POLL_MS
            while m.garbage is not None and self.clock.now - end < 0:
                self.step()                         # until a cycle has read it
            m.garbage = None
            self.garbage_cycle = None
            self.run(LOOP_MS * (1 + arg % 10))
        elif name == "cut":
            self.cut(1000 + arg * 500, arg % 3 == 0)

    def cut(self, off_ms, silent_after):
        # Power off: the contactor drops, nothing flows, the EV stays where it is.
        self.closed = False
        self.meter.power_w = 0
        self.meter.stream.set_fault(None)
        self.meter.stream._incoming = []
        self.fs = self.fs.restart()
        self.clock.advance(off_ms)
        if silent_after:
            self.meter.stream.set_fault("silent", 7)
        self.boot()
        self.run(LOOP_MS)

    def finish(self):
        """Unplug, let the meter answer again and every record come out."""
        self.meter.stream.set_fault(None)
        self.meter.garbage = None
        self.garbage_cycle = None
        if self.plugged:
            self.set_power(False)
            self.push(EV_STATE, STATE_A)
            self.plugged = False
        self.run(RECOVER_WAIT_MS + FINAL_WAIT_MS + 3 * POLL_MS)
        assert self.sm._session is None and not self.sm.recovering, "a session is still live"

    def play(self, ops):
        self.run(2 * POLL_MS)          # the meter answers once before anything happens
        for name, arg in ops:
            self.op(name, arg)
        self.finish()

    # -- the invariants -----------------------------------------------------------------
    def allowance_wh(self):
        # Per discontinuity: what could flow between the accepted reading before it and
        # the first cycle after it (the segment starts there at the latest).
        total = 0
        for t in self.discontinuities:
            before = None
            after = None
            for rt, ok in self.readings:
                if rt - t < 0 and ok:
                    before = rt
                elif rt - t >= 0 and after is None:
                    after = rt
            if before is None or after is None:
                return None
            total += MAX_W * (after - before + POLL_MS) // MS_PER_WH + 2
        return total

    def check(self, tc):
        recs = self.records
        ids = [r["id"] for r in recs]
        tc.assertEqual(len(ids), len(set(ids)), "a record twice")
        billed = 0
        per_visit = {}
        for r in recs:
            flags = r["meter_flags"]
            tc.assertIn(r["id"], self.owner, r)
            if r["energy_wh"] is not None:
                billed += r["energy_wh"]
                tc.assertEqual(flags["energy_source"], "register", r)
            v = self.owner[r["id"]]
            per_visit.setdefault(v, []).append(r)
        unbilled = self.counters.unbilled_wh - (self.unbilled_start or 0)
        true_wh = self.meter.true_wh() - self.true_start
        total = billed + unbilled
        if not self.discontinuities:
            tc.assertEqual(total, true_wh, "records %d + unbilled %d != meter %d"
                           % (billed, unbilled, true_wh))
        else:
            tc.assertTrue(total <= true_wh, "billed more than flowed: %d > %d"
                          % (total, true_wh))
            allow = self.allowance_wh()
            if allow is not None:
                tc.assertTrue(total >= true_wh - allow, "lost %d Wh, allowed %d"
                              % (true_wh - total, allow))
        for v, rs in per_visit.items():
            drawn = self.visit_wh.get(v, 0)
            got = 0
            exact = True
            for r in rs:
                f = r["meter_flags"]
                got += r["energy_wh"] or 0
                if r["energy_wh"] is None or f["late_register"] or f["end_estimated"] \
                        or f["rebased"]:
                    exact = False
            # Never another visit's energy (register steps: +1 Wh per record).
            tc.assertTrue(got * MS_PER_WH <= drawn + len(rs) * MS_PER_WH,
                          "visit %d billed %d Wh, drew %d W*ms: %r" % (v, got, drawn, rs))
            if exact:
                tc.assertTrue(abs(got * MS_PER_WH - drawn) <= len(rs) * MS_PER_WH,
                              "visit %d unflagged but billed %d Wh of %d W*ms: %r"
                              % (v, got, drawn, rs))
        return {"records": len(recs), "billed": billed, "unbilled": unbilled,
                "true": true_wh}


class Lcg:
    """Deterministic numbers on both runtimes (MicroPython's random differs)."""

    def __init__(self, seed):
        self.x = (seed * 2654435761 + 12345) & 0x7FFFFFFF

    def below(self, n):
        self.x = (self.x * 1103515245 + 12345) & 0x7FFFFFFF
        return (self.x >> 8) % n


# Weights of the operations in a drawn scenario (plug/charge/unplug dominate).
_WEIGHTS = (("plug", 5), ("charge", 5), ("stop", 2), ("unplug", 4), ("replug", 2),
            ("wait", 3), ("reset", 1), ("swap", 1), ("jump", 1), ("silence", 2),
            ("garbage", 2), ("cut", 2))


def draw(seed, n_ops=10):
    rnd = Lcg(seed)
    total = 0
    for _name, w in _WEIGHTS:
        total += w
    ops = []
    for _ in range(n_ops):
        k = rnd.below(total)
        for name, w in _WEIGHTS:
            if k < w:
                break
            k -= w
        ops.append((name, rnd.below(100)))
    return ops

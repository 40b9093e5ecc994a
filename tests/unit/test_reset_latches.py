# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
# Every latched fault of the fault table (clearing "unplug" or "manual") against every kind
# of reset: a backend reboot, the watchdog, a crash in the loop, and a power cut at every
# flash operation from the trip to the unplug. After each reset the fault is back before the
# first tick, the contactor does not close while the EV still requests, and the fault
# clears only as the table says.
import unittest

from firmware import faults as F
from firmware.safestate import FILE
from tools.powercut_fs import PowerCut, PowerCutFs
from reset_rig import Rig
from tools.pilotsim.model import S2_C, S2_OPEN
from tools.pilotsim.simboard import SimReset

# A backend address nothing answers on: the link exists, records go to the outbox.
BACKEND = {"mqtt_host": "127.0.0.1", "mqtt_port": 9, "rcd_selftest": False}
# Short timings (all inside the schema) so that each sequence takes little simulated time.
FAST = {"b_to_c_debounce_ms": 0, "welded_check_ms": 200, "contactor_close_timeout_ms": 100,
        "rcd_selftest_timeout_ms": 100, "lock_timeout_ms": 200, "overcurrent_grace_ms": 1000}


def _charging(r):
    r.plug_and_request()
    if r.run_until(lambda: r.board.contacts_closed, 3000) is None:
        raise AssertionError("did not start charging")


class Scenario:
    """How to bring fault `code` about, and how its cause goes away again."""

    def __init__(self, code, config=None, meter=False):
        self.code = code
        self.config = dict(FAST)
        self.config.update(config or {})
        self.meter = meter

    def rig(self, fs=None):
        return Rig(fs=fs, config=self.config, meter=self.meter)

    def start(self, r):            # before the trip
        _charging(r)

    def trip(self, r):
        raise NotImplementedError

    def cure(self, r):             # the cause goes; the latch must stay
        pass


class Diode(Scenario):
    def start(self, r):
        r.plug_and_request()
        r.run(30)

    def trip(self, r):
        r.ev(diode_short=True)

    def cure(self, r):
        r.ev(diode_short=False)


class Rcd(Scenario):
    def trip(self, r):
        r.ev(leak=True)

    def cure(self, r):
        r.ev(leak=False)


class SelfTest(Scenario):
    def start(self, r):
        r.ev(monitor_ok=False)

    def trip(self, r):
        r.plug_and_request()

    def cure(self, r):
        r.ev(monitor_ok=True)


class Welded(Scenario):
    def trip(self, r):
        r.ev(welded=True, s2=S2_OPEN)     # the EV stops; the contacts do not open

    def cure(self, r):
        r.ev(welded=False)                # they come free: still never closed again


class NotClosing(Scenario):
    def start(self, r):
        r.ev(stuck_open=True)

    def trip(self, r):
        r.plug_and_request()

    def cure(self, r):
        r.ev(stuck_open=False)


class Overcurrent(Scenario):
    def trip(self, r):
        r.ev(draw_ma=45000)

    def cure(self, r):
        r.ev(draw_ma=None)


class Lock(Scenario):
    def start(self, r):
        r.ev(lock_works=False)

    def trip(self, r):
        r.plug_and_request()

    def cure(self, r):
        r.ev(lock_works=True)


class Internal(Scenario):
    def start(self, r):
        r.plug_and_request()
        r.run(30)

    def trip(self, r):
        st = r.station
        real = st.sessions.tick

        def once(now_ms):
            st.sessions.tick = real
            raise MemoryError("memory allocation failed")
        st.sessions.tick = once


SCENARIOS = (
    Diode(F.DIODE_FAULT), Rcd(F.RCD_TRIPPED), SelfTest(F.RCD_SELFTEST_FAILED, {"rcd_selftest": True}),
    Welded(F.CONTACTOR_WELDED), NotClosing(F.CONTACTOR_NOT_CLOSING),
    Overcurrent(F.OVERCURRENT, meter=True), Lock(F.LOCK_FAILED, {"lock_enabled": True}),
    Internal(F.INTERNAL_ERROR),
)
# The test config turns the self-test off where a scenario does not need it (it runs at
# plug-in and would only add flash-free time).
for _s in SCENARIOS:
    _s.config.setdefault("rcd_selftest", False)


def _latched_codes():
    return sorted(f.code for f in F.all_faults() if f.clearing != F.AUTO)


class Sequence:
    """One scenario played from boot to unplug (and, for a manual fault, its clearing),
    noting the flash operation count at each point."""

    def __init__(self, sc, fs):
        self.sc = sc
        self.r = sc.rig(fs)
        self.trip_ops = None       # flash operations done before the tick that tripped
        self.unplug_ops = None     # ... before the unplug

    def play(self):
        sc = self.sc
        r = self.r
        fs = r.fs
        sc.start(r)
        sc.trip(r)
        t = 0
        while not r.station.faults.is_active(sc.code):
            self.trip_ops = fs.ops
            r.step()
            t += 10
            if t > 5000:
                raise AssertionError("%s never tripped" % F.by_code(sc.code).name)
        sc.cure(r)
        r.run(300)
        self.unplug_ops = fs.ops
        r.ev(plugged=False, s2=S2_OPEN)
        r.run(300)


def _renames_of_safestate(log, after):
    # 1-based operation numbers of the commits of the safety record after op `after`.
    out = []
    for i, what in enumerate(log):
        if i + 1 > after and what.startswith("rename ") and what.endswith("/" + FILE):
            out.append(i + 1)
    return out


def _inside_write(log, k, rename_at):
    # Is operation k (1-based) one of the write that ends with the rename at `rename_at`?
    start = rename_at
    while start > 1 and not log[start - 1].startswith("open wb /data/" + FILE):
        start -= 1
    return start <= k <= rename_at


class EveryLatchedFaultOutlivesEveryReset(unittest.TestCase):
    def test_the_scenarios_cover_every_latched_fault_of_the_table(self):
        self.assertEqual(sorted(s.code for s in SCENARIOS), _latched_codes())

    def check_after_boot(self, sc, r2, expect_active, where):
        st = r2.station
        # Before the first tick: restored (or not) from flash alone.
        if expect_active is None:
            expect_active = st.faults.is_active(sc.code)
        self.assertEqual(st.faults.is_active(sc.code), expect_active, where)
        f = F.by_code(sc.code)
        requesting = r2.world.plugged and r2.world.s2 == S2_C
        r2.run(1000)
        if expect_active and f.blocking and requesting:
            self.assertFalse(r2.closed_ever, where + ": contactor closed after the reset")
        if expect_active and f.clearing == F.UNPLUG and not r2.world.plugged:
            self.assertFalse(st.faults.is_active(sc.code), where + ": not cleared at A")
        if expect_active and f.clearing == F.MANUAL:
            self.assertTrue(st.faults.is_active(sc.code), where)

    def reset_while_plugged(self, sc, kind):
        r = sc.rig()
        sc.start(r)
        sc.trip(r)
        self.assertIsNotNone(r.run_until(lambda: r.station.faults.is_active(sc.code), 5000))
        sc.cure(r)
        r.run(200)
        where = "%s, %s" % (F.by_code(sc.code).name, kind)
        if kind == "reboot":
            self.assertIsNone(r.station.cmd_reboot(r.board.ticks_ms()), where)
            with self.assertRaises(SimReset):
                r.run(10000)
            r2 = r.boot_again(cause="soft", after_ms=100)
        elif kind == "watchdog":
            r2 = r.boot_again(cause="watchdog", after_ms=100)
        elif kind == "crash":
            r.board.crash_now = True
            with self.assertRaises(RuntimeError):
                r.step()
            r2 = r.boot_again(cause="soft", crash="RuntimeError: crash in the loop",
                              after_ms=100)
        else:
            r2 = r.boot_again(cause="power_on")
        self.check_after_boot(sc, r2, True, where)
        # The EV leaves; an unplug-latched fault clears, a manual one stays, and so it is
        # after one more reset.
        r2.ev(plugged=False, s2=S2_OPEN)
        r2.run(300)
        r3 = r2.boot_again(cause="watchdog")
        manual = F.by_code(sc.code).clearing == F.MANUAL
        self.assertEqual(r3.station.faults.is_active(sc.code), manual, where)

    def test_command_reboot(self):
        for sc in SCENARIOS:
            self.reset_while_plugged(sc, "reboot")

    def test_watchdog(self):
        for sc in SCENARIOS:
            self.reset_while_plugged(sc, "watchdog")

    def test_crash_in_the_loop(self):
        for sc in SCENARIOS:
            self.reset_while_plugged(sc, "crash")

    def test_power_cut_at_every_flash_operation_from_trip_to_unplug(self):
        # Once more with a backend: the fault record goes to the outbox on flash too,
        # after the latch.
        for sc in SCENARIOS + (Rcd(F.RCD_TRIPPED, BACKEND),):
            name = F.by_code(sc.code).name
            probe = Sequence(sc, PowerCutFs())
            probe.play()
            log = probe.r.fs.log
            commits = _renames_of_safestate(log, probe.trip_ops)
            self.assertTrue(commits, name)
            latch_at = commits[0]
            # The latch is the first thing written after the trip.
            self.assertEqual(log[probe.trip_ops], "open wb /data/%s.tmp" % FILE, name)
            unplug = F.by_code(sc.code).clearing == F.UNPLUG
            clear_at = None
            if unplug:
                later = [c for c in commits if c > probe.unplug_ops]
                self.assertTrue(later, name + ": the clearing at unplug was not stored")
                clear_at = later[0]
            total = probe.r.fs.ops
            runs = 0
            for k in range(probe.trip_ops + 1, total + 2):
                # Torn writes only where they matter here: the safety record's own.
                tears = (False, True) if FILE in log[min(k, total) - 1] else (False,)
                for tear in tears:
                    seq = Sequence(sc, PowerCutFs(cut_at=k, tear=tear))
                    try:
                        seq.play()
                    except PowerCut:
                        pass
                    # Inside a write of the record (its temporary copy opened, not yet
                    # renamed) the old or the new record may be found (storage rolls a
                    # complete copy forward); outside, exactly the last one committed.
                    if _inside_write(log, k, latch_at) or (
                            clear_at is not None and _inside_write(log, k, clear_at)):
                        expect = None
                    else:
                        expect = latch_at < k and not (clear_at is not None and clear_at < k)
                    r2 = seq.r.boot_again(fs=seq.r.fs.restart())
                    where = "%s, cut at op %d (%s), tear=%s" % (
                        name, k, log[k - 1] if k <= total else "-", tear)
                    self.check_after_boot(sc, r2, expect, where)
                    runs += 1
            self.assertTrue(runs >= total - probe.trip_ops, name)

    def test_a_manual_fault_stays_cleared_once_cleared_on_site(self):
        sc = SCENARIOS[3]            # CONTACTOR_WELDED
        r = sc.rig()
        sc.start(r)
        sc.trip(r)
        r.run_until(lambda: r.station.faults.is_active(F.CONTACTOR_WELDED), 5000)
        r.ev(plugged=False, s2=S2_OPEN)
        r.run(300)
        r2 = r.boot_again()
        self.assertIn("on site", r2.station.cmd_clear_fault("CONTACTOR_WELDED", 0)[1])
        now = r2.board.ticks_ms()
        self.assertIn("present", r2.station.clear_fault(F.CONTACTOR_WELDED, False, now))
        r2.ev(welded=False)           # the technician replaces the contactor
        r2.run(300)
        # diag.clear() at the REPL, the loop stopped, then a reset: it stays cleared.
        self.assertIsNone(r2.station.clear_fault(F.CONTACTOR_WELDED, False,
                                                 r2.board.ticks_ms()))
        r3 = r2.boot_again()
        self.assertFalse(r3.station.faults.is_active(F.CONTACTOR_WELDED))
        r3.plug_and_request()
        self.assertIsNotNone(r3.run_until(lambda: r3.board.contacts_closed, 3000))

    def test_a_restored_fault_is_not_reported_again_and_its_clearing_is(self):
        sc = SCENARIOS[1]            # RCD_TRIPPED
        r = sc.rig()
        sc.start(r)
        sc.trip(r)
        r.run_until(lambda: r.station.faults.is_active(F.RCD_TRIPPED), 3000)
        sc.cure(r)
        r2 = r.boot_again()
        st = r2.station
        self.assertEqual(st.faults.counts[F.RCD_TRIPPED], 0)
        kinds = [e[1] for e in st.events.recent()]
        from firmware.events import EV_FAULT_CLEARED, EV_FAULT_RAISED
        self.assertFalse(EV_FAULT_RAISED in kinds)
        self.assertFalse(EV_FAULT_CLEARED in kinds)
        r2.ev(plugged=False, s2=S2_OPEN)
        r2.run(600)                  # F at boot for the restored fault, then A is seen
        self.assertFalse(st.faults.is_active(F.RCD_TRIPPED))
        self.assertEqual([h[1:] for h in st.faults.history() if h[1] == F.RCD_TRIPPED],
                         [(F.RCD_TRIPPED, True), (F.RCD_TRIPPED, False)])

# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
# The safety record (firmware/safestate.py): the backend limit across resets, the F hold
# before a commanded reboot, the record's format, damage and wear.
import json
import sys
import unittest

from firmware import faults as F
from firmware.charger import Charger
from firmware.config import Config
from firmware.faults import FaultSet
from firmware.safestate import FILE, SafeState
from firmware.storage import Store
from tools.powercut_fs import PowerCut, PowerCutFs
from reset_rig import Rig
from tools.pilotsim.model import S2_C, S2_OPEN
from tools.pilotsim.simboard import SimReset

IS_MICROPYTHON = sys.implementation.name == "micropython"
BACKEND = {"mqtt_host": "127.0.0.1", "mqtt_port": 9}


def _boots(r, kind, wall=True):
    """The next boot after a reset of `kind` (the EV stays as it is)."""
    if kind == "reboot":
        r.station.cmd_reboot(r.board.ticks_ms())
        try:
            r.run(10000)
        except SimReset:
            return r.boot_again(cause="soft", after_ms=100, wall=wall)
        raise AssertionError("no reset")
    if kind == "crash":
        r.board.crash_now = True
        try:
            r.step()
        except RuntimeError:
            return r.boot_again(cause="soft", crash="RuntimeError", after_ms=100, wall=wall)
        raise AssertionError("no crash")
    return r.boot_again(cause="watchdog" if kind == "watchdog" else "power_on", wall=wall)


KINDS = ("reboot", "watchdog", "crash", "power_cut")


class BackendLimitAcrossResets(unittest.TestCase):
    def test_a_limit_until_changed_holds_after_every_kind_of_reset(self):
        for kind in KINDS:
            r = Rig(config=BACKEND)
            r.plug_and_request()
            self.assertIsNotNone(r.run_until(lambda: r.board.contacts_closed, 3000))
            self.assertIsNone(r.station.cmd_set_limit(8000, None, r.board.ticks_ms()))
            r.run(200)
            self.assertEqual(r.station.charger.offered_ma, 8000)
            r2 = _boots(r, kind)
            # Before the first tick, and then in the offer once charging again.
            self.assertEqual(r2.station.charger.backend_limit_ma(), 8000, kind)
            self.assertIsNotNone(r2.run_until(lambda: r2.station.charger.offered_ma > 0, 3000))
            r2.run(10000)
            self.assertEqual(r2.station.charger.offered_ma, 8000, kind)
            self.assertEqual(r2.station.status()["limit"], "backend", kind)

    def test_the_last_limit_set_is_the_one_kept(self):
        r = Rig(config=BACKEND)
        st = r.station
        self.assertIsNone(st.cmd_set_limit(8000, None, r.board.ticks_ms()))
        self.assertIsNone(st.cmd_set_limit(16000, None, r.board.ticks_ms()))
        r2 = r.boot_again()
        self.assertEqual(r2.station.charger.backend_limit_ma(), 16000)
        self.assertIsNone(r2.station.cmd_set_limit(0, None, r2.board.ticks_ms()))   # pause
        r3 = r2.boot_again()
        self.assertEqual(r3.station.charger.backend_limit_ma(), 0)
        r3.plug_and_request()
        r3.run(3000)
        self.assertEqual(r3.station.charger.offered_ma, 0)
        self.assertFalse(r3.closed_ever)

    def test_an_expiry_counts_the_time_off_when_the_clock_is_set(self):
        r = Rig(config=BACKEND)
        self.assertIsNone(r.station.cmd_set_limit(10000, 60, r.board.ticks_ms()))
        r.run(20000)
        r2 = r.boot_again(after_ms=5000)            # a power cut of 5 s
        st = r2.station
        self.assertEqual(st.charger.backend_limit_ma(), 10000)
        # 60 - 20 - 5 = 35 s left (to the second the expiry was stored at).
        r2.run(34000)
        self.assertEqual(st.charger.backend_limit_ma(), 10000)
        r2.run(2000)
        self.assertEqual(st.charger.backend_limit_ma(), -1)
        r3 = r2.boot_again()                        # the expiry is on flash too
        self.assertEqual(r3.station.charger.backend_limit_ma(), -1)

    def test_a_limit_that_expired_while_the_station_was_off_is_not_applied(self):
        r = Rig(config=BACKEND)
        self.assertIsNone(r.station.cmd_set_limit(10000, 10, r.board.ticks_ms()))
        r.run(5000)
        r2 = r.boot_again(after_ms=60000)
        st = r2.station
        self.assertEqual(st.charger.backend_limit_ma(), -1)
        queued = [m.decode() if isinstance(m, bytes) else str(m) for m in st.link._events]
        self.assertTrue([m for m in queued if "limit_expired" in m])
        r2.run(20)
        probe = SafeState(Store("/data", r2.fs.restart()))
        probe.load()
        self.assertEqual(probe.limit_ma, -1)        # the record says so from now on

    def test_without_a_clock_the_limit_is_held_at_least_as_long_as_asked(self):
        # A power cut: the remaining time written with the command (60 s) runs from boot.
        r = Rig(config=BACKEND)
        self.assertIsNone(r.station.cmd_set_limit(10000, 60, r.board.ticks_ms()))
        r.run(20000)
        r2 = r.boot_again(wall=False)
        r2.run(59000)
        self.assertEqual(r2.station.charger.backend_limit_ma(), 10000)
        r2.run(2000)
        self.assertEqual(r2.station.charger.backend_limit_ma(), -1)
        # A commanded reboot writes what is left, so the time before it counts.
        r = Rig(config=BACKEND)
        self.assertIsNone(r.station.cmd_set_limit(10000, 60, r.board.ticks_ms()))
        r.run(20000)
        r2 = _boots(r, "reboot", wall=False)        # about 21 s gone at the reset
        r2.run(37000)
        self.assertEqual(r2.station.charger.backend_limit_ma(), 10000)
        r2.run(3000)
        self.assertEqual(r2.station.charger.backend_limit_ma(), -1)

    def test_a_power_cut_during_the_write_of_a_limit_leaves_the_old_or_the_new(self):
        probe = PowerCutFs()
        r = Rig(fs=probe, config=BACKEND)
        r.run(50)
        self.assertIsNone(r.station.cmd_set_limit(8000, None, r.board.ticks_ms()))
        r.run(50)
        before = probe.ops
        self.assertIsNone(r.station.cmd_set_limit(16000, None, r.board.ticks_ms()))
        after = probe.ops
        self.assertTrue(after - before >= 4)
        for k in range(before + 1, after + 1):
            for tear in (False, True):
                fs = PowerCutFs(cut_at=k, tear=tear)
                r = Rig(fs=fs, config=BACKEND)
                r.run(50)
                r.station.cmd_set_limit(8000, None, r.board.ticks_ms())
                r.run(50)
                try:
                    r.station.cmd_set_limit(16000, None, r.board.ticks_ms())
                except PowerCut:
                    pass
                r2 = r.boot_again(fs=fs.restart())
                self.assertTrue(r2.station.charger.backend_limit_ma() in (8000, 16000), k)
                self.assertFalse(r2.station.faults.is_active(F.STORAGE_ERROR), k)

    def test_a_flash_failure_keeps_the_limit_in_force_and_is_a_storage_error(self):
        from firmware.storage import StorageError
        r = Rig(config=BACKEND)
        st = r.station
        real = st.store.write_atomic
        failing = [True]

        def write_atomic(name, data):
            if failing[0] and name == FILE:
                raise StorageError("%s: flash full" % name)
            return real(name, data)
        st.store.write_atomic = write_atomic
        self.assertIsNone(st.cmd_set_limit(8000, None, r.board.ticks_ms()))
        self.assertEqual(st.charger.backend_limit_ma(), 8000)
        self.assertTrue(st.faults.is_active(F.STORAGE_ERROR))
        r.run(3000)
        failing[0] = False
        r.run(1100)                                  # retried once a second
        self.assertEqual(r.boot_again().station.charger.backend_limit_ma(), 8000)


class FHoldBeforeAReboot(unittest.TestCase):
    def test_a_fault_while_a_reboot_waits_holds_f_for_fault_hold_ms_first(self):
        # The reboot waits for a charging EV to stop (up to 7 s); a fault raised meanwhile
        # shows F, and F lasts fault_hold_ms before anything else, the reset included.
        # (the simulated EV ignores the pause: the contactor opens at pwm_off_open_ms, 6 s)
        for trip_after in (1100, 3000, 5800, 5950):
            r = Rig(config=BACKEND)
            r.plug_and_request()
            self.assertIsNotNone(r.run_until(lambda: r.board.contacts_closed, 3000))
            self.assertIsNone(r.station.cmd_reboot(r.board.ticks_ms()))
            r.run(trip_after)
            r.ev(leak=True)
            with self.assertRaises(SimReset):
                r.run(10000)
            f_at = [t for t, duty in r.board.pilot_log if duty == 0]
            self.assertTrue(f_at, trip_after)
            held = r.board.now_ms - f_at[-1]
            self.assertTrue(held >= r.station.cfg["fault_hold_ms"], (trip_after, held))
            # and nothing else came in between
            self.assertEqual([d for t, d in r.board.pilot_log if t >= f_at[-1]][:1], [0])
            self.assertEqual(r.board.pilot_log[-1][1], 1000)    # shutdown, then reset

    def test_charger_ready_for_reset(self):
        ch = Charger(Config({"rcd_selftest": False}))
        self.assertTrue(ch.ready_for_reset())
        ch.faults.raise_(F.CP_SHORT, 0)
        ch.tick(0)
        self.assertFalse(ch.ready_for_reset(True))
        ch.faults.clear(F.CP_SHORT, 0)
        ch.tick(ch.cfg["fault_hold_ms"] + 1000)
        self.assertTrue(ch.ready_for_reset())


class Record(unittest.TestCase):
    def charger(self):
        return Charger(Config({"rcd_selftest": False}))

    def test_round_trip_of_latches_presence_and_limit(self):
        fs = PowerCutFs()
        store = Store("/data", fs)
        ch = self.charger()
        ch.faults.raise_(F.CONTACTOR_WELDED, 0)
        ch.faults.raise_(F.RCD_TRIPPED, 0)
        ch.faults.clear(F.RCD_TRIPPED, 0)
        ch.faults.raise_(F.CP_SHORT, 0)             # auto: not kept
        ch.set_backend_limit(8000)
        s = SafeState(store)
        self.assertTrue(s.due(ch.faults, ch))
        s.save(ch.faults, ch, 60000, 1767600000)
        self.assertFalse(s.due(ch.faults, ch))
        rec = json.loads(store.read(FILE))
        self.assertEqual(sorted(rec["latched"]), ["CONTACTOR_WELDED", "RCD_TRIPPED"])
        self.assertEqual(rec["present"], ["CONTACTOR_WELDED"])
        self.assertEqual(rec["limit_until"], 1767600060)
        s2 = SafeState(Store("/data", fs.restart()))
        s2.load()
        ch2 = self.charger()
        self.assertEqual(s2.restore(ch2, 5, 1767600030), 30000)
        fs2 = ch2.faults
        self.assertTrue(fs2.is_active(F.CONTACTOR_WELDED) and fs2.is_present(F.CONTACTOR_WELDED))
        self.assertTrue(fs2.is_active(F.RCD_TRIPPED) and not fs2.is_present(F.RCD_TRIPPED))
        self.assertFalse(fs2.is_active(F.CP_SHORT))
        self.assertEqual(ch2.backend_limit_ma(), 8000)
        # A welded contact present is not cleared by a person; an unplug clears the trip.
        self.assertIn("present", ch2.clear_fault(F.CONTACTOR_WELDED, False))
        fs2.unplugged(10)
        self.assertFalse(fs2.is_active(F.RCD_TRIPPED))
        self.assertTrue(fs2.is_active(F.CONTACTOR_WELDED))

    def test_a_damaged_record_counts_as_empty_is_reported_and_rewritten(self):
        for raw in (b"{not json", b'{"v": 9}', b'{"v": 1, "latched": 5}'):
            fs = PowerCutFs()
            Store("/data", fs).write_atomic(FILE, raw)
            r = Rig(fs=fs.restart(), config=BACKEND)
            self.assertTrue(r.station.faults.is_active(F.STORAGE_ERROR), raw)
            r.run(20)
            s = SafeState(Store("/data", r.fs.restart()))
            s.load()
            self.assertIsNone(s.damaged, raw)
        # A torn file with no intact copy: the same.
        fs = PowerCutFs()
        Store("/data", fs).write_atomic(FILE, b"{}")
        fs.medium["/data/" + FILE][-1] ^= 0xFF
        r = Rig(fs=fs.restart(), config=BACKEND)
        self.assertTrue(r.station.faults.is_active(F.STORAGE_ERROR))

    def test_written_only_when_a_latch_or_the_limit_changes(self):
        r = Rig(config=BACKEND)
        r.plug_and_request()
        r.run(3000)
        r.ev(s2=S2_OPEN)
        r.run(2000)
        r.ev(plugged=False)
        r.run(2000)
        log = r.fs.log
        self.assertEqual([x for x in log if x.startswith("rename") and FILE in x], [])
        r.ev(plugged=True, s2=S2_C)
        r.run(2000)
        r.ev(leak=True)
        r.run(500)
        r.ev(leak=False)
        r.run(500)
        r.ev(plugged=False, s2=S2_OPEN)
        r.run(1000)
        writes = [x for x in r.fs.log if x.startswith("rename") and FILE in x]
        # latched (present), cause gone, cleared at unplug
        self.assertEqual(len(writes), 3)

    def test_due_allocates_nothing(self):
        if not IS_MICROPYTHON:
            raise unittest.SkipTest("heap_lock exists on MicroPython only")
        import micropython
        ch = self.charger()
        s = SafeState(Store("/data", PowerCutFs()))
        fs = ch.faults
        fs.raise_(F.DIODE_FAULT, 0)
        micropython.heap_lock()
        try:
            for _ in range(100):
                s.due(fs, ch)
        finally:
            micropython.heap_unlock()

    def test_restore_makes_only_latched_faults_active_without_events(self):
        fs = FaultSet()
        everything = 0
        for f in F.all_faults():
            everything |= 1 << f.code
        new = fs.restore(everything, 0, 7)
        self.assertEqual(new, F.LATCHED_MASK)
        self.assertEqual(fs.active, F.LATCHED_MASK)
        self.assertEqual(sum(fs.counts), 0)
        self.assertEqual(len(fs.history()), bin(F.LATCHED_MASK).count("1"))

# The station on a flash that fails: no storage error at boot raises out of the Station
# constructor (main.py would reset, and the same flash would fail again: a crash loop), and a
# failing write is not retried at every loop iteration. Runs on CPython and the unix port.
import unittest

from firmware import faults
from firmware.outbox import KIND_FAULT
from firmware.station import OUTBOX_FILE, TICK_MS, Station
from firmware.storage import Journal, Store
from tools.powercut_fs import FailingFs, PowerCutFs
from tools.pilotsim.model import S2_C
from tools.pilotsim.simboard import SimBoard

ROOT = "/data"
BACKEND = {"mqtt_host": "127.0.0.1", "mqtt_port": 9}
EROFS, ENOSPC = 30, 28


def damaged_outbox_medium():
    """A flash whose outbox journal has damage after its records (a torn append) and an
    orphan data file: opening it rewrites the journal and removes the orphan."""
    fs = PowerCutFs()
    st = Store(ROOT, fs)
    j = Journal(st, OUTBOX_FILE)
    for seq in (1, 2):
        st.write_atomic("%s.%d" % (OUTBOX_FILE, seq), b'{"n": %d}' % seq)
        j.append(b'{"o":"p","s":%d,"k":"fault","i":"fault-%d"}' % (seq, seq))
    st.write_atomic(OUTBOX_FILE + ".77", b"{}")
    fs.medium[ROOT + "/" + OUTBOX_FILE].extend(b"\xa5\x01\x00\x40torn")
    return fs.medium, fs.dirs


def charge(board, st, ms=3000):
    board.model.plugged = True
    board.model.s2 = S2_C
    board.model.update()
    for _ in range(ms // TICK_MS):
        st.step()
        board.sleep_ms(TICK_MS)


class BootOnAFailingFlash(unittest.TestCase):
    def boot(self, fs, config=BACKEND):
        board = SimBoard()
        st = Station(board, config=config, store=Store(ROOT, fs))
        return board, st

    def check_degraded_but_charging(self, board, st):
        self.assertIsNotNone(st.storage_error)
        self.assertTrue(st.faults.is_active(faults.STORAGE_ERROR))
        self.assertEqual(st.boot_report["storage_error"], st.storage_error)
        charge(board, st)
        self.assertTrue(board.contacts_closed)          # charging control runs
        self.assertEqual(st.service_errors, 0)

    def test_a_damaged_outbox_journal_on_a_read_only_flash(self):
        for err in (EROFS, ENOSPC):
            medium, dirs = damaged_outbox_medium()
            fs = FailingFs(medium, dirs, err=err)
            board, st = self.boot(fs)
            self.assertIn("outbox.jnl", st.storage_error)
            self.check_degraded_but_charging(board, st)
            # This boot's records are held in RAM, a few at most; the flash was left alone.
            self.assertTrue(st.outbox.capacity <= 8)
            self.assertTrue(len(st.outbox) >= 1)        # the STORAGE_ERROR fault record
            self.assertEqual(sorted(medium), sorted(damaged_outbox_medium()[0]))

    def test_an_outbox_file_that_cannot_be_removed(self):
        medium, dirs = damaged_outbox_medium()
        # Only removals fail: the orphan data file stays.
        fs = FailingFs(medium, dirs, paths=("remove",), err=EROFS)
        board, st = self.boot(fs)
        self.assertIn("cannot remove", st.storage_error)
        self.check_degraded_but_charging(board, st)

    def test_a_flash_whose_data_directory_cannot_be_created(self):
        fs = FailingFs(paths=("mkdir",), err=EROFS)
        board = SimBoard()
        board.storage_root = lambda: "/data"
        real_store = Store

        class OnFailingFs(real_store):
            def __init__(self, root, fs_=None):
                real_store.__init__(self, root, fs_ if fs_ is not None else fs)
        import firmware.station as station_mod
        station_mod.Store = OnFailingFs
        try:
            st = Station(board, config=BACKEND)
        finally:
            station_mod.Store = real_store
        self.assertIn("cannot create /data", st.storage_error)
        self.check_degraded_but_charging(board, st)

    def test_a_working_flash_reports_nothing(self):
        board, st = self.boot(PowerCutFs())
        self.assertIsNone(st.storage_error)
        self.assertFalse(st.faults.is_active(faults.STORAGE_ERROR))


class WriteStorm(unittest.TestCase):
    """A counters write that fails (flash full for that file) once made the station retry
    it at every iteration, and each failure queued fault records: 40 000 flash operations
    in 12 s. Now the retries back off (1, 2, 4 ... s)."""

    def test_twelve_seconds_on_a_flash_that_refuses_the_counters(self):
        fs = FailingFs(paths=("counters.json",), err=ENOSPC)
        board = SimBoard()
        st = Station(board, config=BACKEND, store=Store(ROOT, fs))
        boot_ops = fs.attempts
        for _ in range(12000 // TICK_MS):
            st.step()
            board.sleep_ms(TICK_MS)
        # Counters: the write at boot, then retries at 1, 3 and 7 s.
        self.assertEqual(fs.refused, 4)
        self.assertTrue(fs.attempts - boot_ops < 150, fs.attempts - boot_ops)
        faults_held = [r for r in st.outbox.records() if r.kind == KIND_FAULT]
        self.assertTrue(len(faults_held) <= 8, len(faults_held))
        self.assertEqual(st.outbox.overflow, 0)
        self.assertEqual(st.counters.failures, 4)
        # The flash works again: the next retry (at 15 s) writes the counters.
        fs.failing = False
        for _ in range(4000 // TICK_MS):
            st.step()
            board.sleep_ms(TICK_MS)
        self.assertEqual(st.counters.failures, 0)
        self.assertFalse(st.counters._dirty)

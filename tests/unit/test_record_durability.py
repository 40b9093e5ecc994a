# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
# A finished session record is on flash before anything else counts it, and it leaves its
# checkpoint (session.live) only once it is in the journal: out of memory while building it,
# a journal that refuses it, a torn journal on a flash that refuses the repair. Each with
# the power cut at every flash operation, then a boot on a working flash: no record lost.
import unittest

from firmware.config import Config
from firmware.counters import RETRY_MAX_MS, Counters
from firmware.session import JOURNAL_FILE, LIVE_FILE, SessionManager
from firmware.states import STATE_A, STATE_B2, STATE_C2
from firmware.storage import Journal, Store
from tools.powercut_fs import FailingFs, PowerCut, PowerCutFs

ROOT = "/data"
CFG = {"station_id": "cp-7"}
EROFS = 30


def boot(fs, t=0):
    store = Store(ROOT, fs)
    counters = Counters(store)
    b = counters.boot(t)
    return store, counters, SessionManager(Config(CFG), store, counters, b)


def plug_and_charge(sm, t, register=5000):
    sm.on_meter(t, register, 0, True)
    sm.on_state(t, STATE_B2)
    sm.set_id_tag("CARD", t, "local_list")
    sm.on_state(t, STATE_C2)
    sm.on_contactor(t, True)
    for i in range(1, 4):
        sm.on_meter(t + i * 10000, register + i * 20, 7200, True)
        sm.tick(t + i * 10000)
    return t + 40000


def unplug(sm, t):
    sm.on_state(t, STATE_B2)
    sm.on_contactor(t, False)
    sm.on_state(t + 1000, STATE_A)


def cut_session_medium():
    """A flash as a power cut leaves it in the middle of session 1-1 (checkpointed)."""
    fs = PowerCutFs()
    _st, _c, sm = boot(fs)
    plug_and_charge(sm, 1000)
    fs2 = fs.restart()
    return fs2.medium, fs2.dirs


def copy(medium):
    return {p: bytearray(d) for p, d in medium.items()}


class Sweep(unittest.TestCase):
    def sweep(self, medium, dirs, action, check, make_fs=None):
        """action(fs) with the power cut at every flash operation (torn and clean); then
        check(fs) on the flash it left, restarted on a working medium."""
        probe = (make_fs or PowerCutFs)(copy(medium), set(dirs))
        action(probe)
        total = probe.ops
        self.assertTrue(total > 3, total)
        for k in range(1, total + 2):
            for tear in (False, True):
                fs = (make_fs or PowerCutFs)(copy(medium), set(dirs))
                fs.cut_at = k
                fs.tear = tear
                try:
                    action(fs)
                except PowerCut:
                    pass
                check(PowerCutFs(copy(fs.medium), set(fs.dirs)), "cut at op %d%s (%s)" % (
                    k, " torn" if tear else "", fs.log[-1] if fs.log else "-"))
        check(PowerCutFs(copy(probe.medium), set(probe.dirs)), "no cut")


def recovered_ids(fs):
    _st, counters, sm = boot(fs, 900000)
    sm.recover(900000)
    return [r["id"] for r in sm.pending()], counters, sm


class OutOfMemoryWhileBuildingAPowerLossRecord(Sweep):
    def action(self, fs):
        _st, _c, sm = boot(fs, 100000)
        self.assertTrue(sm.recovering)
        real = sm._record
        calls = [0]

        def record(s, reason):
            calls[0] += 1
            if calls[0] == 1:
                raise MemoryError("memory allocation failed, allocating 1536 bytes")
            return real(s, reason)
        sm._record = record
        try:
            sm.recover(100000)
        except MemoryError:
            pass
        # Still held: the cut session is closed at the next chance, not lost.
        self.assertTrue(sm.recovering)
        t = plug_and_charge(sm, 200000, 6000)    # the next plug-in closes it first
        unplug(sm, t)
        return sm

    def test_the_session_is_kept_until_its_record_is_on_flash(self):
        medium, dirs = cut_session_medium()
        sm = self.action(PowerCutFs(copy(medium), set(dirs)))
        ids = [r["id"] for r in sm.pending()]
        self.assertEqual(ids, ["1-1", "2-1"])
        self.assertEqual(sm.pending()[0]["stop_reason"], "power_loss")
        self.assertEqual(sm.counters.sessions, 2)

    def test_power_cut_everywhere(self):
        medium, dirs = cut_session_medium()

        def check(fs, where):
            ids, counters, _sm = recovered_ids(fs)
            self.assertIn("1-1", ids, where)
            self.assertEqual(len(ids), len(set(ids)), where)
            self.assertEqual(counters.sessions, len(ids), where)
        self.sweep(medium, dirs, self.action, check)


class AJournalThatRefusesTheRecord(Sweep):
    # The journal cannot take the record (its file refused: full, worn); the rest of the
    # flash works. The counters must not count the session yet, and its checkpoint stays.
    def action(self, fs):
        _st, counters, sm = boot(fs, 100000)
        sm.recover(100000)
        t = plug_and_charge(sm, 200000)
        unplug(sm, t)
        return counters, sm

    def make_fs(self, medium, dirs):
        return FailingFs(medium, dirs, paths=(ROOT + "/" + JOURNAL_FILE,), err=28)

    def test_not_counted_and_checkpoint_kept_until_journaled(self):
        fs = self.make_fs({}, set())
        counters, sm = self.action(fs)
        self.assertTrue(sm.journal_write_failures >= 1)
        self.assertEqual(counters.sessions, 0)                  # not on flash: not counted
        self.assertTrue(ROOT + "/" + LIVE_FILE in fs.medium)    # its only copy on flash
        # A later session does not overwrite that copy while the record waits.
        t = plug_and_charge(sm, 500000)
        self.assertTrue(sm.checkpoints_held >= 1)
        raw = Store(ROOT, PowerCutFs(copy(fs.medium), set(fs.dirs))).read(LIVE_FILE)
        self.assertTrue(b'"1-1"' in raw, raw)
        # The flash recovers: the record is journaled, counted, and the files are the
        # live session's again.
        fs.failing = False
        attempts = fs.attempts
        sm.tick(t + 10)                  # backed off: no retry at every loop iteration
        self.assertEqual(fs.attempts, attempts)
        sm.tick(t + RETRY_MAX_MS)
        self.assertEqual(counters.sessions, 1)
        raw = Store(ROOT, PowerCutFs(copy(fs.medium), set(fs.dirs))).read(LIVE_FILE)
        self.assertTrue(b'"1-2"' in raw, raw)

    def test_power_cut_everywhere_then_a_working_flash(self):
        def check(fs, where):
            ids, counters, _sm = recovered_ids(fs)
            # Session 1-1 was under way or finished at every cut: its record comes back
            # from the checkpoint (never "already counted"), counted once.
            if ids:
                self.assertEqual(ids, ["1-1"], where)
            self.assertEqual(counters.sessions, len(ids), where)
        self.sweep({}, set(), self.action, check, self.make_fs)

    def test_the_record_comes_back_after_a_reset(self):
        fs = self.make_fs({}, set())
        self.action(fs)
        ids, counters, _sm = recovered_ids(PowerCutFs(copy(fs.medium), set(fs.dirs)))
        self.assertEqual(ids, ["1-1"])
        self.assertEqual(counters.sessions, 1)


def torn_journal_medium():
    fs = PowerCutFs()
    _st, _c, sm = boot(fs)
    t = 1000
    for _ in range(3):
        t = plug_and_charge(sm, t)
        unplug(sm, t)
        t += 5000
    fs.medium[ROOT + "/" + JOURNAL_FILE].extend(b"\xa5R\x01\x00torn-append")
    return fs.medium, fs.dirs


class ATornJournalOnAFlashThatRefusesTheRepair(Sweep):
    def test_read_only_flash_shows_every_pending_record(self):
        medium, dirs = torn_journal_medium()
        fs = FailingFs(copy(medium), set(dirs), err=EROFS)
        store = Store(ROOT, fs)
        j = Journal(store, JOURNAL_FILE)
        self.assertEqual(len(j.replay()), 3)
        self.assertEqual(j.cut_failures, 1)
        self.assertTrue(j.damaged_bytes_total > 0)
        sm = SessionManager(Config(CFG), store, Counters(store), 2)
        self.assertEqual([r["id"] for r in sm.pending()], ["1-1", "1-2", "1-3"])
        self.assertTrue(sm.damage()["journal_cut_failures"] >= 1)

    def test_full_journal_power_cut_everywhere(self):
        # The journal's rewrite is refused (full): the boot, a session and its end, with
        # the power cut everywhere; then a working flash finds every record.
        medium, dirs = torn_journal_medium()

        def make_fs(m, d):
            return FailingFs(m, d, paths=(JOURNAL_FILE + ".tmp",), err=28)

        def action(fs):
            _st, _c, sm = boot(fs, 100000)
            self.assertEqual(len(sm.pending()), 3)
            t = plug_and_charge(sm, 200000)
            unplug(sm, t)

        def check(fs, where):
            ids, _counters, _sm = recovered_ids(fs)
            for sid in ("1-1", "1-2", "1-3"):
                self.assertIn(sid, ids, where)
        self.sweep(medium, dirs, action, check, make_fs)


if __name__ == "__main__":
    unittest.main()

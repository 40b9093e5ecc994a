# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
"""Every session is counted exactly once in the lifetime counters (firmware/counters.py).

The case that once counted a session twice: session 1-1's record is refused by the journal
(kept in RAM, retried), session 1-2 finishes and is journaled and counted first, then 1-1's
record lands after it. The backend acknowledges 1-1 and the journal is compacted: the old
design ("last id counted" plus "replay the journal's last record") then took 1-2 for
uncounted at the next boot and counted it again. The counters now say which ids they hold
(`last_session` plus `uncounted`), so the order of writes no longer matters. Tested as it
happens, then with the power cut at every flash operation (torn and clean), and with the
backend acknowledging a record the journal never took.
"""
import unittest

import firmware.session as session_mod
from firmware.counters import RETRY_MAX_MS, Counters
from firmware.session import JOURNAL_FILE, LIVE_FILE
from firmware.storage import Store
from tools.powercut_fs import FailingFs, PowerCutFs
from test_record_durability import ROOT, Sweep, boot, copy, plug_and_charge, recovered_ids, unplug


def journal_fs(medium=None, dirs=None):
    """A flash whose journal file can be made to refuse writes (fs.failing)."""
    return FailingFs(medium if medium is not None else {}, dirs if dirs is not None else set(),
                     paths=(ROOT + "/" + JOURNAL_FILE,), err=28, failing=False)


class OutOfOrder(Sweep):
    def setUp(self):
        # Compact at the first acknowledgement (normally once the journal passes 8 KB).
        self._compact_bytes = session_mod._COMPACT_BYTES
        session_mod._COMPACT_BYTES = 0

    def tearDown(self):
        session_mod._COMPACT_BYTES = self._compact_bytes

    def action(self, fs):
        """Sessions 1-1 and 1-2 finish on flash in the order 1-2, 1-1; 1-1 is acknowledged
        and compacted away. `self.delivered`: ids the backend was handed (acknowledged)."""
        self.delivered = []
        _st, counters, sm = boot(fs, 0)
        t = plug_and_charge(sm, 1000)                 # session 1-1
        fs.failing = True
        unplug(sm, t)                                 # its record refused: kept in RAM
        t = plug_and_charge(sm, t + 2000, 7000)       # 1-2; the retries of 1-1 fail too
        fs.failing = False
        unplug(sm, t)                                 # 1-2 journaled and counted first
        sm.tick(t + 2 * RETRY_MAX_MS)                 # now 1-1, after it
        self.delivered.append("1-1")
        sm.acknowledged("1-1")                        # the journal is compacted: 1-2 alone
        return counters, sm

    def test_the_case_as_it_happens(self):
        fs = journal_fs()
        counters, sm = self.action(fs)
        self.assertEqual([r["id"] for r in sm.pending()], ["1-2"])
        self.assertEqual(counters.sessions, 2)
        self.assertEqual(counters.last_session, "1-2")
        self.assertEqual(counters.uncounted, [])
        # The next boot finds 1-2 alone in the journal: already counted.
        ids, again, _sm = recovered_ids(PowerCutFs(copy(fs.medium), set(fs.dirs)))
        self.assertEqual(ids, ["1-2"])
        self.assertEqual(again.sessions, 2)
        self.assertEqual(again.energy_wh, counters.energy_wh)

    def test_the_older_record_does_not_move_the_ledger_back(self):
        fs = journal_fs()
        counters, sm = self.action(fs)
        # 1-2 ended at register 7060, 1-1 at 5060: the ledger stays at the newer end.
        self.assertEqual(counters.ledger_wh, 7060)

    def test_power_cut_at_every_flash_operation(self):
        def check(fs, where):
            ids, counters, _sm = recovered_ids(fs)
            self.assertEqual(len(ids), len(set(ids)), where)
            known = set(ids) | set(self.delivered)
            self.assertEqual(counters.sessions, len(known), "%s: %r counted %d" % (
                where, sorted(known), counters.sessions))
        self.sweep({}, set(), self.action, check, journal_fs)


class AcknowledgedBeforeJournaled(Sweep):
    # The backend acknowledges a record the journal could not take yet (it was sent from
    # RAM): it is counted then, and its checkpoint goes (no power-loss copy at the next boot
    # beyond one the counters already know).
    def action(self, fs):
        self.delivered = []
        _st, counters, sm = boot(fs, 0)
        t = plug_and_charge(sm, 1000)
        fs.failing = True
        unplug(sm, t)
        self.delivered.append("1-1")
        self.assertTrue(sm.acknowledged("1-1"))
        fs.failing = False
        t = plug_and_charge(sm, t + 2000, 7000)
        unplug(sm, t)
        return counters, sm

    def test_counted_once_and_its_checkpoint_gone(self):
        fs = journal_fs()
        counters, sm = self.action(fs)
        self.assertEqual(counters.sessions, 2)
        self.assertFalse(ROOT + "/" + LIVE_FILE in fs.medium)
        ids, again, _sm = recovered_ids(PowerCutFs(copy(fs.medium), set(fs.dirs)))
        self.assertEqual(ids, ["1-2"])
        self.assertEqual(again.sessions, 2)

    def test_power_cut_at_every_flash_operation(self):
        def check(fs, where):
            ids, counters, _sm = recovered_ids(fs)
            self.assertEqual(len(ids), len(set(ids)), where)
            known = set(ids) | set(self.delivered)
            self.assertEqual(counters.sessions, len(known), "%s: %r counted %d" % (
                where, sorted(known), counters.sessions))
        self.sweep({}, set(), self.action, check, journal_fs)


class CountersFile(unittest.TestCase):
    def test_open_older_sessions_are_listed_until_counted(self):
        fs = PowerCutFs()
        c = Counters(Store(ROOT, fs))
        self.assertTrue(c.session_ended("3-1", 100, ledger_wh=1100))
        self.assertTrue(c.session_ended("3-3", 50, ledger_wh=1300, open_ids=["3-2", "2-9"]))
        self.assertEqual(c.uncounted, ["3-2"])           # 2-9 is below 3-1: counted long ago
        self.assertFalse(c.counted("3-2"))
        self.assertTrue(c.counted("3-1") and c.counted("3-3") and c.counted("2-9"))
        again = Counters(Store(ROOT, fs.restart()))
        self.assertEqual((again.last_session, again.uncounted), ("3-3", ["3-2"]))
        self.assertTrue(again.session_ended("3-2", 70, ledger_wh=1200))
        self.assertFalse(again.session_ended("3-2", 70))
        self.assertFalse(again.session_ended("3-3", 50))
        self.assertEqual((again.sessions, again.energy_wh), (3, 220))
        self.assertEqual(again.ledger_wh, 1300)
        self.assertEqual(again.uncounted, [])
        self.assertEqual(sorted(again.values()), sorted(c.values()))   # same fields as before
        self.assertTrue("uncounted" not in again.values())

    def test_the_list_is_bounded(self):
        c = Counters(Store(ROOT, PowerCutFs()))
        c.session_ended("1-1", 1)
        c.session_ended("1-40", 1, open_ids=["1-%d" % k for k in range(2, 40)])
        self.assertEqual(len(c.uncounted), 8)
        self.assertEqual(c.uncounted[-1], "1-39")


if __name__ == "__main__":
    unittest.main()

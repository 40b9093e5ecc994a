# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
"""The files of a session cut by a reset (session.live, session.ckpt), damaged: the loss is
reported (storage damage `checkpoints_unreadable`, which the station turns into
STORAGE_ERROR and a storage_damage event), while the harmless leftover of a finished
session (the power failed between the two removals) is cleaned up without a report.
Found by tests/system/flash_campaign.py on a littlefs image."""
import unittest

from firmware.session import CKPT_FILE, LIVE_FILE
from tools.powercut_fs import PowerCutFs
from test_record_durability import ROOT, boot, copy, plug_and_charge

LIVE = ROOT + "/" + LIVE_FILE
CKPT = ROOT + "/" + CKPT_FILE


def cut_medium():
    """Session 1-1 charging for 40 s (full and small checkpoints on flash), then a cut."""
    fs = PowerCutFs()
    _st, _c, sm = boot(fs)
    plug_and_charge(sm, 1000)
    fs2 = fs.restart()
    return fs2.medium, fs2.dirs


class CutSessionFiles(unittest.TestCase):
    def boot_on(self, medium, dirs):
        fs = PowerCutFs(medium, dirs)
        _st, _c, sm = boot(fs, 500000)
        return fs, sm

    def test_both_files_intact_recover_the_session_without_a_report(self):
        medium, dirs = cut_medium()
        self.assertTrue(LIVE in medium and CKPT in medium)
        _fs, sm = self.boot_on(copy(medium), set(dirs))
        self.assertTrue(sm.recovering)
        self.assertEqual(sm.damage()["checkpoints_unreadable"], 0)

    def test_a_lost_main_file_is_reported(self):
        medium, dirs = cut_medium()
        del medium[LIVE]
        _fs, sm = self.boot_on(copy(medium), set(dirs))
        self.assertFalse(sm.recovering)
        self.assertEqual(sm.damage()["checkpoints_unreadable"], 1)
        self.assertTrue("lost" in sm.error, sm.error)
        self.assertTrue(sm.damage_total() >= 1)

    def test_a_damaged_main_file_is_reported(self):
        medium, dirs = cut_medium()
        medium[LIVE][len(medium[LIVE]) // 2] ^= 0x10
        _fs, sm = self.boot_on(copy(medium), set(dirs))
        self.assertFalse(sm.recovering)
        self.assertEqual(sm.damage()["checkpoints_unreadable"], 1)

    def test_a_damaged_small_checkpoint_is_reported_and_the_session_still_recovered(self):
        medium, dirs = cut_medium()
        medium[CKPT][len(medium[CKPT]) // 2] ^= 0x10
        _fs, sm = self.boot_on(copy(medium), set(dirs))
        self.assertTrue(sm.recovering)
        self.assertEqual(sm.damage()["checkpoints_unreadable"], 1)

    def test_a_finished_sessions_leftover_checkpoint_is_removed_silently(self):
        medium, dirs = cut_medium()
        leftover = bytearray(medium[CKPT])          # session 1-1's small checkpoint
        fs = PowerCutFs(copy(medium), set(dirs))
        _st, _c, sm = boot(fs, 500000)
        sm.recover(500000, None)                     # 1-1 finished: its files removed
        self.assertFalse(LIVE in fs.medium or CKPT in fs.medium)
        after = fs.restart()
        after.medium[CKPT] = leftover                # the second removal cut by the power
        fs2, sm2 = self.boot_on(copy(after.medium), set(after.dirs))
        self.assertEqual(sm2.damage()["checkpoints_unreadable"], 0)
        self.assertFalse(CKPT in fs2.medium)


if __name__ == "__main__":
    unittest.main()

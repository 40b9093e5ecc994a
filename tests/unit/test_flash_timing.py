# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
# Flash writes take time (tools/flash_timing.py: ~45 ms per sector erase, the CPU held
# meanwhile): the safety tick runs between flash operations, so a pilot change made while
# the station writes opens the contactor within IEC 61851-1's 100 ms.
import unittest

from firmware.storage import Journal, Store
from tools.flash_timing import FlashTimingFs
from tools.powercut_fs import PowerCutFs
from tools import bench_flash


class Clock:
    def __init__(self):
        self.ms = 0

    def advance(self, ms):
        self.ms += ms


class TheTimingModel(unittest.TestCase):
    def test_a_data_commit_erases_a_sector_and_a_rename_programs_a_page(self):
        c = Clock()
        fs = FlashTimingFs(PowerCutFs(), c.advance)
        st = Store("/d", fs)
        t0 = c.ms
        st.write_atomic("a", b"x" * 1000)        # open, commit (1 erase, 5 pages), rename
        self.assertEqual(fs.erases, 1)
        self.assertTrue(45 <= c.ms - t0 <= 50, c.ms - t0)
        t1 = c.ms
        st.write_atomic("b", b"y" * 9000)        # three sectors
        self.assertTrue(3 * 45 <= c.ms - t1 <= 3 * 45 + 25, c.ms - t1)
        self.assertEqual(fs.erases, 4)

    def test_an_append_copies_the_last_block(self):
        c = Clock()
        fs = FlashTimingFs(PowerCutFs(), c.advance)
        j = Journal(Store("/d", fs), "j")
        j.append(b"a" * 3000)
        t = c.ms
        j.append(b"b" * 10)                      # the 3 KB tail is programmed again
        self.assertTrue(c.ms - t >= 45 + 3000 // 256 // 2, c.ms - t)


_medium = []


class ReactionWhileWriting(unittest.TestCase):
    # (tests/mprun.py has no setUpClass: the backlog is built once per module.)
    def setUp(self):
        if not _medium:
            _medium.append(bench_flash.backlog(8))
        self.medium = _medium[0]

    def sweep(self, ops, unplug):
        times = []
        for k in ops:
            tr = bench_flash.Trial(self.medium, k, unplug)
            took, _ = tr.ack_and_write(tr.charge())
            self.assertIsNotNone(took)
            times.append(took)
        return times

    def test_the_writing_is_heavy(self):
        tr = bench_flash.Trial(self.medium)
        _, ops = tr.ack_and_write(tr.charge())
        # Acknowledgements, records moved into the outbox, checkpoint, counters.
        self.assertTrue(ops >= 20, ops)
        self.assertTrue(tr.flash.busy_us >= 800000, tr.flash.busy_us)

    def test_c_to_b_while_writing_opens_within_100_ms(self):
        times = self.sweep((1, 2, 3, 5, 8, 13), False)
        self.assertTrue(max(times) <= 100, times)

    def test_an_unplug_while_writing_opens_within_100_ms(self):
        times = self.sweep((1, 2, 4, 7, 11), True)
        self.assertTrue(max(times) <= 100, times)

    def test_without_ticks_between_flash_operations_it_would_not(self):
        # The check above can fail: with the pause hook off the same change waits for the
        # whole iteration's writing.
        tr = bench_flash.Trial(self.medium, 1)
        tr.station.store.pause = None
        took, _ = tr.ack_and_write(tr.charge())
        self.assertTrue(took > 100, took)


if __name__ == "__main__":
    unittest.main()

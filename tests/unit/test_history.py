# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
# firmware/history.py: the fault and event log on flash. Bounded on flash and in RAM, written
# in batches (never per tick), read back across reboots, torn records skipped.
import unittest

from firmware import history as H
from firmware.events import EV_FAULT_RAISED, EV_STATE
from firmware.ramfs import RamFs
from firmware.storage import Store
from tools.powercut_fs import PowerCut, PowerCutFs

ROOT = "/data"


def _store(fs=None):
    return Store(ROOT, fs if fs is not None else PowerCutFs())


def _flash_bytes(fs):
    return sum(len(fs.medium[p]) for p in fs.medium if "/hist" in p)


class Writing(unittest.TestCase):
    def test_records_wait_in_ram_and_go_out_in_one_append(self):
        fs = PowerCutFs()
        h = H.History(_store(fs), boot=1)
        for i in range(H.BUFFER - 1):
            h.add(EV_STATE, i, 0, now_ms=i * 10)
            self.assertFalse(h.tick(i * 10 + 5))
        self.assertEqual(h.writes, 0)
        self.assertEqual(_flash_bytes(fs), 0)
        # The reader sees the buffered ones too.
        self.assertEqual(len(h.records(50)), H.BUFFER - 1)
        h.add(EV_STATE, 99, 0, now_ms=200)
        self.assertTrue(h.tick(210))                  # full: one append
        self.assertEqual(h.writes, 1)
        self.assertEqual(_flash_bytes(fs), H.BUFFER * H.RECORD)

    def test_each_segment_write_gives_the_safety_tick_its_turn(self):
        # An append may cost a NOR erase (tens of ms): like every Store write, it is
        # followed by Store.pause, where the station runs its safety tick when one is due.
        store = _store()
        turns = []
        store.pause = lambda: turns.append(store.ops)
        h = H.History(store, boot=1)
        for i in range(H.BUFFER):
            h.add(EV_STATE, i, 0, now_ms=i)
        self.assertTrue(h.flush(100))
        self.assertEqual(h.writes, 1)
        self.assertEqual(turns, [1])

    def test_a_lone_record_is_written_after_flush_ms(self):
        h = H.History(_store(), boot=1)
        h.add(EV_STATE, 1, 0, now_ms=0)
        self.assertFalse(h.tick(H.FLUSH_MS - 10))
        self.assertTrue(h.tick(H.FLUSH_MS))
        self.assertEqual(h.writes, 1)

    def test_a_burst_is_rate_limited_and_counted_never_written_per_event(self):
        fs = PowerCutFs()
        h = H.History(_store(fs), boot=1)
        t = 0
        for i in range(2000):                         # 2000 events in 20 s of ticks
            h.add(EV_STATE, i & 7, 0, now_ms=t)
            h.tick(t)
            t += 10
        self.assertTrue(h.writes <= 20000 // H.MIN_GAP_MS + 2, h.writes)
        self.assertTrue(h.lost > 1900, h.lost)
        h.flush(t)
        recs = H.read(h.store, 50)
        lost = [r for r in recs if r[4] == H.HK_LOST]
        self.assertTrue(lost and lost[-1][5] > 0)

    def test_flash_and_ram_stay_bounded_and_the_newest_are_kept_in_order(self):
        fs = PowerCutFs()
        h = H.History(_store(fs), boot=1)
        t = 0
        for i in range(1000):
            h.add(EV_STATE, i, 0, now_ms=t)
            t += H.MIN_GAP_MS // 4                     # slow enough: nothing lost
            h.tick(t)
        h.flush(t)
        self.assertEqual(h.lost, 0)
        self.assertTrue(_flash_bytes(fs) <= H.SEGMENTS * H.PER_SEGMENT * H.RECORD)
        self.assertEqual(len(h._buf), H.BUFFER * H.RECORD)
        recs = H.read(h.store, 1000)
        self.assertTrue((H.SEGMENTS - 1) * H.PER_SEGMENT <= len(recs)
                        <= H.SEGMENTS * H.PER_SEGMENT, len(recs))
        self.assertEqual(recs[-1][5], 999)
        seqs = [r[0] for r in recs]
        self.assertEqual(seqs, list(range(seqs[0], seqs[0] + len(seqs))))
        self.assertEqual([r[5] for r in H.read(h.store, 3)], [997, 998, 999])

    def test_kinds_filter_walks_back_until_enough(self):
        h = H.History(_store(), boot=1)
        for i in range(40):
            t = i * H.MIN_GAP_MS // 4
            h.add(EV_FAULT_RAISED if i % 10 == 0 else EV_STATE, i, 0, now_ms=t)
            h.tick(t)
        h.flush(40 * H.MIN_GAP_MS)
        recs = H.read(h.store, 3, (EV_FAULT_RAISED,))
        self.assertEqual([r[5] for r in recs], [10, 20, 30])


class Time(unittest.TestCase):
    def test_utc_when_the_clock_is_set_else_boot_and_uptime(self):
        clock = [None]
        h = H.History(_store(), boot=3, wall_time=lambda: clock[0], now_ms=1000)
        h.add(EV_STATE, 1, 0, now_ms=13300)            # 12.3 s after the start
        clock[0] = 1767600000
        h.add(EV_STATE, 2, 0, now_ms=15000, t_ms=13000)  # happened 2 s before the drain
        a, b = h.records(2)
        self.assertEqual((a[1], a[2], a[3]), (None, 123, 3))
        self.assertEqual((b[1], b[2]), (1767600000 - 2, 120))

    def test_uptime_keeps_counting_past_a_ticks_wrap(self):
        h = H.History(_store(), boot=1, now_ms=(1 << 30) - 500)
        h.tick((1 << 30) - 1)
        h.add(EV_STATE, 1, 0, now_ms=1500)              # ticks wrapped at 2**30
        self.assertEqual(h.records(1)[0][2], 20)


class Reboot(unittest.TestCase):
    def test_a_new_boot_continues_the_sequence_and_reads_both(self):
        fs = PowerCutFs()
        h = H.History(_store(fs), boot=1)
        for i in range(5):
            h.add(EV_STATE, i, 0, now_ms=i)
        h.flush(10)
        h2 = H.History(_store(fs.restart()), boot=2)
        self.assertEqual(h2.seq, 5)
        h2.add(H.HK_BOOT, 1, 0, now_ms=0)
        recs = h2.records(10)
        self.assertEqual([r[3] for r in recs], [1, 1, 1, 1, 1, 2])

    def test_a_torn_append_is_skipped_and_cut_away(self):
        fs = PowerCutFs()
        h = H.History(_store(fs), boot=1)
        for i in range(3):
            h.add(EV_STATE, i, 0, now_ms=i)
        h.flush(10)
        for i in range(3, 6):
            h.add(EV_STATE, i, 0, now_ms=i)
        fs.cut_at = fs.ops + 2                         # the write of the second batch
        fs.tear = True
        try:
            h.flush(20)
        except PowerCut:
            pass
        fs2 = fs.restart()
        h2 = H.History(_store(fs2), boot=2)
        self.assertEqual([r[5] for r in H.read(h2.store, 10)], [0, 1, 2])
        h2.add(EV_STATE, 7, 0, now_ms=0)
        h2.flush(0)
        self.assertEqual([r[5] for r in H.read(h2.store, 10)], [0, 1, 2, 7])

    def test_a_flash_that_refuses_keeps_the_records_in_ram_and_says_so(self):
        fs = PowerCutFs()
        h = H.History(_store(fs), boot=1)
        h.add(EV_STATE, 1, 0, now_ms=0)

        class Refusing(RamFs):
            def open(self, path, mode):
                raise OSError(28, "ENOSPC")
        h.store.fs = Refusing()
        self.assertFalse(h.flush(0))
        self.assertTrue("ENOSPC" in h.error or "28" in h.error, h.error)
        self.assertEqual(len(h.pending()), 1)

    def test_the_ram_store_of_a_failed_flash_works_too(self):
        h = H.History(Store("/ram", RamFs()), boot=1)
        for i in range(H.BUFFER + 1):
            h.add(EV_STATE, i, 0, now_ms=i)
        h.flush(100)
        self.assertEqual(len(H.read(h.store, 20)), H.BUFFER + 1)


if __name__ == "__main__":
    unittest.main()

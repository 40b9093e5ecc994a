# tools/bench_rig.py HarnessRoom: the heap benchmarks give the firmware exactly the GC pool
# of the heap under test, whatever the harness holds (docs/performance.md, Heap). On CPython
# there is no fixed heap to measure: the tests skip (the stand-in run is what counts).
import gc
import unittest

from tools.bench_rig import HarnessRoom

MEASURES = hasattr(gc, "mem_alloc")


def _scrub(depth=40):
    # The collector is conservative: a stale pointer on the C stack (left by the test
    # runner compiling this module) keeps garbage alive at begin()'s collection, and the
    # next collection frees it, which reads as a smaller harness. Deep calls overwrite
    # those stack slots first.
    return 0 if depth == 0 else _scrub(depth - 1) + 1


@unittest.skipUnless(MEASURES, "gc.mem_alloc: MicroPython only")
class HarnessRoomLeavesTheFirmwareItsPool(unittest.TestCase):
    def _harness(self):
        # Something the harness holds: a few objects of different sizes.
        # (A bytearray of 3 000 B: what the collector frees of what was live at begin(),
        # stale references on the stack, is a few hundred bytes at most.)
        return [bytearray(3000), list(range(40)), {"a": 1, "b": 2}]

    def test_the_firmware_has_exactly_the_pool_asked_for(self):
        room = HarnessRoom()
        _scrub()
        room.begin()
        held = self._harness()
        gc.collect()
        pool = gc.mem_free() // 2 // 16 * 16 + (gc.mem_alloc() - room.start)
        got = room.reserve(pool)
        gc.collect()
        self.assertTrue(room.harness > 2500, room.harness)
        self.assertEqual(got, pool)
        # What is neither harness nor ballast: the live firmware (here: what was live
        # before begin()) plus what is free.
        self.assertEqual(gc.mem_alloc() + gc.mem_free() - room.harness - room.ballast_bytes,
                         pool)
        self.assertEqual(gc.mem_free(), pool - (gc.mem_alloc() - room.harness
                                                - room.ballast_bytes))
        self.assertTrue(held)

    def test_the_pool_is_exact_with_holes_in_the_heap(self):
        room = HarnessRoom()
        room.begin()
        # Every other block of a run held: holes of 2 KB among the harness.
        keep = [bytearray(2000) for _ in range(6)]
        for i in range(0, len(keep), 2):
            keep[i] = None
        gc.collect()
        pool = gc.mem_free() // 4 // 16 * 16 + (gc.mem_alloc() - room.start)
        self.assertEqual(room.reserve(pool), pool)
        self.assertTrue(room.ballast_bytes > 0)
        self.assertTrue(keep[1] is not None)

    def test_measure_only_leaves_the_heap_as_it_is(self):
        room = HarnessRoom()
        room.begin()
        held = self._harness()
        room.reserve()
        self.assertEqual(room.ballast_bytes, 0)
        self.assertIsNone(room.ballast)
        self.assertTrue(room.harness > 2500, room.harness)
        self.assertTrue(held)

    def test_a_harness_larger_than_its_room_is_an_error(self):
        room = HarnessRoom()
        room.begin()
        held = self._harness()
        gc.collect()
        self.assertRaises(RuntimeError, room.reserve, gc.mem_alloc() + gc.mem_free())
        self.assertTrue(held)


if __name__ == "__main__":
    unittest.main()

# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
import unittest

from firmware import events
from firmware.events import EV_CONTACTOR, EV_OFFER, EV_STATE, KIND_NAMES, EventRing


class Ring(unittest.TestCase):
    def test_fifo(self):
        r = EventRing(4)
        r.push(1, EV_STATE, 2, 1)
        r.push(2, EV_CONTACTOR, 1, 0)
        self.assertEqual(len(r), 2)
        self.assertEqual(r.pop(), (1, EV_STATE, 2, 1))
        self.assertEqual(r.pop(), (2, EV_CONTACTOR, 1, 0))
        self.assertIsNone(r.pop())

    def test_full_ring_overwrites_the_oldest_and_counts_drops(self):
        r = EventRing(3)
        for t in range(5):
            r.push(t, EV_OFFER, t * 1000, 0)
        self.assertEqual(r.dropped, 2)
        self.assertEqual(r.pushed, 5)
        self.assertEqual([e[0] for e in r.recent()], [2, 3, 4])
        self.assertEqual(r.pop()[0], 2)
        r.push(5, EV_OFFER, 0, 0)
        self.assertEqual([e[0] for e in r.recent()], [3, 4, 5])
        self.assertEqual(r.dropped, 2)

    def test_recent_does_not_remove(self):
        r = EventRing(8)
        for t in range(3):
            r.push(t, EV_STATE, t, 0)
        self.assertEqual(r.recent(2), [(1, EV_STATE, 1, 0), (2, EV_STATE, 2, 0)])
        self.assertEqual(len(r), 3)
        self.assertEqual(r.recent(10), r.recent())

    def test_negative_arguments_survive(self):
        r = EventRing(2)
        r.push(7, EV_STATE, -1, -2)
        self.assertEqual(r.pop(), (7, EV_STATE, -1, -2))

    def test_kind_names_cover_every_kind(self):
        kinds = [getattr(events, n) for n in dir(events) if n.startswith("EV_")]
        self.assertEqual(sorted(kinds), list(range(len(KIND_NAMES))))
        self.assertEqual(KIND_NAMES[EV_STATE], "state")

    def test_bad_capacity(self):
        self.assertRaises(ValueError, EventRing, 0)


class HistoryKeepsPoppedRecords(unittest.TestCase):
    def test_history_after_the_ring_was_drained(self):
        ring = EventRing(4)
        for i in range(3):
            ring.push(i * 10, EV_STATE, i, 0)
        while ring.pop() is not None:
            pass
        self.assertEqual(len(ring), 0)
        self.assertEqual([r[2] for r in ring.history()], [0, 1, 2])
        self.assertEqual([r[2] for r in ring.history(2)], [1, 2])

    def test_history_after_wrapping_holds_the_newest_capacity(self):
        ring = EventRing(4)
        for i in range(10):
            ring.push(i, EV_STATE, i, 0)
            ring.pop()
        self.assertEqual([r[2] for r in ring.history()], [6, 7, 8, 9])

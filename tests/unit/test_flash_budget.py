# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
# Flash work per loop iteration (firmware/flashsched.py): the iteration that moves the
# contactor writes nothing and does no slow work; every other iteration makes at most one
# write (an outbox record, its data file with its index entry, counts as one); a session's
# end is written over the following iterations in durability order, and a power cut at any
# flash operation in between loses no record and counts none twice.
import unittest

from firmware.config import Config
from firmware.counters import Counters
from firmware.flashsched import FlashBudget
from firmware.session import CKPT_FILE, JOURNAL_FILE, LIVE_FILE, SessionManager
from firmware.states import STATE_A, STATE_B2, STATE_C2
from firmware.storage import Store
from tools.powercut_fs import PowerCut, PowerCutFs
from tools.pilotsim.model import S2_C, S2_OPEN

from test_station import BACKEND, Rig

ROOT = "/data"


class Budget(unittest.TestCase):
    def test_unbounded_until_the_loop_begins_then_one_write_per_iteration(self):
        store = Store(ROOT, PowerCutFs())
        b = FlashBudget(store)
        self.assertTrue(b.free())
        store.write_atomic("a", b"1")
        self.assertTrue(b.free())                  # not bounded yet: every write at once
        b.begin()
        self.assertTrue(b.free())
        store.write_atomic("a", b"2")
        self.assertFalse(b.free())                 # this iteration has written
        b.begin()
        self.assertTrue(b.free())
        b.begin(held=True)
        self.assertFalse(b.free())                 # the iteration that moved the contactor
        b.unbounded()
        self.assertTrue(b.free())


class _Writes:
    """Counts the writes (Store and Journal calls) each step makes; an outbox put or ack
    is one (its data file and index entry belong together)."""

    def __init__(self, station):
        self.log = []
        self.depth = 0
        st = station
        for obj, names in ((st.store, ("write_atomic", "remove")),
                           (st.sessions.journal, ("append", "append_json", "rewrite")),
                           (st.outbox, ("put", "ack"))):
            for n in names:
                setattr(obj, n, self._wrap(n, getattr(obj, n)))

    def _wrap(self, name, fn):
        def call(*a):
            self.depth += 1
            try:
                return fn(*a)
            finally:
                self.depth -= 1
                if self.depth == 0:
                    what = a[0] if name in ("write_atomic", "remove") else name
                    if what == "append_json":
                        what = "append"           # a journal record, written streaming
                    self.log.append(what)
        return call


def _session_end_writes(r, change):
    """Steps after a pilot `change` until the writes stop: [(step, contactor_closed_before,
    [writes])] of every step."""
    st = r.station
    w = _Writes(st)
    change()
    steps = []
    for i in range(120):
        w.log = []
        closed = st.charger.contactor
        ops = st.store.ops
        st.step()
        r.board.sleep_ms(10)
        steps.append((i, closed, list(w.log), st.store.ops - ops))
    return steps


class OneWritePerIteration(unittest.TestCase):
    def charging(self):
        r = Rig()
        r.ev(plugged=True, s2=S2_C)
        self.assertTrue(r.run_until(lambda: r.board.contacts_closed, 3000) is not None)
        r.run(12000)          # past a checkpoint
        return r

    def test_the_unplug_opens_in_an_iteration_that_writes_nothing(self):
        r = self.charging()
        st = r.station
        steps = _session_end_writes(r, lambda: r.ev(plugged=False, s2=S2_OPEN))
        opened = [s for s in steps if s[1]][-1]          # the last step begun closed
        self.assertEqual(opened[2], [])
        self.assertEqual(opened[3], 0)                    # no flash operation at all
        writes = [s for s in steps if s[2]]
        for s in writes:
            self.assertEqual(len(s[2]), 1, s)
        seq = [s[2][0] for s in writes]
        # The record first, its live files next, then the counters; the outbox after.
        self.assertEqual(seq[0], "append")
        self.assertEqual(seq[1:3], [LIVE_FILE, CKPT_FILE])
        self.assertEqual(seq[3], "counters.json")
        self.assertIn("put", seq[4:])
        self.assertFalse(st.sessions.writes_pending)
        self.assertEqual(len(st.sessions.pending()), 1)
        self.assertEqual(st.counters.sessions, 1)

    def test_a_stop_of_the_ev_opens_without_writing_and_charging_writes_one_at_a_time(self):
        r = self.charging()
        st = r.station
        steps = _session_end_writes(r, lambda: r.ev(s2=S2_OPEN))
        opened = [s for s in steps if s[1]][-1]
        self.assertEqual((opened[2], opened[3]), ([], 0))
        self.assertTrue(max(len(s[2]) for s in steps) <= 1)

    def test_a_shutdown_writes_everything_at_once(self):
        r = self.charging()
        st = r.station
        r.ev(plugged=False, s2=S2_OPEN)
        r.run(20)                        # the opening, then the first write of the end
        self.assertTrue(st.sessions.writes_pending)
        st.shutdown("reboot")
        self.assertFalse(st.sessions.writes_pending)
        self.assertEqual(st.counters.sessions, 1)
        r2 = r.reboot()
        self.assertEqual(r2.station.counters.sessions, 1)
        self.assertEqual(len(r2.station.sessions.pending()), 1)


def _boot(fs, t=0):
    store = Store(ROOT, fs)
    counters = Counters(store)
    n = counters.boot(t)
    budget = FlashBudget(store)
    return counters, budget, SessionManager(Config({"station_id": "cp-7"}), store, counters, n,
                                            budget=budget)


def _session_then_end(fs, mark=None):
    """One session charged and ended, the end written one write per iteration; returns
    the iterations it took (`mark`, a list: gets the flash operations before the end)."""
    counters, budget, sm = _boot(fs)
    t = 1000
    budget.begin()
    sm.on_meter(t, 5000, 0, True)
    sm.on_state(t, STATE_B2)
    sm.set_id_tag("CARD", t, "local_list")
    sm.on_state(t, STATE_C2)
    sm.on_contactor(t, True)
    n = 0
    while sm.writes_pending:
        budget.begin()
        sm.tick(t)
        n += 1
    for i in range(1, 4):
        t += 10000
        budget.begin()
        sm.on_meter(t, 5000 + i * 20, 7200, True)
        sm.tick(t)
    if mark is not None:
        mark.append(fs.ops)
    budget.begin()
    sm.on_state(t, STATE_B2)
    sm.on_contactor(t, False)
    sm.on_state(t + 1000, STATE_A)
    steps = 0
    while sm.writes_pending:
        budget.begin()
        sm.tick(t + 1000 + steps * 10)
        steps += 1
    return steps


class PowerCutBetweenThePieces(unittest.TestCase):
    def test_cut_at_every_flash_operation_of_a_paced_session(self):
        probe = PowerCutFs()
        mark = []
        steps = _session_then_end(probe, mark)
        self.assertTrue(steps >= 3, steps)    # record, live files, counters
        total = probe.ops
        # The session's start and charging are swept in test_record_durability; here the
        # end, paced over iterations (and the last checkpoint before it).
        for k in range(mark[0] - 2, total + 2):
            for tear in (False, True):
                fs = PowerCutFs()
                fs.cut_at = k
                fs.tear = tear
                try:
                    _session_then_end(fs)
                except PowerCut:
                    pass
                where = "cut at op %d%s (%s)" % (k, " torn" if tear else "",
                                                 fs.log[-1] if fs.log else "-")
                counters, _b, sm = _boot(fs.restart(), 900000)
                if sm.recovering:
                    sm.recover(900000)
                ids = [rec["id"] for rec in sm.pending()]
                # Once the session started, its record exists exactly once: ended, or
                # recovered from its checkpoint; counted as often as it is on flash.
                self.assertTrue(len(ids) <= 1, where)
                self.assertEqual(counters.sessions, len(ids), where)
        counters, _b, sm = _boot(probe.restart(), 900000)
        self.assertEqual([r["id"] for r in sm.pending()], ["1-1"])
        self.assertEqual(counters.sessions, 1)
        self.assertFalse(sm.store.exists(LIVE_FILE))
        self.assertTrue(sm.store.exists(JOURNAL_FILE))


if __name__ == "__main__":
    unittest.main()

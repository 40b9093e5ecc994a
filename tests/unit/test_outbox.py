# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
import json
import os
import unittest
from binascii import hexlify

from firmware.compat import ticks_add
from firmware.outbox import (FAULT_OUTBOX_OVERFLOW, KIND_FAULT, KIND_SESSION, KIND_TELEMETRY,
                             Outbox, OutboxError)
from firmware.storage import Journal, Store

_counter = [0]


def _tmpdir():
    _counter[0] += 1
    return "build/test-outbox-%s-%d" % (hexlify(os.urandom(4)).decode(), _counter[0])


def _rmtree(path):
    try:
        names = os.listdir(path)
    except OSError:
        return
    for n in names:
        os.remove(path + "/" + n)
    os.rmdir(path)


def session(i, wh=1000):
    return {"id": "s-%d" % i, "energy_wh": wh, "id_tag": "TAG%d" % i}


class OutboxCase(unittest.TestCase):
    def setUp(self):
        self.dir = _tmpdir()
        self.store = Store(self.dir)
        self.acks = []
        self.drops = []

    def tearDown(self):
        _rmtree(self.dir)

    def outbox(self, **kw):
        kw.setdefault("on_ack", lambda kind, rid: self.acks.append((kind, rid)))
        kw.setdefault("on_overflow", lambda kind, rid: self.drops.append((kind, rid)))
        return Outbox(Journal(self.store, "outbox"), **kw)


class RecordsAreHeldUntilAcknowledged(OutboxCase):
    def test_put_assigns_ids_and_sequence_numbers(self):
        ob = self.outbox()
        self.assertEqual(ob.put(KIND_SESSION, session(1)), "s-1")
        self.assertEqual(ob.put(KIND_FAULT, {"fault": "RCD_TRIP", "raised": True}), "fault-2")
        self.assertEqual(ob.put(KIND_TELEMETRY, {"power_w": 7000}), "telemetry-3")
        self.assertEqual([r.seq for r in ob.records()], [1, 2, 3])
        self.assertEqual(len(ob), 3)

    def test_ack_removes_the_record_and_tells_the_owner_once(self):
        ob = self.outbox()
        ob.put(KIND_SESSION, session(1))
        ob.put(KIND_SESSION, session(2))
        self.assertTrue(ob.ack("s-1"))
        self.assertFalse(ob.ack("s-1"))          # a repeated ack changes nothing
        self.assertFalse(ob.ack("s-99"))
        self.assertEqual(self.acks, [(KIND_SESSION, "s-1")])
        self.assertEqual([r.id for r in ob.records()], ["s-2"])
        self.assertEqual(ob.duplicate_acks, 2)

    def test_records_survive_a_reboot_and_sequence_numbers_continue(self):
        ob = self.outbox()
        ob.put(KIND_SESSION, session(1))
        ob.put(KIND_FAULT, {"fault": "RCD_TRIP"})
        ob.put(KIND_SESSION, session(2))
        ob.ack("fault-2")
        ob = self.outbox()                       # reboot: a new Outbox on the same journal
        self.assertEqual([(r.seq, r.id) for r in ob.records()], [(1, "s-1"), (3, "s-2")])
        self.assertEqual(ob.data(ob.records()[0]), session(1))
        self.assertEqual(ob.put(KIND_FAULT, {"fault": "X"}), "fault-4")

    def test_compaction_keeps_live_records_and_the_sequence(self):
        ob = self.outbox(capacity=8)
        for i in range(1, 60):
            ob.put(KIND_SESSION, session(i))
            ob.ack("s-%d" % i)
        ob.put(KIND_SESSION, session(60))
        journal = Journal(self.store, "outbox")
        # Compacted: far fewer entries than the 119 appended.
        self.assertTrue(len(journal.replay()) < 40)
        ob = self.outbox()
        self.assertEqual([(r.seq, r.id) for r in ob.records()], [(60, "s-60")])
        self.assertEqual(ob.put(KIND_FAULT, {}), "fault-61")

    def test_compaction_with_nothing_held_keeps_the_sequence(self):
        ob = self.outbox()
        ob.put(KIND_FAULT, {})
        ob.ack("fault-1")
        ob.compact()
        self.assertEqual(self.outbox().put(KIND_FAULT, {}), "fault-2")

    def test_a_session_put_again_replaces_the_held_copy(self):
        ob = self.outbox()
        ob.put(KIND_SESSION, session(1, wh=10))
        ob.put(KIND_SESSION, session(1, wh=20))
        self.assertEqual(len(ob), 1)
        ob = self.outbox()
        self.assertEqual(ob.data(ob.records()[0])["energy_wh"], 20)

    def test_a_power_cut_while_replacing_a_session_keeps_a_copy(self):
        # Whatever moment the power fails while a held session record is replaced, the
        # next boot holds exactly one copy of it: the old or the new one.
        from tools.powercut_fs import PowerCut, PowerCutFs
        k = 1
        while True:
            fs = PowerCutFs()
            ob = Outbox(Journal(Store("/data", fs), "outbox"))
            ob.put(KIND_SESSION, session(1, wh=10))
            fs.cut_at = fs.ops + k
            try:
                ob.put(KIND_SESSION, session(1, wh=20))
                finished = True
            except PowerCut:
                finished = False
            ob = Outbox(Journal(Store("/data", fs.restart()), "outbox"))
            self.assertEqual([r.id for r in ob.records()], ["s-1"], "cut at %d" % k)
            self.assertIn(ob.records()[0].data["energy_wh"], (10, 20))
            if finished:
                self.assertEqual(ob.records()[0].data["energy_wh"], 20)
                break
            k += 1

    def test_a_power_cut_while_a_full_outbox_takes_a_session_loses_none(self):
        # The overflow victim goes only after the new record is on flash: a power cut in
        # between must not leave the outbox with neither.
        from tools.powercut_fs import PowerCut, PowerCutFs
        k = 1
        while True:
            fs = PowerCutFs()
            ob = Outbox(Journal(Store("/data", fs), "outbox"), capacity=4)
            for i in range(1, 5):
                ob.put(KIND_SESSION, session(i))
            fs.cut_at = fs.ops + k
            try:
                ob.put(KIND_SESSION, session(5))
                finished = True
            except PowerCut:
                finished = False
            ob = Outbox(Journal(Store("/data", fs.restart()), "outbox"), capacity=4)
            ids = [r.id for r in ob.records()]
            self.assertIn(ids, (["s-1", "s-2", "s-3", "s-4"], ["s-2", "s-3", "s-4", "s-5"]),
                          "cut at %d" % k)
            if finished:
                self.assertEqual(ids, ["s-2", "s-3", "s-4", "s-5"])
                break
            k += 1

    def test_bad_input_is_refused_and_changes_nothing(self):
        ob = self.outbox()
        self.assertRaises(OutboxError, ob.put, "gossip", {})
        self.assertRaises(OutboxError, ob.put, KIND_SESSION, {"energy_wh": 1})
        self.assertRaises(OutboxError, ob.put, KIND_SESSION, {"id": True})
        self.assertRaises(OutboxError, ob.put, KIND_FAULT, "not a dict")
        self.assertRaises(OutboxError, ob.put, KIND_FAULT, {"blob": "x" * 3000})
        self.assertRaises(ValueError, Outbox, Journal(self.store, "o2"), 0)
        self.assertEqual(len(ob), 0)
        self.assertEqual(len(self.outbox()), 0)

    def test_a_damaged_journal_entry_is_skipped_and_counted(self):
        ob = self.outbox()
        ob.put(KIND_SESSION, session(5))
        Journal(self.store, "outbox").append(b"{not json")
        ob = self.outbox()
        self.assertEqual(ob.corrupt_entries, 1)
        self.assertEqual([r.id for r in ob.records()], ["s-5"])

    def test_only_the_index_is_in_ram_and_data_files_follow_the_records(self):
        ob = self.outbox()
        ob.put(KIND_SESSION, session(1))
        ob.put(KIND_FAULT, {"fault": "A"})
        self.assertEqual(sorted(n for n in self.store.names() if n.startswith("outbox.")),
                         ["outbox.1", "outbox.2"])
        self.assertEqual(ob.payload(ob.records()[0]), json.dumps(session(1)).encode())
        self.assertEqual(ob.records()[0].data, session(1))     # read from flash on use
        ob.ack("s-1")
        self.assertEqual([n for n in self.store.names() if n.startswith("outbox.")],
                         ["outbox.2"])

    def test_a_record_whose_data_is_lost_is_dropped_and_counted(self):
        ob = self.outbox()
        ob.put(KIND_SESSION, session(1))
        ob.put(KIND_SESSION, session(2))
        self.store.remove("outbox.1")              # flash damage / a lost file
        ob = self.outbox()
        self.assertEqual([r.id for r in ob.records()], ["s-2"])
        self.assertEqual(ob.corrupt_entries, 1)
        self.store.remove("outbox.2")
        self.assertIsNone(ob.payload(ob.records()[0]))
        self.assertEqual(len(ob), 0)
        self.assertEqual(ob.corrupt_entries, 2)

    def test_a_crash_between_data_and_index_leaves_no_orphan(self):
        self.store.write_atomic("outbox.7", b'{"id": "s-7"}')   # data written, no put
        self.store.write_atomic("outbox.keep", b"x")             # not an outbox data file
        ob = self.outbox()
        self.assertEqual(len(ob), 0)
        self.assertEqual(sorted(n for n in self.store.names() if n.startswith("outbox.")),
                         ["outbox.keep"])


class OverflowPolicy(OutboxCase):
    def test_telemetry_goes_first_then_faults_and_sessions_are_kept(self):
        ob = self.outbox(capacity=4)
        ob.put(KIND_TELEMETRY, {"power_w": 1})    # telemetry-1
        ob.put(KIND_FAULT, {"fault": "A"})        # fault-2
        ob.put(KIND_TELEMETRY, {"power_w": 2})    # telemetry-3
        ob.put(KIND_SESSION, session(1))
        self.assertFalse(ob.overflow_active)
        ob.put(KIND_SESSION, session(2))          # drops telemetry-1
        ob.put(KIND_FAULT, {"fault": "B"})        # drops telemetry-3
        ob.put(KIND_SESSION, session(3))          # drops fault-2 (oldest fault)
        self.assertEqual(self.drops, [(KIND_TELEMETRY, "telemetry-1"),
                                      (KIND_TELEMETRY, "telemetry-3"), (KIND_FAULT, "fault-2")])
        self.assertEqual(sorted(r.id for r in ob.records()), ["fault-6", "s-1", "s-2", "s-3"])
        self.assertTrue(ob.overflow_active)
        self.assertEqual(ob.overflow, 3)
        self.assertEqual(FAULT_OUTBOX_OVERFLOW, "OUTBOX_OVERFLOW")

    def test_a_new_lower_ranked_record_is_the_one_dropped(self):
        ob = self.outbox(capacity=2)
        ob.put(KIND_SESSION, session(1))
        ob.put(KIND_SESSION, session(2))
        ob.put(KIND_TELEMETRY, {"power_w": 5})
        ob.put(KIND_FAULT, {"fault": "A"})
        self.assertEqual([r.id for r in ob.records()], ["s-1", "s-2"])
        self.assertEqual(ob.stats()["dropped_telemetry"], 1)
        self.assertEqual(ob.stats()["dropped_fault"], 1)

    def test_sessions_beyond_the_hard_cap_drop_the_oldest_session(self):
        ob = self.outbox(capacity=3)
        for i in range(1, 6):
            ob.put(KIND_SESSION, session(i))
        self.assertEqual([r.id for r in ob.records()], ["s-3", "s-4", "s-5"])
        self.assertEqual(ob.stats()["dropped_session"], 2)
        self.assertEqual([r.id for r in self.outbox(capacity=3).records()], ["s-3", "s-4", "s-5"])

    def test_clear_overflow_after_reporting(self):
        ob = self.outbox(capacity=1)
        ob.put(KIND_TELEMETRY, {})
        ob.put(KIND_TELEMETRY, {})
        self.assertTrue(ob.overflow_active)
        ob.clear_overflow()
        self.assertFalse(ob.overflow_active)
        self.assertEqual(ob.overflow, 1)

    def test_a_lowered_capacity_applies_the_policy_at_boot(self):
        ob = self.outbox(capacity=5)
        ob.put(KIND_TELEMETRY, {})
        ob.put(KIND_SESSION, session(1))
        ob.put(KIND_SESSION, session(2))
        ob = self.outbox(capacity=2)
        self.assertEqual([r.id for r in ob.records()], ["s-1", "s-2"])


class SendingIsPaced(OutboxCase):
    def test_window_limits_records_in_flight_and_resends_keep_the_id(self):
        ob = self.outbox(window=2, resend_ms=30000)
        for i in range(1, 5):
            ob.put(KIND_SESSION, session(i))
        t = 1000
        sent = []
        for _ in range(10):
            r = ob.due(t)
            if r is None:
                break
            ob.sent(r, t)
            sent.append((r.id, r.seq))
        self.assertEqual(sent, [("s-1", 1), ("s-2", 2)])
        ob.ack("s-1")
        r = ob.due(t)
        self.assertEqual(r.id, "s-3")
        ob.sent(r, t)
        self.assertIsNone(ob.due(ticks_add(t, 29999)))
        r = ob.due(ticks_add(t, 30000))            # unacked for resend_ms: same record again
        self.assertEqual((r.id, r.seq), ("s-2", 2))
        ob.sent(r, ticks_add(t, 30000))
        self.assertEqual(ob.resends, 1)

    def test_a_dropped_connection_sends_everything_again(self):
        ob = self.outbox(window=4)
        ob.put(KIND_SESSION, session(1))
        r = ob.due(0)
        ob.sent(r, 0)
        self.assertIsNone(ob.due(1))
        ob.unsend_all()
        self.assertEqual(ob.due(2).id, "s-1")

    def test_pacing_across_the_tick_wrap(self):
        ob = self.outbox(window=1, resend_ms=1000)
        ob.put(KIND_FAULT, {})
        t = ticks_add(0, -500)
        ob.sent(ob.due(t), t)
        self.assertIsNone(ob.due(ticks_add(t, 999)))
        self.assertIsNotNone(ob.due(ticks_add(t, 1000)))

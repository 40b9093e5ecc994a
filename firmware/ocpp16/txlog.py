"""The transaction log: StartTransaction, MeterValues and StopTransaction, kept on flash until
the central system has confirmed them, and delivered in order, one at a time.

As in MicroOcpp, the log stores references and readings, not messages: an entry names the
station's transaction number (`nr`, ours) and what was measured; the message is rendered at
send time, with the transactionId the central system assigned to `nr` (StartTransaction.conf)
filled in then. So nothing stored ever has to be patched, and a transaction started offline
is sent with its id once the Start has been confirmed.

Journal entries (JSON arrays, one record each; firmware/storage.py makes every append atomic):
    ["S", nr, idTag, meterStart_Wh, t]                      StartTransaction
    ["M", nr, t, Wh, W, [mA L1, L2, L3], [dV L1, L2, L3]]   MeterValues (Sample.Periodic)
    ["M", nr, t, Wh, W, [mA ...], [dV ...], "C"]            MeterValues (Sample.Clock)
    ["T", nr, idTag, meterStop_Wh, t, reason]               StopTransaction
    ["D", nr, transactionId or null]                        the oldest pending one confirmed
    ["I", nr, transactionId]                                (compaction) an id still needed
    ["R", nr, idTag, meterStart_Wh, t, last_Wh, transactionId]  (compaction) the running one
t: seconds since 1970 (UTC). A reset between a send and its "D" sends that message again
(at least once; the central system recognises it by its content). A transaction found
running at boot was cut by a reset: the backend stops it with reason PowerLoss.
"""
import json

from firmware.compat import const
from firmware.storage import Journal

FILE = "ocpp_tx.jnl"
_COMPACT_BYTES = const(16384)     # compact a log this big even while messages are pending


class TxLog:
    def __init__(self, store, capacity=200):
        self.journal = Journal(store, FILE)
        self.capacity = capacity      # pending messages; meter values beyond are not kept
        self.total = 0                # message entries (S/M/T) in the journal
        self.done = 0                 # of those, confirmed ("D")
        self.ids = {}                 # nr -> transactionId, while still needed
        self.running = None           # [nr, idTag, meterStart, t, last_Wh]
        self.next_nr = 1
        self.dropped_meter = 0
        self._head = None
        self._load()

    def _load(self):
        for raw in self.journal.records():
            try:
                e = json.loads(raw)
                k = e[0]
                nr = e[1]
            except (ValueError, IndexError, TypeError):
                continue
            if nr >= self.next_nr:
                self.next_nr = nr + 1
            if k == "S" or k == "M" or k == "T":
                self.total += 1
                r = self.running
                if k == "S":
                    self.running = [nr, e[2], e[3], e[4], e[3]]
                elif r is not None and r[0] == nr:
                    if k == "M" and e[3] is not None:
                        r[4] = e[3]
                    elif k == "T":
                        self.running = None
            elif k == "D":
                self.done += 1
                if e[2] is not None:
                    self.ids[nr] = e[2]
            elif k == "I":
                self.ids[nr] = e[2]
            elif k == "R":
                self.running = [nr, e[2], e[3], e[4], e[5]]
                if e[6] is not None:
                    self.ids[nr] = e[6]

    # -- writing -----------------------------------------------------------------------------
    def _append(self, entry):
        self.journal.append(json.dumps(entry).encode())
        self.total += 1

    def pending(self):
        return self.total - self.done

    def start(self, id_tag, wh, t):
        nr = self.next_nr
        self._append(["S", nr, id_tag, wh, t])
        self.next_nr = nr + 1
        self.running = [nr, id_tag, wh, t, wh]
        return nr

    def meter(self, t, wh, w, ma, dv, context=None):
        """A sample of the running transaction; False when the log is full (not kept).
        context "C": clock-aligned (ClockAlignedDataInterval)."""
        r = self.running
        if r is None:
            return False
        if self.pending() >= self.capacity - 4:      # room kept for the Stop
            self.dropped_meter += 1
            return False
        e = ["M", r[0], t, wh, w, ma, dv]
        if context is not None:
            e.append(context)
        self._append(e)
        if wh is not None:
            r[4] = wh
        return True

    def stop(self, wh, t, reason):
        r = self.running
        if r is None:
            return None
        if wh is None or wh < r[4]:
            wh = r[4]
        self._append(["T", r[0], r[1], wh, t, reason])
        self.running = None
        return r[0]

    # -- delivery ----------------------------------------------------------------------------
    def head(self):
        """The oldest message not yet confirmed (its entry), or None."""
        if self._head is None and self.done < self.total:
            n = 0
            for raw in self.journal.records():
                if raw[2:3] in (b"S", b"M", b"T"):
                    if n == self.done:
                        self._head = json.loads(raw)
                        break
                    n += 1
        return self._head

    def delivered(self, tx_id=None):
        """The head is confirmed (StartTransaction: with the id the central system gave)."""
        e = self.head()
        if e is None:
            return
        nr = e[1]
        self.journal.append(json.dumps(["D", nr, tx_id]).encode())
        self.done += 1
        self._head = None
        if tx_id is not None:
            self.ids[nr] = tx_id
        if e[0] == "T":
            self.ids.pop(nr, None)        # nothing after a Stop refers to its transaction
        if self.done == self.total or self.journal.size() > _COMPACT_BYTES:
            self._compact()

    def tx_id(self, nr):
        return self.ids.get(nr)

    def running_tx_id(self):
        r = self.running
        return None if r is None else self.ids.get(r[0])

    def _compact(self):
        keep = []
        n = 0
        for raw in self.journal.records():
            if raw[2:3] in (b"S", b"M", b"T"):
                if n >= self.done:
                    keep.append(raw)
                n += 1
        r = self.running
        head = []
        needed = set()
        for raw in keep:
            needed.add(json.loads(raw)[1])
        if r is not None:
            needed.add(r[0])
        ids = {}
        for nr in self.ids:
            if nr in needed:
                ids[nr] = self.ids[nr]
                if r is None or nr != r[0]:
                    head.append(json.dumps(["I", nr, ids[nr]]).encode())
        if r is not None and not any(json.loads(x)[0] == "S" and json.loads(x)[1] == r[0]
                                     for x in keep):
            head.append(json.dumps(["R", r[0], r[1], r[2], r[3], r[4],
                                    ids.get(r[0])]).encode())
        elif r is not None and r[0] in ids:
            head.append(json.dumps(["I", r[0], ids[r[0]]]).encode())
        self.journal.rewrite(head + keep)
        self.ids = ids
        self.total = len(keep)
        self.done = 0
        self._head = None

"""Store-and-forward of the records the backend must not miss (session records, fault events,
telemetry taken while offline).

Every record gets a sequence number and an id and is kept on flash until the backend
acknowledges the id on <prefix>/<id>/ack. It is sent (by MqttLink) and resent with the same
id, seq and data until then, so the backend de-duplicates on the id. Records survive a reboot.

Only a small index lives in RAM (seq, kind, id, send times): a session record is close to
1 KB of JSON and the ESP32 has about 100 KB of heap, so the data of each record is a file of
its own in the same Store ("<journal name>.<seq>", written atomically) and is read back
when it is sent. The index is a journal of small JSON entries, one per append:
    {"o":"p","s":seq,"k":kind,"i":id}   put (the data file is written first)
    {"o":"a","s":seq}                   acknowledged by the backend
    {"o":"x","s":seq}                   dropped (overflow policy, replaced, data lost)
    {"o":"n","s":next_seq}              first entry after a compaction
At boot the journal is replayed; a put whose data file is missing is dropped (counted in
corrupt_entries) and data files without a live put (a crash between the two writes) are
removed (counted in orphans_removed: the station reports both as storage damage). A replaced record is dropped only after its new copy is on flash; of two copies
left by a power cut in between, the newer is kept. Compaction rewrites the index when it
holds many dead entries.

Overflow policy (capacity = records held): a new record that does not fit first drops the
oldest telemetry record, then the oldest fault event; session records (billing) are only
dropped when every held record is a session record, oldest first. A new telemetry record is
dropped itself rather than displace a fault or session record; a new fault record is dropped
rather than displace a session record. Every drop counts in `overflow` and sets
`overflow_active` (the station raises fault FAULT_OUTBOX_OVERFLOW while it is set).

Sending is paced: at most `window` records are in flight (sent, not yet acked) and a record
is resent only after `resend_ms` without an ack, so a reconnect does not flood the link.
"""
import json
from firmware.compat import ticks_diff

FAULT_OUTBOX_OVERFLOW = "OUTBOX_OVERFLOW"

KIND_TELEMETRY = "telemetry"
KIND_FAULT = "fault"
KIND_SESSION = "session"
KIND_SESSION_START = "session_start"   # a session's start (id "start-<session id>")
# Lower value = dropped first on overflow. A start record goes before any end record:
# the end record carries everything the start did.
_RANK = {KIND_TELEMETRY: 0, KIND_FAULT: 1, KIND_SESSION_START: 2, KIND_SESSION: 3}
KINDS = (KIND_TELEMETRY, KIND_FAULT, KIND_SESSION, KIND_SESSION_START)

MAX_RECORD_BYTES = 2048


class OutboxError(ValueError):
    pass


class Record:
    """One held record: its index entry. `data` reads the data from flash on each use.
    `sent_ms` is None until sent on the current connection."""

    def __init__(self, outbox, seq, kind, record_id):
        self._outbox = outbox
        self.seq = seq
        self.kind = kind
        self.id = record_id
        self.sent_ms = None
        self.sends = 0

    @property
    def data(self):
        return self._outbox.data(self)


class Outbox:
    """Persistent, bounded, acknowledged queue of records.

    journal: firmware/storage.py's Journal (append, replay, rewrite); the record data
      files go into its Store (journal.store: write_atomic, read, remove, exists, names).
    on_ack(kind, id): called once when the backend acknowledges a record.
    on_overflow(kind, id): called when the overflow policy drops a record.
    """

    def __init__(self, journal, capacity=64, window=4, resend_ms=60000,
                 on_ack=None, on_overflow=None):
        if capacity < 1 or window < 1 or resend_ms < 1:
            raise OutboxError("outbox: capacity, window and resend_ms must be positive")
        self.journal = journal
        self.store = journal.store
        self._prefix = journal.name + "."
        self.capacity = capacity
        self.window = window
        self.resend_ms = resend_ms
        self.on_ack = on_ack
        self.on_overflow = on_overflow
        self._records = []          # oldest first (ascending seq)
        self._next_seq = 1
        self._entries = 0           # journal entries since the last compaction
        self.put_count = 0
        self.acked = 0
        self.sends = 0
        self.resends = 0
        self.duplicate_acks = 0
        self.overflow = 0
        self.dropped = {KIND_TELEMETRY: 0, KIND_FAULT: 0, KIND_SESSION: 0,
                        KIND_SESSION_START: 0}
        self.overflow_active = False
        self.corrupt_entries = 0
        self.orphans_removed = 0    # data files without an index entry, removed at boot
        self._replay()

    # -- persistence ---------------------------------------------------------------------
    def _file(self, seq):
        return "%s%d" % (self._prefix, seq)

    def _replay(self):
        by_seq = {}
        next_seq = 1
        entries = self.journal.replay()
        for raw in entries:
            try:
                e = json.loads(raw)
                op = e["o"]
                seq = e["s"]
            except (ValueError, KeyError, TypeError):
                self.corrupt_entries += 1
                continue
            if op == "p":
                try:
                    by_seq[seq] = Record(self, seq, e["k"], e["i"])
                except KeyError:
                    self.corrupt_entries += 1
                    continue
                if seq >= next_seq:
                    next_seq = seq + 1
            elif op == "a" or op == "x":
                by_seq.pop(seq, None)
            elif op == "n":
                if seq > next_seq:
                    next_seq = seq
        self._records = [by_seq[s] for s in sorted(by_seq)]
        self._next_seq = next_seq
        self._entries = len(entries)
        for r in list(self._records):
            if not self.store.exists(self._file(r.seq)):
                self.corrupt_entries += 1
                self._forget(r)
        # A replacement cut off before the old copy was dropped: the newer copy stands.
        newest = {}
        for r in self._records:
            newest[(r.kind, r.id)] = r
        for r in list(self._records):
            if newest[(r.kind, r.id)] is not r:
                self._forget(r)
        self._remove_orphans()
        # A capacity lowered by config since the records were written: apply the policy now.
        while len(self._records) > self.capacity:
            self._drop(self._victim(None))

    def _remove_orphans(self):
        live = {}
        for r in self._records:
            live[self._file(r.seq)] = True
        n = len(self._prefix)
        for name in self.store.names():
            if name.startswith(self._prefix) and name[n:].isdigit() and name not in live:
                # A put cut between its data file and its index entry, or an index that
                # lost entries to damage: counted (diagnostics, STORAGE_ERROR), not silent.
                self.orphans_removed += 1
                self.store.remove(name)

    def _forget(self, record):
        # Out of the index first (journal), then the data: a crash in between leaves an
        # orphan file, removed at the next boot, never an index entry without data.
        self._records.remove(record)
        self._append({"o": "x", "s": record.seq})
        self.store.remove(self._file(record.seq))

    def _append(self, entry):
        self.journal.append(json.dumps(entry).encode())
        self._entries += 1

    def compact(self):
        """Rewrite the index with only the live records (and the next sequence number)."""
        payloads = [json.dumps({"o": "n", "s": self._next_seq}).encode()]
        for r in self._records:
            payloads.append(json.dumps({"o": "p", "s": r.seq, "k": r.kind, "i": r.id}).encode())
        self.journal.rewrite(payloads)
        self._entries = len(payloads)

    def _maybe_compact(self):
        if self._entries > 2 * len(self._records) + 32:
            self.compact()

    # -- producers --------------------------------------------------------------------------
    def put(self, kind, data):
        """Hold `data` (a JSON-able dict) until acknowledged; returns the record id.
        Session records use their own "id" field (what billing de-duplicates on), session
        start records "start-<id>"; other kinds get "<kind>-<seq>". A put with the id of a
        held record replaces it."""
        if kind not in _RANK:
            raise OutboxError("outbox: unknown kind %s" % kind)
        if not isinstance(data, dict):
            raise OutboxError("outbox: record must be a dict")
        seq = self._next_seq
        if kind == KIND_SESSION or kind == KIND_SESSION_START:
            record_id = data.get("id")
            if record_id is None or record_id is True or record_id is False or \
                    not isinstance(record_id, (str, int)):
                raise OutboxError("outbox: session record needs an id")
            if kind == KIND_SESSION_START:
                record_id = "start-%s" % record_id
        else:
            record_id = "%s-%d" % (kind, seq)
        # Length and CRC first, then streamed to the file: no block of the record's size
        # (Store.write_json; docs/performance.md, Heap).
        summed = self.store.json_sum(data)
        if summed[0] > MAX_RECORD_BYTES:
            raise OutboxError("outbox: record too large (%d > %d bytes)"
                              % (summed[0], MAX_RECORD_BYTES))
        old = None
        start = None
        for r in self._records:
            if r.id == record_id and r.kind == kind:
                old = r
            elif kind == KIND_SESSION and r.kind == KIND_SESSION_START \
                    and r.id == "start-%s" % record_id:
                start = r
        if old is None and start is not None:
            # The end record carries everything its start record did: it takes the start's
            # place (not an overflow), so a session never holds two places.
            old = start
        victim = None
        if old is None and len(self._records) >= self.capacity:
            victim = self._victim(kind)
            if victim is None:
                # The new record ranks lowest: it is the one dropped.
                self._next_seq = seq + 1
                self._count_drop(kind, record_id)
                return record_id
        self._next_seq = seq + 1
        self.store.write_json(self._file(seq), data, summed)
        self._append({"o": "p", "s": seq, "k": kind, "i": record_id})
        self._records.append(Record(self, seq, kind, record_id))
        self.put_count += 1
        if old is not None:
            # The new copy is on flash before the old one goes: a power cut in between
            # leaves both, and the replay keeps the newer.
            self._forget(old)
        if victim is not None:
            # Likewise the overflow victim: a power cut before it is dropped leaves one
            # record over capacity, which the replay drops by the same policy.
            self._drop(victim)
        self._maybe_compact()
        return record_id

    def _victim(self, new_kind):
        # The oldest record of the lowest rank held; None when the new record ranks lower.
        best = None
        for r in self._records:
            if best is None or _RANK[r.kind] < _RANK[best.kind]:
                best = r
        if best is None:
            return None
        if new_kind is not None and _RANK[new_kind] < _RANK[best.kind]:
            return None
        return best

    def _drop(self, record):
        self._forget(record)
        self._count_drop(record.kind, record.id)

    def _count_drop(self, kind, record_id):
        self.overflow += 1
        self.dropped[kind] += 1
        self.overflow_active = True
        if self.on_overflow is not None:
            self.on_overflow(kind, record_id)

    def clear_overflow(self):
        """The station has reported the overflow; clears overflow_active."""
        self.overflow_active = False

    # -- backend acknowledgement ---------------------------------------------------------------
    def ack(self, record_id):
        """The backend has stored `record_id`. Returns True when it was held (a repeated or
        unknown ack returns False and changes nothing)."""
        for r in self._records:
            if r.id == record_id:
                self._records.remove(r)
                self._append({"o": "a", "s": r.seq})
                self.store.remove(self._file(r.seq))
                self.acked += 1
                if self.on_ack is not None:
                    self.on_ack(r.kind, r.id)
                self._maybe_compact()
                return True
        self.duplicate_acks += 1
        return False

    # -- sending (MqttLink) ----------------------------------------------------------------------
    def due(self, now_ms):
        """The next record to send now, or None (window full, nothing due)."""
        in_flight = 0
        for r in self._records:
            if r.sent_ms is not None and ticks_diff(now_ms, r.sent_ms) < self.resend_ms:
                in_flight += 1
        if in_flight >= self.window:
            return None
        for r in self._records:
            if r.sent_ms is None or ticks_diff(now_ms, r.sent_ms) >= self.resend_ms:
                return r
        return None

    def payload(self, record, view=False):
        """The record's data as stored (UTF-8 JSON bytes; view=True: a memoryview of them,
        firmware.storage.Store.read). A record whose data cannot be read (flash damage) is
        dropped and counted in corrupt_entries; returns None."""
        try:
            data = self.store.read(self._file(record.seq), view)
        except OSError:
            data = None
        if data is None and record in self._records:
            self.corrupt_entries += 1
            self._forget(record)
        return data

    def data(self, record):
        """The record's data as a dict (None when it cannot be read)."""
        raw = self.payload(record)
        return None if raw is None else json.loads(raw)

    def sent(self, record, now_ms):
        """`record` has been written to the broker at now_ms."""
        if record.sends:
            self.resends += 1
        record.sends += 1
        record.sent_ms = now_ms
        self.sends += 1

    def unsend_all(self):
        """The connection dropped: whatever was in flight is sent again (same id) on the
        next connection."""
        for r in self._records:
            r.sent_ms = None

    # -- inspection ------------------------------------------------------------------------------
    def __len__(self):
        return len(self._records)

    def records(self):
        return list(self._records)

    def pending(self, kind=None):
        if kind is None:
            return len(self._records)
        n = 0
        for r in self._records:
            if r.kind == kind:
                n += 1
        return n

    def stats(self):
        return {"pending": len(self._records), "put": self.put_count, "acked": self.acked,
                "sends": self.sends, "resends": self.resends, "overflow": self.overflow,
                "dropped_telemetry": self.dropped[KIND_TELEMETRY],
                "dropped_fault": self.dropped[KIND_FAULT],
                "dropped_session": self.dropped[KIND_SESSION],
                "dropped_session_start": self.dropped[KIND_SESSION_START],
                "duplicate_acks": self.duplicate_acks, "corrupt_entries": self.corrupt_entries,
                "orphans_removed": self.orphans_removed,
                "journal_damaged_bytes": getattr(self.journal, "damaged_bytes_total", 0),
                "journal_cut_failures": getattr(self.journal, "cut_failures", 0)}

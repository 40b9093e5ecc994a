"""Exactly-once commands: the correlation ids the station has executed, with their replies.

A backend (or a broker redelivering a QoS 1 command after a lost PUBACK) may send a command
again with the same correlation id. The dispatcher looks the id up here first: a command
already executed is not executed again, and its first reply is sent again (docs/mqtt.md,
"Exactly once").

The window is the last SIZE commands executed: a fixed ring of (id, encoded reply). A reply
longer than KEEP_BYTES is kept without its `data` (only get_config and diagnostics answer
with much data, and they are not recorded: they change nothing and are answered afresh).
RAM: at most SIZE x (id + KEEP_BYTES), about 4 KB, typically 2 KB.

The ring is written to flash (`commands.done`, atomically) after the command ran and
before its reply and its PUBACK go out: a reset between the execution and the PUBACK makes
the broker deliver the command again after the reboot, and the ring read back at boot
answers it instead of running it twice (a second `reboot` would be a reboot loop). A reset
in the few instructions between the execution and this write can still let it run twice.
"""
import json

SIZE = 16
KEEP_BYTES = 256
FILE = "commands.done"


class Ledger:
    """store: firmware.storage.Store or None (RAM only)."""

    def __init__(self, store=None, name=FILE):
        self.store = store
        self.name = name
        self._ids = [None] * SIZE
        self._replies = [None] * SIZE
        self._next = 0
        self.error = None           # the last storage problem (the ring still works in RAM)
        self.duplicates = 0
        if store is not None:
            self._load()

    def _load(self):
        try:
            raw = self.store.read(self.name)
            if raw is None:
                return
            entries = json.loads(raw)
            for corr_id, reply in entries[-SIZE:]:
                self._put(corr_id, reply.encode() if isinstance(reply, str) else reply)
        except Exception as e:      # a damaged ring is an empty ring, never a failed boot
            self.error = "%s: %s" % (self.name, e.args[0] if e.args else type(e).__name__)

    def find(self, corr_id):
        """The reply (bytes) recorded for `corr_id`, or None when it is not in the window.
        An integer id and its string form are different ids (as the backend sent them)."""
        for i in range(SIZE):
            k = self._ids[i]
            if k is not None and k == corr_id and type(k) is type(corr_id):
                self.duplicates += 1
                return self._replies[i]
        return None

    def _put(self, corr_id, reply):
        self._ids[self._next] = corr_id
        self._replies[self._next] = reply
        self._next = (self._next + 1) % SIZE

    def add(self, corr_id, reply):
        """Record an executed command and its reply (bytes, JSON). Returns None, or the
        storage error text when the ring could not be written (it is kept in RAM)."""
        self._put(corr_id, reply)
        if self.store is None:
            return None
        entries = []
        for n in range(SIZE):
            i = (self._next + n) % SIZE
            if self._ids[i] is not None:
                entries.append([self._ids[i], bytes(self._replies[i]).decode()])
        try:
            self.store.write_atomic(self.name, json.dumps(entries).encode())
            return None
        except Exception as e:      # StorageError: the command ran; the reply still goes out
            self.error = e.args[0] if e.args else type(e).__name__
            return self.error

    def __len__(self):
        return sum(1 for k in self._ids if k is not None)

"""Lifetime counters of the station, kept across resets with few flash writes.

Counted: boots, sessions, energy_wh delivered in sessions, contactor_cycles (one per opening),
contactor_cycles_under_load (opened while the EV drew at least `load_threshold_w`: these wear
the contacts), and faults per name.

The energy ledger: `unbilled_wh` counts the meter's register advance that belongs to no
session (gaps around a session whose start or end is estimated, energy after a power cut
the meter could not tell, anything while no session runs), and `ledger_wh` is the import
register up to which the finished records plus `unbilled_wh` account (None until the first
reading). Over any period: sum of the records' energy_wh + the rise of unbilled_wh = the
meter's register difference, except at a discontinuity (reset, swap), which loses at most
one poll interval (docs/sessions.md, "Energy ledger"). The session manager keeps both.

Flash wear: the file is replaced (Store.write_atomic) only
  - at boot (the boot number must be on flash before any session uses it as its id; it
    also goes into BOOT_FILE, so that a damaged counters file cannot bring it back),
  - at the end of a session (session_ended),
  - from tick() when something changed and at least `counters_save_s` passed since the
    last write (default once a minute; never per control tick).
A reset loses at most the contactor and fault counts of that last interval; session counts
and energy are written with the session.

A failed write (flash full, worn or read-only) keeps the counts pending and is retried from
tick() after RETRY_MIN_MS, doubling per failure up to RETRY_MAX_MS, not at every loop
iteration: each failure is a STORAGE_ERROR fault record, and retrying every 10 ms once made
over a thousand flash writes in 12 s. A successful write ends the back-off.

Each session is counted exactly once, whatever the order of writes, power cuts and replays:
  - a session is counted only once its record is on flash (the journal), and the count is
    one atomic write of the whole file;
  - the file says which ids are counted: every id up to `last_session` (the highest id
    counted; ids "<boot>-<seq>" order by boot, then seq) except those listed in
    `uncounted`. A session finishes out of id order only when an older one is still open
    (its journal write failed and is retried, or it was cut by a reset and waits for
    recover()); the caller names those open ids, and counting a newer session lists them
    in `uncounted` in the same write, until they are counted in turn;
  - at boot every finished record in the journal that this says is not counted is counted
    (the session manager replays them in id order).
An earlier design kept only the last id counted and replayed only the journal's last record:
a session journaled after a newer one (a retried write) moved `last_session` back, and once
the backend's acknowledgements compacted the older record away, the newer one was taken
for uncounted and counted a second time at the next boot.
"""
import json

from firmware.compat import ticks_add, ticks_diff
from firmware.storage import StorageError

FILE = "counters.json"
BOOT_FILE = "boot.num"        # a second copy of the boot number (see boot())
_MAX_FAULT_NAMES = 32         # distinct names kept; further names count under "other"
_MAX_UNCOUNTED = 8            # open sessions older than the newest counted one (see above)
RETRY_MIN_MS = 1000           # first retry after a failed write ...
RETRY_MAX_MS = 600000         # ... doubling per failure up to 10 minutes
_FIELDS = ("boots", "sessions", "energy_wh", "contactor_cycles", "contactor_cycles_under_load",
           "unbilled_wh")


def session_key(session_id):
    """ "boot-seq" -> (boot, seq) for ordering; unknown shapes (and None) sort first."""
    try:
        boot, seq = session_id.split("-")
        return int(boot), int(seq)
    except (AttributeError, ValueError):
        return (-1, -1)


def _is_count(v):
    # A stored true is not 1 (isinstance(True, int) differs between CPython and MicroPython).
    return isinstance(v, int) and v is not True and v is not False and v >= 0


class Counters:
    def __init__(self, store, save_interval_s=60, load_threshold_w=100):
        self.store = store
        self.save_interval_ms = save_interval_s * 1000
        self.load_threshold_w = load_threshold_w
        self.boots = 0
        self.sessions = 0
        self.energy_wh = 0
        self.contactor_cycles = 0
        self.contactor_cycles_under_load = 0
        self.unbilled_wh = 0
        self.ledger_wh = None    # import register the records and unbilled_wh account up to
        self.ledger_serial = None  # the serial number of the meter showing it, when known
        self.faults = {}
        self.last_session = None   # the highest session id counted
        self.uncounted = []        # ids below last_session not counted yet (open sessions)
        self.error = None        # why the stored counters could not be read, if so
        self.writes = 0          # flash writes made by this instance
        self.failures = 0        # failed writes in a row (0 once a write succeeds)
        self._dirty = False
        self._saved_ms = None
        self._retry_at = None    # after a failed write: no retry from tick() before this
        self._failed = False
        self._load()

    @classmethod
    def from_config(cls, cfg, store):
        return cls(store, cfg["counters_save_s"], cfg["contactor_load_threshold_w"])

    def _load(self):
        try:
            raw = self.store.read(FILE)
            if raw is None:
                return
            d = json.loads(raw)
            for k in _FIELDS:
                v = d.get(k, 0)
                if _is_count(v):
                    setattr(self, k, v)
            faults = d.get("faults", {})
            if isinstance(faults, dict):
                self.faults = {k: v for k, v in faults.items() if _is_count(v) and v > 0}
            last = d.get("last_session")
            if isinstance(last, str):
                self.last_session = last
            unc = d.get("uncounted")
            if isinstance(unc, list):
                self.uncounted = [u for u in unc if isinstance(u, str)][-_MAX_UNCOUNTED:]
            ledger = d.get("ledger_wh")
            if _is_count(ledger):
                self.ledger_wh = ledger
            serial = d.get("ledger_serial")
            if _is_count(serial):
                self.ledger_serial = serial
        except (StorageError, ValueError) as e:
            # Start again from zero rather than refuse to run; the reason stays visible.
            self.error = "counters: %s" % (e.args[0] if e.args else e)
        try:
            raw = self.store.read(BOOT_FILE)
            if raw is not None:
                n = int(raw)
                if n > self.boots:
                    self.boots = n
        except (StorageError, ValueError):
            pass

    def values(self):
        d = {k: getattr(self, k) for k in _FIELDS}
        d["faults"] = dict(self.faults)
        d["last_session"] = self.last_session
        d["ledger_wh"] = self.ledger_wh
        d["ledger_serial"] = self.ledger_serial
        return d

    def save(self, now_ms=None):
        try:
            d = self.values()
            if self.uncounted:
                d["uncounted"] = self.uncounted    # on flash only while there are any
            self.store.write_atomic(FILE, json.dumps(d).encode())
        except StorageError:
            self.failures += 1
            self._dirty = True
            self._failed = True
            self._retry_at = None if now_ms is None else ticks_add(now_ms, self.retry_ms())
            raise
        self.writes += 1
        self.failures = 0
        self._failed = False
        self._retry_at = None
        self._dirty = False
        self._saved_ms = now_ms

    def retry_ms(self):
        """The wait after the current run of failed writes."""
        if not self.failures:
            return 0
        shift = self.failures - 1
        if shift > 20:
            return RETRY_MAX_MS
        return min(RETRY_MIN_MS << shift, RETRY_MAX_MS)

    # -- events --------------------------------------------------------------------------
    def boot(self, now_ms=None):
        """Count this boot and write it at once. Returns the boot number (1, 2, ...).
        Session ids are "<boot>-<seq>" and the backend de-duplicates on them, so a boot
        number must never come back: it is also kept in a file of its own, written first,
        and the higher of the two copies counts (a damaged counters file restarts the
        statistics, not the boot numbers)."""
        self.boots += 1
        self.store.write_atomic(BOOT_FILE, str(self.boots).encode())
        self.save(now_ms)
        return self.boots

    def counted(self, session_id):
        """True when session `session_id` is already in the counts (see the module doc)."""
        if session_id in self.uncounted:
            return False
        return session_key(session_id) <= session_key(self.last_session) \
            and self.last_session is not None

    def session_ended(self, session_id, energy_wh, now_ms=None, ledger_wh=None, open_ids=(),
                      save=True):
        """Count a finished session, whose record is on flash, once per id, and write the
        counters (`save`; else the caller writes them soon: firmware/session.py, one flash
        write per loop iteration). `ledger_wh`: the register its record accounts up to
        (None: no register, the ledger stays); only the newest session counted moves the
        ledger. `open_ids`: sessions started before this one that are not finished on flash
        yet (their turn comes later). Returns False when the id was counted already."""
        if self.counted(session_id):
            return False
        self.sessions += 1
        if energy_wh:
            self.energy_wh += energy_wh
        key = session_key(session_id)
        if session_id in self.uncounted:
            # An older session counted late: the ledger already stands at a newer record.
            self.uncounted.remove(session_id)
        else:
            low = session_key(self.last_session)
            for sid in open_ids:
                if low < session_key(sid) < key and sid not in self.uncounted:
                    self.uncounted.append(sid)
            # Bounded: an open id lost for good (its checkpoint destroyed too) must not
            # grow the file; dropping the oldest can under-count, never double count.
            while len(self.uncounted) > _MAX_UNCOUNTED:
                self.uncounted.pop(0)
            self.last_session = session_id
            if ledger_wh is not None:
                self.ledger_wh = ledger_wh
        self._dirty = True
        if save:
            self.save(now_ms)
        return True

    def unbilled(self, delta_wh, ledger_wh):
        """Register advance `delta_wh` (>= 0) that no session is billed for; the ledger is
        now at `ledger_wh`. Written with the next counters write."""
        if delta_wh:
            self.unbilled_wh += delta_wh
            self._dirty = True
        if ledger_wh != self.ledger_wh:
            self.ledger_wh = ledger_wh
            self._dirty = True

    def meter_serial(self, serial):
        """The meter's serial number changed (or was first read): kept with the ledger,
        so a boot can tell a meter exchanged while the station was off."""
        if serial != self.ledger_serial:
            self.ledger_serial = serial
            self._dirty = True

    @property
    def dirty(self):
        return self._dirty

    def contactor_opened(self, power_w):
        """One contactor cycle ends; `power_w` is the last valid power (None = unknown)."""
        self.contactor_cycles += 1
        if power_w is not None and power_w >= self.load_threshold_w:
            self.contactor_cycles_under_load += 1
        self._dirty = True

    def fault(self, name):
        if name not in self.faults and len(self.faults) >= _MAX_FAULT_NAMES:
            name = "other"
        self.faults[name] = self.faults.get(name, 0) + 1
        self._dirty = True

    def tick(self, now_ms):
        """Write pending changes when the interval since the last write has passed."""
        if not self._dirty:
            return False
        if self._failed:
            if self._retry_at is None:
                # Failed where no time was known (at boot, a session counted on replay).
                self._retry_at = ticks_add(now_ms, self.retry_ms())
            if ticks_diff(now_ms, self._retry_at) < 0:
                return False
        elif self._saved_ms is not None and ticks_diff(now_ms, self._saved_ms) < self.save_interval_ms:
            return False
        self.save(now_ms)
        return True

"""The safety state that outlives any reset: the latched faults and the backend limit.

A reset, whatever its cause (a backend `reboot`, the watchdog, a crash in the loop, a power
cut), must not clear what the fault table says only an unplug or a person clears (a
residual-current trip, a diode fault, a welded contactor), nor forget a current limit the
backend set "until changed". One small record holds both:

    {"v": 1, "latched": ["RCD_TRIPPED", "CONTACTOR_WELDED"], "present": ["CONTACTOR_WELDED"],
     "limit_ma": 8000, "limit_left_ms": 600000, "limit_until": 1767600600}

  latched        the active faults whose clearing is UNPLUG or MANUAL (firmware/faults.py
                 LATCHED_MASK), by name: a latched UNPLUG fault is itself the fact that the
                 EV has not been unplugged since the trip (unplugging with the cause gone
                 clears it), CONTACTOR_WELDED the fact that the contacts welded.
  present        those of them whose cause was present when written (the contacts still
                 welded, the trip line still active): a clear request is refused for them
                 after the reset as before it, until a check reads the cause gone.
  limit_ma       the backend limit in force, -1 for none.
  limit_left_ms  its remaining time when the record was written, null = until changed.
  limit_until    its expiry in wall seconds (UTC), when the clock was set at that moment.

Written with Store.write_atomic (header + CRC-32, temporary copy + rename), so a power cut
leaves the old or the new record, never a mix. Wear: written only when a latch or the limit
changes (and the remaining time once at a commanded reboot), never per tick: `due()`
compares two small ints and allocates nothing, so the station may ask after every tick.

Restored at boot before the charger's first tick (`restore()`): the faults come back with
their causes counted as gone, so they clear as the table says; a check that sees the cause
again marks it present. What cannot be observed across a power cut counts against charging:
an EV unplugged and plugged in again while the station was off does not clear an UNPLUG
fault (the station saw no state A). A limit with an expiry: with the clock set at both ends
the time off counts; without, the stored remaining time runs from boot (the limit is held at
least as long as the backend asked, never shorter).
"""
import json

from firmware import faults as _faults
from firmware.storage import StorageError

FILE = "safestate"
VERSION = 1


class SafeState:
    def __init__(self, store):
        self.store = store
        # What the record on flash says (after load() or the last save()).
        self.latched = 0
        self.present = 0
        self.limit_ma = -1
        self.limit_left_ms = None
        self.limit_until = None
        self.damaged = None        # why the stored record could not be used, else None
        self._stale = False        # the flash copy differs in a way due() cannot see

    # -- boot -------------------------------------------------------------------------------
    def load(self):
        """Read the stored record. A damaged one (flash corruption: a power cut leaves an
        intact old or new copy) counts as empty, says why in `damaged` and is rewritten at
        the next save; the checks of the first ticks find a welded contact or a residual
        current again."""
        try:
            raw = self.store.read(FILE)
        except StorageError as e:
            self.damaged = e.args[0] if e.args else "unreadable"
            self._stale = True
            return
        if raw is None:
            return
        try:
            rec = json.loads(raw)
            if rec.get("v") != VERSION:
                raise ValueError("version %r" % (rec.get("v"),))
            latched = _mask(rec["latched"])
            present = _mask(rec["present"])
            limit = rec["limit_ma"]
            left = rec["limit_left_ms"]
            until = rec["limit_until"]
            if not isinstance(limit, int) or limit < -1:
                raise ValueError("limit_ma %r" % (limit,))
            if left is not None and not isinstance(left, int):
                raise ValueError("limit_left_ms %r" % (left,))
            if until is not None and not isinstance(until, int):
                raise ValueError("limit_until %r" % (until,))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            self.damaged = "%s: %s" % (FILE, e)
            self._stale = True
            return
        self.latched = latched & _faults.LATCHED_MASK
        self.present = present & self.latched
        self.limit_ma = limit
        self.limit_left_ms = left if limit >= 0 else None
        self.limit_until = until if limit >= 0 else None

    def restore(self, charger, now_ms, wall_s=None):
        """Bring the stored latches and limit back into a charger built at boot, before its
        first tick. Returns the limit's remaining ms: None for no limit or one until
        changed, 0 when it expired while the station was off (then it is not applied)."""
        charger.faults.restore(self.latched, self.present, now_ms)
        if self.limit_ma < 0:
            return None
        left = self.limit_left_ms
        if left is not None and self.limit_until is not None and wall_s is not None:
            by_wall = (self.limit_until - wall_s) * 1000
            if by_wall < left:
                left = by_wall
        if left is not None and left <= 0:
            return 0
        charger.set_backend_limit(self.limit_ma)
        return left

    # -- while running ----------------------------------------------------------------------
    def due(self, faults, charger):
        """True when the record on flash no longer matches the latches or the limit.
        Allocation-free: may run after every tick."""
        return (self._stale or faults.latched() != self.latched
                or faults.latched_present() != self.present
                or charger.backend_limit_ma() != self.limit_ma)

    def save(self, faults, charger, limit_left_ms=None, wall_s=None):
        """Write the record for the present latches and limit (`limit_left_ms`: the limit's
        remaining time, None = until changed). Raises StorageError; the fields keep the
        old record then, so due() stays true and the caller may try again."""
        latched = faults.latched()
        present = faults.latched_present()
        limit = charger.backend_limit_ma()
        if limit < 0:
            limit_left_ms = None
        until = None
        if limit_left_ms is not None and wall_s is not None:
            until = wall_s + (limit_left_ms + 999) // 1000
        rec = {"v": VERSION, "latched": _faults.names(latched),
               "present": _faults.names(present), "limit_ma": limit,
               "limit_left_ms": limit_left_ms, "limit_until": until}
        self.store.write_atomic(FILE, json.dumps(rec).encode())
        self.latched = latched
        self.present = present
        self.limit_ma = limit
        self.limit_left_ms = limit_left_ms
        self.limit_until = until
        self._stale = False
        self.damaged = None


def _mask(names):
    m = 0
    for name in names:
        try:
            m |= 1 << _faults.by_name(name).code
        except _faults.FaultError:
            pass                   # a fault this firmware no longer has
    return m

"""Charging sessions: what happened between plug-in and unplug, as a billing record.

A session starts when the EV is plugged in (the pilot leaves A/E/F for B..D) or when a user
is authorized before plugging in, whichever comes first, and ends when the EV is unplugged
(back to A). Pauses inside it (the EV stops drawing, the backend pauses and resumes, a fault
clears) stay one session: charging time keeps adding up. The record format, lifecycle and
crash-safety guarantees are described in docs/sessions.md.

Persistence (flash writes are bounded, never per control tick):
  session.live   the live session, replaced atomically at its start, at its authorization,
                 when a fault is added to it, when its EV leaves (unplugged()), when its
                 start record has gone to the outbox, and from tick() every 10 minutes.
  session.ckpt   a small record (~100 bytes: time buckets, meter segment, stop reason) of
                 the live session from tick() every `session_checkpoint_s` (default 10 s),
                 or after `session_checkpoint_wh` (but not more often than every 10 s); read
                 over session.live at boot when it is newer. The flash budget for ten years
                 is worked out in docs/sessions.md ("Flash wear").
  sessions.jnl   Journal of finished records ({"k":"done","r":record}) and backend
                 acknowledgements ({"k":"ack","id":id}); compacted when it grows.
A finished record is on flash before pop_completed() hands it out; it stays pending until
acknowledged(id). A live checkpoint found at boot is closed by recover() as "power_loss",
unless energy transfer had ended before the cut (then with the reason it ended with, e.g.
"ev_stopped") or its EV had already left (then it ends as it ended, e.g. "ev_unplugged").

Stop reason: what ended the energy transfer. Set when the contactor opens (the reason the
integrator gives: ev_unplugged, ev_stopped, fault:<name>, limit:<why>, ...), replaced by
a stop the backend or the station asked for (stop_reason()) while the contactor was
closed, cleared when the contactor closes again (it was a pause). A fault that does not
open the contactor (a warning: meter stale, backend offline) is listed in `faults` only.

Start record: once a session is authorized, pop_started() hands out a small record of its
start (id, connector, idTag / authorization, meter start, time) for the outbox; it is
handed out again after a reset until start_delivered(id) says it is stored.

All times in: now_ms are ticks (firmware.compat.ticks_ms or the simulator's clock); all
differences use ticks_diff.

Energy ledger (docs/sessions.md): every accepted advance of the meter's import register
goes to exactly one place, the session metering it or the station's `unbilled_wh` counter
(firmware/counters.py). A session meters from a reading that equals the register at its
start (read with the contactor open, none closed since) or else from its first reading
taken after it started (the energy before it is unbilled, the start flagged estimated
when the contactor had closed), to a reading taken after the contactor opened (or its end
is flagged estimated and the rest is unbilled).
"""
import json

from firmware.auth import check_id_tag
from firmware.compat import presize, ticks_add, ticks_diff
from firmware.counters import RETRY_MAX_MS, RETRY_MIN_MS, session_key
from firmware.flashsched import ALWAYS
from firmware.states import STATE_A, STATE_B2, ev_connected
from firmware.storage import Journal, StorageError
from firmware.tariff import Tariff

LIVE_FILE = "session.live"
JOURNAL_FILE = "sessions.jnl"
RECORD_VERSION = 1

REASON_EV_UNPLUGGED = "ev_unplugged"
REASON_REMOTE_STOP = "remote_stop"
REASON_LOCAL_STOP = "local_stop"
REASON_DEAUTHORIZED = "deauthorized"
REASON_POWER_LOSS = "power_loss"
REASON_AUTH_TIMEOUT = "auth_timeout"
REASON_EV_STOPPED = "ev_stopped"
REASON_REBOOT = "reboot"
REASON_INOPERATIVE = "inoperative"
FAULT_PREFIX = "fault:"
LIMIT_PREFIX = "limit:"
CKPT_FILE = "session.ckpt"

TIME_WALL = "wall"            # seconds since 1970-01-01 UTC (NTP)
TIME_MONOTONIC = "monotonic"  # ticks_ms of boot number `boot`

_MIN_CHECKPOINT_GAP_MS = 10000    # the energy trigger waits at least this long
_FULL_CHECKPOINT_MS = 600000      # session.live at least this often (counts, peak, flags)
_STARTS_MAX = 4                   # start records waiting for the outbox (no backend: dropped)
_JUMP_SLACK_WH = 20               # register resolution and poll jitter above max power
_COMPACT_BYTES = 8192             # journal size that triggers a compaction
_MAX_FAULT_NAMES = 8              # per session
_FRESH_MAX = 4                    # finished records kept in RAM until handed out
_REASON_MAX = 48
_MS_PER_WH_PER_W = 3600000        # W * ms per Wh


class SessionError(ValueError):
    pass


_id_key = session_key


class _Session:
    """The live session's state: everything a checkpoint needs to finish it after a reset."""

    FIELDS = ("id", "boot", "station_id", "connector_id", "id_tag", "auth", "time_source",
              "start_time", "last_ms", "last_wall", "elapsed_ms", "charging_ms", "idle_ms",
              "suspended_ms", "plugged", "meter_start_wh", "seg_base", "seg_last",
              "closed_wh", "power_wms", "power_seen", "peak_power_w", "stale", "implausible",
              "rebased", "late_register", "recovered_wh", "faults", "reason", "tariff",
              "ended", "announced", "start_ms", "end_estimated", "serial_start",
              "serial_stop", "swaps")
    # Fields a checkpoint of older firmware lacks.
    OPTIONAL = {"ended": False, "announced": False, "start_ms": 0, "end_estimated": False,
                "serial_start": None, "serial_stop": None, "swaps": 0}
    # What changes while charging: the small checkpoint (session.ckpt), in this order.
    SMALL = ("id", "last_ms", "last_wall", "elapsed_ms", "charging_ms", "idle_ms",
             "suspended_ms", "seg_base", "seg_last", "closed_wh", "power_wms", "power_seen",
             "peak_power_w", "reason")

    def __init__(self):
        self.id = None
        self.boot = 0
        self.station_id = ""
        self.connector_id = 1
        self.id_tag = None
        self.auth = None
        self.time_source = TIME_MONOTONIC
        self.start_time = 0
        self.last_ms = 0          # ticks of the last accounted moment
        self.last_wall = None     # wall seconds at the last accounted moment, when known
        self.elapsed_ms = 0
        self.charging_ms = 0      # plugged, contactor closed
        self.idle_ms = 0          # plugged, contactor open
        self.suspended_ms = 0     # part of idle_ms while the station withheld current
        self.plugged = False
        self.meter_start_wh = None
        self.seg_base = None      # import register at the start of the current segment
        self.seg_last = None      # last accepted import register
        self.closed_wh = 0        # energy of earlier segments (before a meter re-base)
        self.power_wms = 0        # power integrated while no register was available, W*ms
        self.power_seen = False
        self.peak_power_w = None
        self.stale = 0
        self.implausible = 0
        self.rebased = 0
        self.late_register = False
        self.recovered_wh = None
        self.faults = []
        self.reason = None        # stop reason to record if nothing resumes charging
        self.tariff = None
        self.ended = False        # the EV left: time, reason and stop are final; only the
                                  # final meter reading is still to come
        self.announced = False    # its start record is in the outbox
        self.start_ms = 0         # ticks at the start (a reading after it is the session's)
        self.end_estimated = False
        self.serial_start = None  # the meter's serial number at the start / the end
        self.serial_stop = None
        self.swaps = 0            # discontinuities where the serial number changed

    def to_dict(self):
        d = {"v": RECORD_VERSION}
        for k in self.FIELDS:
            d[k] = getattr(self, k)
        return d

    def dump_json(self, out):
        """to_dict()'s JSON object written to `out` field by field (Store.write_json takes
        this method for a value): no table of its 40 fields, a block a full heap lacks."""
        out.write('{"v": %d' % RECORD_VERSION)
        for k in self.FIELDS:
            out.write(', "%s": ' % k)
            json.dump(getattr(self, k), out)
        out.write("}")

    def small(self):
        return [getattr(self, k) for k in self.SMALL]

    def overlay(self, values):
        """The small checkpoint over the full one, when it is this session's and newer."""
        if not isinstance(values, list) or len(values) != len(self.SMALL):
            return False
        if values[0] != self.id or not values[3] > self.elapsed_ms:
            return False
        for k, v in zip(self.SMALL, values):
            setattr(self, k, v)
        return True

    @classmethod
    def from_dict(cls, d):
        s = cls()
        for k in cls.FIELDS:
            if k in d:
                setattr(s, k, d[k])
            elif k in cls.OPTIONAL:
                setattr(s, k, cls.OPTIONAL[k])
            else:
                raise SessionError("checkpoint: missing %s" % k)
        return s

    def energy_wh(self):
        # From the register alone once there is one: what flowed before its base is in
        # the station's unbilled counter, so a power estimate on top would count it twice.
        if self.seg_last is not None:
            return self.closed_wh + self.seg_last - self.seg_base
        if self.power_seen:
            return self.power_wms // _MS_PER_WH_PER_W
        return None

    def energy_source(self):
        if self.seg_last is not None:
            return "register"
        return "power" if self.power_seen else "none"


# Every attribute of SessionManager, given first (compat.presize: its table's size is final
# before the objects it holds are made); tests/unit check the list is complete.
MANAGER_ATTRS = ("cfg", "budget", "store", "counters", "boot_id", "_wall", "journal", "error",
                 "_pending", "_handed", "_fresh", "_unsaved", "_dead", "_seq", "_session",
                 "_orphan", "_orphan_adjusted", "_live_sid", "_retry_at",
                 "journal_write_failures", "checkpoint_write_failures", "checkpoints_held",
                 "unreadable_entries", "checkpoints_unreadable", "_state", "_contactor",
                 "_now", "_block_until_unplug", "_reg", "_clean", "_first", "_open_ms",
                 "_boot_ms", "_serial", "_present", "serial_wanted", "_power", "_power_ms",
                 "_ckpt_ms", "_ckpt_wh", "_full_ms", "_requested", "_starts", "_queue",
                 "_drops", "_counters_due", "_ckpt_due")


class SessionManager:
    def __init__(self, cfg, store, counters, boot_id, wall_time=lambda: None, budget=ALWAYS):
        presize(self, MANAGER_ATTRS)
        self.cfg = cfg
        self.budget = budget          # firmware/flashsched.py: when a write may happen
        self.store = store
        self.counters = counters
        self.boot_id = boot_id
        self._wall = wall_time
        self.journal = Journal(store, JOURNAL_FILE)
        self.error = None             # the last storage problem, for diagnostics
        self._pending = []            # ids of finished, unacknowledged records, oldest first
        self._handed = set()          # ids handed out by pop_completed since boot
        self._fresh = {}              # id -> record finished this boot, not yet handed out
        self._unsaved = {}            # id -> record the journal could not take (retried)
        self._dead = 0                # journal entries no longer needed (acks, acked records)
        self._seq = 0
        self._session = None
        self._orphan = None           # live checkpoint from before the reset
        self._orphan_adjusted = False # the meter's register has been applied to it
        self._live_sid = None         # the session whose state session.live/.ckpt hold
        self._retry_at = None         # no retry of _unsaved records before this (back-off)
        # Damage and failed writes, counted for diagnostics (the station reports them).
        self.journal_write_failures = 0
        self.checkpoint_write_failures = 0
        self.checkpoints_held = 0     # checkpoints not written: an older record owns the files
        self.unreadable_entries = 0
        self.checkpoints_unreadable = 0  # a live session's files damaged at boot (lost/partial)
        self._state = None
        self._contactor = False
        self._now = 0
        self._block_until_unplug = False
        self._reg = None              # the ledger: last accepted import register, Wh
        self._clean = False           # _reg is the register now (contactor open since)
        self._first = True            # no register yet this boot: continue counters.ledger_wh
        self._open_ms = None          # when the contactor last opened (None: since boot)
        self._boot_ms = None          # the first event's time
        self._serial = counters.ledger_serial   # the meter's serial number, when known
        self._present = []            # names of the faults present now
        self.serial_wanted = False    # a session started: read the meter's serial number
        self._power = None            # last valid power, W (None while stale)
        self._power_ms = 0
        self._ckpt_ms = 0
        self._ckpt_wh = 0
        self._full_ms = 0
        self._requested = None        # a stop asked for while the contactor was closed
        self._starts = []             # start records not yet in the outbox
        # Writes asked for and not made yet (the budget said no), made by _settle() in
        # durability order: records to journal, their live files to remove, the counters,
        # the live session's checkpoint (see "Write order" in the module docstring).
        self._queue = []              # (record, now_ms, ledger_wh) to append to the journal
        self._drops = []              # (id, file): session.live / session.ckpt to remove
        self._counters_due = False
        self._ckpt_due = 0            # 1: the small checkpoint, 2: the full one
        self._load()
        self._settle()

    # -- boot ----------------------------------------------------------------------------
    def _load(self):
        done = set()
        uncounted = []                # finished on flash, not in the counters yet
        try:
            for payload in self.journal.records():
                try:
                    entry = json.loads(payload)
                    kind = entry["k"]
                    if kind == "done":
                        rec = entry["r"]
                        sid = rec["id"]
                        if sid not in done:
                            done.add(sid)
                            self._pending.append(sid)
                            if not self.counters.counted(sid):
                                # What counting needs, not the record (a damaged counters
                                # file makes every pending record uncounted).
                                uncounted.append({"id": sid, "energy_wh": rec["energy_wh"],
                                                  "meter_stop_wh": rec.get("meter_stop_wh")})
                    elif kind == "ack" and entry["id"] in self._pending:
                        self._pending.remove(entry["id"])
                        self._dead += 2
                except (ValueError, KeyError, TypeError):
                    self.unreadable_entries += 1
                    self.error = "sessions: unreadable journal entry skipped"
        except StorageError as e:
            self.error = e.args[0]
        for sid in done:
            boot, seq = _id_key(sid)
            if boot == self.boot_id and seq > self._seq:
                self._seq = seq
        try:
            raw = self.store.read(LIVE_FILE)
            if raw is None:
                self._lone_checkpoint(done)
            if raw is not None:
                s = _Session.from_dict(json.loads(raw))
                if s.id in done:
                    # Finished already; only the removal of the live file was cut off.
                    # (Not judged by the counters: a record counted before it reached the
                    # journal, by earlier firmware, would be lost.)
                    self.store.remove(LIVE_FILE)
                else:
                    try:
                        s.overlay(json.loads(self.store.read(CKPT_FILE) or b"null"))
                    except (StorageError, ValueError, TypeError) as e:
                        # Recovered from session.live alone: its figures are older.
                        self.checkpoints_unreadable += 1
                        self.error = "session.ckpt: %s" % (e.args[0] if e.args else "damaged")
                    self._orphan = s
                    self._live_sid = s.id
                    if s.auth is not None and not s.announced:
                        self._queue_start(s)
                    boot, seq = _id_key(s.id)
                    if boot == self.boot_id and seq > self._seq:
                        self._seq = seq
        except (StorageError, SessionError, ValueError, TypeError) as e:
            # The session cut by the reset cannot be closed: lost, and reported as damage.
            self.checkpoints_unreadable += 1
            self.error = "session.live: %s" % (e.args[0] if e.args else type(e).__name__)
        # Sessions finished on flash whose counters update a reset cut off: counted now,
        # oldest first (the counters say which ids they hold, whatever the journal's order).
        uncounted.sort(key=lambda r: _id_key(r["id"]))
        for rec in uncounted:
            self._count(rec, None, rec.get("meter_stop_wh"))

    def _lone_checkpoint(self, done):
        # session.ckpt without session.live: a finished session's leftover (the power failed
        # between the two removals), or a cut session whose main file was lost with its id
        # and who pays: that loss is reported.
        try:
            left = json.loads(self.store.read(CKPT_FILE) or b"null")
        except (StorageError, ValueError):
            left = "damaged"
        if left is None:
            return
        if isinstance(left, list) and left and left[0] in done:
            try:
                self.store.remove(CKPT_FILE)
            except StorageError:
                pass
            return
        self.checkpoints_unreadable += 1
        self.error = "session.live: missing beside session.ckpt; a cut session is lost"

    @property
    def recovering(self):
        """True while a session cut by a reset waits for recover()."""
        return self._orphan is not None

    def recover(self, now_ms, import_wh=None, closed=False, base_wh=None):
        """Close the session that was live when power failed, as "power_loss", with the
        values of its last checkpoint. `import_wh`: the meter's import register now; energy
        delivered after the checkpoint is added when it is plausible (and the contactor has
        not closed since the boot, `closed`); otherwise the session's end is estimated and
        that energy is unbilled. Returns the record, or None when there was nothing to
        recover. Called by the integrator once the meter has answered (or has not, after a
        while); also called automatically before a new session starts and by the first
        valid on_meter()."""
        s = self._orphan
        if s is None:
            return None
        exact = self._orphan_adjusted and s.recovered_wh is not None     # a retry
        if import_wh is not None and s.seg_last is not None and not closed \
                and base_wh is None and not self._orphan_adjusted:
            self._orphan_adjusted = True     # once: a retry (out of memory) adds it not twice
            delta = import_wh - s.seg_last
            if 0 <= delta <= self._cut_bound():
                s.seg_last = import_wh
                s.recovered_wh = delta
                exact = True
            else:
                s.implausible += 1
        if s.seg_last is not None and not exact:
            s.end_estimated = True
        # A session whose EV had left before the reset ended then, as it ended; one whose
        # energy transfer had ended (the contactor opened with a reason) ended that way.
        # Let go only once its record exists: out of memory while building it, the session
        # stays here (and its checkpoint on flash) to be closed at the next call.
        rec = self._finish(s, s.reason or REASON_POWER_LOSS, now_ms, s.seg_last)
        self._orphan = None
        self._orphan_adjusted = False
        return rec

    def _cut_bound(self):
        # Power was cut at most one checkpoint interval (or energy step) after the
        # checkpoint, and nothing flows while the station is off.
        return (self.cfg["meter_max_power_w"] * self.cfg["session_checkpoint_s"] // 3600
                + self.cfg["session_checkpoint_wh"] + _JUMP_SLACK_WH)

    # -- events from the integrator ------------------------------------------------------
    def on_state(self, now_ms, state):
        """The charge state (firmware.states) after each change."""
        self._advance(now_ms)
        self._state = state
        s = self._session
        if ev_connected(state):
            if s is None:
                if not self._block_until_unplug:
                    self._start(now_ms, True)
            elif not s.plugged:
                s.plugged = True
        elif state == STATE_A:
            self._block_until_unplug = False
            if s is not None and s.plugged:
                self._end(now_ms, s.reason or REASON_EV_UNPLUGGED)

    def on_contactor(self, now_ms, closed, reason=None):
        """The contactor closed, or opened for `reason` (the stop reason it means: e.g.
        ev_unplugged, ev_stopped, fault:<name>; None = none known)."""
        self._advance(now_ms)
        closed = bool(closed)
        if closed == self._contactor:
            return
        self._contactor = closed
        s = self._session
        requested = self._requested
        self._requested = None
        if closed:
            self._clean = False       # the register moves from now on
            if s is not None and not s.ended:
                s.reason = None       # charging resumed: an earlier stop was a pause
        else:
            self._open_ms = now_ms
            if s is not None and not s.ended:
                # What ended the energy transfer: a stop asked for while charging wins over
                # the EV's reaction to it (it stops because the PWM went off).
                s.reason = requested or reason or s.reason
            self.counters.contactor_opened(self._power)

    def on_meter(self, now_ms, import_wh, power_w, valid, base_wh=None, sampled_ms=None,
                 closed=False, serial=None):
        """A meter reading: import register (Wh, None when the meter has none), power (W).
        valid=False: the cycle failed (or the meter is stale); it is counted, not used.
        base_wh: this reading starts a new register segment at base_wh (the meter was reset
        or exchanged: the interval before is lost, MeterService.base_wh). sampled_ms: when
        its cycle started (default now_ms). closed: the contactor is closed as the reading
        arrives (the charger's own view, ahead of the events this manager has seen).
        serial: the meter's serial number when this cycle read it."""
        self._advance(now_ms)
        s = self._session
        if not valid:
            self._power = None
            if s is not None:
                s.stale += 1
            return
        if sampled_ms is None:
            sampled_ms = now_ms
        if self._orphan is not None and import_wh is not None:
            self.recover(now_ms, import_wh, closed, base_wh)
        if power_w is not None:
            if s is not None:
                if import_wh is None:
                    # A meter without an import register: energy is power integrated.
                    if self._power is not None:
                        dt = ticks_diff(now_ms, self._power_ms)
                        if dt > 0:
                            s.power_wms += self._power * dt
                    s.power_seen = True
                if s.peak_power_w is None or power_w > s.peak_power_w:
                    s.peak_power_w = power_w
            self._power = power_w
            self._power_ms = now_ms
        if import_wh is not None:
            self._register(now_ms, import_wh, base_wh, sampled_ms, closed, serial)

    def expected_register(self):
        """(import_wh, allow_ms, serial): the register the ledger last saw, the time at full
        power that covers what may have flowed since unseen, and the meter's serial number
        then (MeterService.expect at boot), or None before the first reading ever. A session
        cut by a reset knows the register best."""
        wh = self.counters.ledger_wh
        if self._orphan is not None and self._orphan.seg_last is not None:
            wh = self._orphan.seg_last
        if wh is None:
            return None
        return (wh, self._cut_bound() * _MS_PER_WH_PER_W // self.cfg["meter_max_power_w"],
                self.counters.ledger_serial)

    def on_rejected(self, now_ms):
        """A reading the meter service rejected as implausible (counted, not used)."""
        self._advance(now_ms)
        if self._session is not None:
            self._session.implausible += 1

    @property
    def awaiting_final(self):
        """True while the session whose EV left still waits for a register read after its
        contactor opened (the integrator holds the unplug for it)."""
        s = self._session
        return s is not None and s.ended and s.seg_last is not None and not self._clean

    def on_fault(self, now_ms, fault_name):
        self._advance(now_ms)
        self.counters.fault(fault_name)
        if fault_name not in self._present and len(self._present) < _MAX_FAULT_NAMES:
            self._present.append(fault_name)
        s = self._session
        if s is not None and not s.ended:
            # Listed only: whether it ended the charge is the contactor's to say.
            if fault_name not in s.faults and len(s.faults) < _MAX_FAULT_NAMES:
                s.faults.append(fault_name)
                self._checkpoint(now_ms)

    def on_fault_cleared(self, now_ms, fault_name):
        """A fault is no longer present (a session starting later does not list it)."""
        self._advance(now_ms)
        if fault_name in self._present:
            self._present.remove(fault_name)

    def set_id_tag(self, id_tag, now_ms=None, auth=None):
        """The user authorized for this connector (id_tag None in free mode). Starts a
        session when none is active; `auth` records how (a reason from firmware.auth)."""
        if id_tag is not None:
            check_id_tag(id_tag)
        if now_ms is None:
            now_ms = self._now
        self._advance(now_ms)
        s = self._session
        if s is not None and s.ended:
            # An authorization while the last session waits for its final reading is the
            # next user's: the ended session is finished as it stands.
            self._end(now_ms, s.reason)
            s = None
        if s is None:
            self._block_until_unplug = False
            s = self._start(now_ms, ev_connected(self._state) if self._state is not None
                            else False, id_tag, auth)
        elif s.id_tag != id_tag or s.auth != auth:
            s.id_tag = id_tag
            s.auth = auth
            # Who pays must survive a power cut: written now, once per authorization.
            self._checkpoint(now_ms)
        if auth is not None and not s.announced:
            self._queue_start(s)

    def stop_reason(self, reason):
        """Why charging stops (remote_stop, deauthorized, ...): recorded when the session
        ends, unless charging resumes first."""
        if not isinstance(reason, str) or not 0 < len(reason) <= _REASON_MAX:
            raise SessionError("stop reason: 1..%d characters" % _REASON_MAX)
        s = self._session
        if s is None or s.ended:
            return
        if self._contactor:
            self._requested = reason      # recorded when the contactor opens
        elif s.reason is None:
            s.reason = reason             # nothing had ended the transfer before

    def unplugged(self, now_ms):
        """The EV has left (state A) and the integrator holds that event until the final
        meter reading is in. The session ends now: its duration, stop time and reason
        (the one it has, else ev_unplugged) are final and on flash; later events (a stop,
        a fault, a reboot, a power cut) do not rewrite them. The held on_state(A), or
        recover() after a reset, finishes it with the final reading."""
        s = self._session
        if s is None or not s.plugged or s.ended:
            return
        self._advance(now_ms)
        s.reason = s.reason or REASON_EV_UNPLUGGED
        s.ended = True
        self._checkpoint(now_ms)

    def end(self, now_ms, reason):
        """End the session now without an unplug (an authorization that expired before
        plug-in, an operator's hard stop). While the EV stays plugged no new session starts
        until it is unplugged or authorized again. Returns the record or None."""
        self.stop_reason(reason)
        self._advance(now_ms)
        s = self._session
        if s is None:
            return None
        if s.ended:
            return self._end(now_ms, s.reason)
        if s.plugged:
            self._block_until_unplug = True
        # Charging until now: this end stopped it. Otherwise what stopped it earlier stands.
        return self._end(now_ms, reason if self._contactor else (s.reason or reason))

    def tick(self, now_ms):
        """Call occasionally (any rate): writes a checkpoint of the live session when due,
        the counters when due, and retries records the journal could not take."""
        s = self._session
        if s is not None:
            since = ticks_diff(now_ms, self._ckpt_ms)
            if since >= self.cfg["session_checkpoint_s"] * 1000 or (
                    since >= _MIN_CHECKPOINT_GAP_MS and s.seg_last is not None
                    and s.energy_wh() - self._ckpt_wh >= self.cfg["session_checkpoint_wh"]):
                self._advance(now_ms)
                if ticks_diff(now_ms, self._full_ms) >= _FULL_CHECKPOINT_MS:
                    self._checkpoint(now_ms)
                else:
                    self._checkpoint_small(now_ms)
        self._settle()
        if self.budget.free():
            self.counters.tick(now_ms)
        if self._unsaved and self.budget.free() and (
                self._retry_at is None or ticks_diff(now_ms, self._retry_at) >= 0):
            if not self._retry_unsaved():
                # Backed off as the counters are (firmware/counters.py): a refused journal
                # retried every iteration wears the flash and floods the fault records.
                shift = self.journal_write_failures if self.journal_write_failures < 10 else 10
                self._retry_at = ticks_add(now_ms, min(RETRY_MIN_MS << shift, RETRY_MAX_MS))
            else:
                self._retry_at = None

    def damage(self):
        """Counts of storage damage and failed writes since boot (diagnostics)."""
        j = self.journal
        return {"journal_damaged_bytes": j.damaged_bytes_total,
                "journal_cut_failures": j.cut_failures,
                "journal_unreadable_entries": self.unreadable_entries,
                "journal_write_failures": self.journal_write_failures,
                "checkpoint_write_failures": self.checkpoint_write_failures,
                "checkpoints_held": self.checkpoints_held,
                "checkpoints_unreadable": self.checkpoints_unreadable}

    def damage_total(self):
        j = self.journal
        return (j.damaged_bytes_total + j.cut_failures + self.unreadable_entries
                + self.journal_write_failures + self.checkpoint_write_failures
                + self.checkpoints_held + self.checkpoints_unreadable)

    # -- views for the integrator and the outbox -------------------------------------------
    @property
    def active(self):
        """The live session as a record so far (stop_time and stop_reason None), or None
        (also once its EV has left and only its final reading is awaited)."""
        s = self._session
        if s is None or s.ended:
            return None
        return self._record(s, None)

    def pop_started(self):
        """Start records of authorized sessions not yet in the outbox, oldest first; handed
        out again until start_delivered(id)."""
        return list(self._starts)

    def start_delivered(self, session_id):
        """The start record of `session_id` is in the outbox (on flash): not offered again,
        also after a reset."""
        for rec in self._starts:
            if rec["id"] == session_id:
                self._starts.remove(rec)
                break
        s = self._session
        if s is not None and s.id == session_id and not s.announced:
            s.announced = True
            self._checkpoint(self._now)

    def _queue_start(self, s):
        for rec in self._starts:
            if rec["id"] == s.id:
                self._starts.remove(rec)
                break
        if len(self._starts) >= _STARTS_MAX:
            # No backend polls them: the end record still tells the whole session.
            self._starts.pop(0)
        self._starts.append({
            "v": RECORD_VERSION, "id": s.id, "station_id": s.station_id,
            "connector_id": s.connector_id, "id_tag": s.id_tag, "auth": s.auth, "boot": s.boot,
            "time_source": s.time_source, "start_time": s.start_time,
            "time": s.start_time if s.time_source == TIME_WALL else None,
            "meter_start_wh": s.meter_start_wh})

    def pop_completed(self, limit=None):
        """Finished records not yet handed out since boot, oldest first (at most `limit`;
        a record is about 1.5 KB of heap as a dict). Each is on flash already and stays
        pending until acknowledged(id)."""
        out = []
        want = [sid for sid in self._pending if sid not in self._handed]
        if limit is not None:
            want = want[:limit]
        if not want:
            return out
        stored = None
        for sid in want:
            rec = self._fresh.pop(sid, None) or self._unsaved.get(sid)
            if rec is None:
                if stored is None:
                    stored = self._stored_records(want)
                rec = stored.get(sid)
            if rec is not None:
                out.append(rec)
                self._handed.add(sid)
        return out

    def pending(self):
        """Every finished record not yet acknowledged, oldest first (read from flash)."""
        stored = self._stored_records(self._pending)
        out = []
        for sid in self._pending:
            rec = stored.get(sid) or self._unsaved.get(sid)
            if rec is not None:
                out.append(rec)
        return out

    def redeliver(self):
        """Offer every pending record again through pop_completed (e.g. after the outbox
        lost them)."""
        self._handed = set()

    def acknowledged(self, session_id):
        """The backend has the record: drop it from the pending list. Returns False for an
        unknown or already acknowledged id."""
        if session_id not in self._pending:
            return False
        if session_id in self._unsaved:
            # Never journaled, but the backend holds it now: count it (first: a cut before
            # the checkpoint goes replays it as a power-loss record the counters know), then
            # let its checkpoint go.
            rec = self._unsaved.pop(session_id)
            self._pending.remove(session_id)
            self._count(rec, None, rec.get("meter_stop_wh"))
            if self._counters_due:
                # Here the counters go before the live files (the reverse of _settle's
                # order), at once: an acknowledgement is written when it comes.
                self._counters_due = False
                self._save_counters()
            if self._live_sid == session_id:
                self._ask_drop(session_id)
                if self._session is not None:
                    self._checkpoint(self._now)
                self._settle()
            return True
        rest = [sid for sid in self._pending if sid != session_id]
        try:
            if not rest:
                self.journal.rewrite([])       # nothing pending: the empty journal is the ack
                self._dead = 0
            else:
                self.journal.append_json({"k": "ack", "id": session_id})
                self._dead += 2
                # Compact when most of the file is dead, so pending records that stay
                # unacknowledged for long are not rewritten at every acknowledgement.
                if self._dead > len(rest) and self.journal.size() > _COMPACT_BYTES:
                    self._compact(rest)
                    self._dead = 0
        except StorageError as e:
            self.error = e.args[0]
            return False
        self._pending = rest
        self._handed.discard(session_id)
        self._fresh.pop(session_id, None)
        return True

    # -- internals -----------------------------------------------------------------------
    def _advance(self, now_ms):
        self._now = now_ms
        if self._boot_ms is None:
            self._boot_ms = now_ms
        s = self._session
        if s is None or s.ended:
            return
        dt = ticks_diff(now_ms, s.last_ms)
        s.last_ms = now_ms
        if dt <= 0:
            return
        s.elapsed_ms += dt
        if s.plugged:
            if self._contactor:
                s.charging_ms += dt
            else:
                s.idle_ms += dt
                # Only B2 (current offered, EV not taking it) is the EV's own idling;
                # x1 states, E/F and C/D before the contactor closes are the station's.
                if self._state != STATE_B2:
                    s.suspended_ms += dt

    def _register(self, now_ms, reg, base, sampled_ms, closed, serial):
        s = self._session
        # The register now equals this reading when the contactor was open from before its
        # cycle started until now (in this manager's view and in the charger's).
        clean = not closed and not self._contactor and (
            self._open_ms is None or ticks_diff(sampled_ms, self._open_ms) >= 0)
        swap = serial is not None and self._serial is not None and serial != self._serial
        if serial is not None:
            self._serial = serial
            if serial != self.counters.ledger_serial:
                # Rare (the first read, a swap): to flash at once, or the next boot would
                # take the meter it reads for another.
                self.counters.meter_serial(serial)
                self._save_ledger(now_ms)
        if self._first:
            # The first register this boot continues the ledger on flash: what it gained
            # since is energy no record holds (a checkpoint's tail, a gap); more than the
            # station could have delivered since is another meter.
            self._first = False
            prev = self.counters.ledger_wh
            bound = self._cut_bound() + self.cfg["meter_max_power_w"] * max(
                0, ticks_diff(now_ms, self._boot_ms)) // _MS_PER_WH_PER_W
            if base is None and prev is not None and 0 <= reg - prev <= bound and not swap:
                delta = reg - prev
            else:
                delta = None
        elif base is not None or swap:
            delta = None                  # a discontinuity: the interval before is lost
        else:
            delta = reg - self._reg
        if base is None:
            base = reg
        self._reg = reg
        self._clean = clean
        if s is not None and s.seg_base is not None:
            # The session meters: everything since its base is its own.
            if delta is None:
                s.closed_wh += s.seg_last - s.seg_base
            s.seg_last = reg
            if serial is not None:
                s.serial_stop = serial
                if s.serial_start is None and not swap:
                    s.serial_start = serial
            if delta is None:
                s.seg_base = base
                s.rebased += 1
                if swap:
                    s.swaps += 1
                # A power cut must find the new segment: the old register means nothing
                # to the meter that answers after it.
                self._checkpoint(now_ms)
            return
        # No session meters: the advance belongs to nobody.
        fresh = self.counters.ledger_wh is None
        self.counters.unbilled(delta if delta is not None else reg - base, reg)
        if fresh or delta is None:
            # The ledger's first position, and its position after a discontinuity, go to
            # flash at once (rare): a boot that finds none, or the old meter's, cannot
            # count what flowed before its first reading.
            self._save_ledger(now_ms)
        if s is None or not (clean or ticks_diff(sampled_ms, s.start_ms) >= 0):
            return
        # The session's base: a reading that equals the register at its start, or its
        # first reading after it (the start is estimated when the contactor had closed).
        s.seg_base = s.seg_last = s.meter_start_wh = reg
        s.late_register = not clean or s.charging_ms > 0
        s.serial_start = s.serial_stop = self._serial
        self._save_ledger(now_ms)
        self._checkpoint(now_ms)

    def _save_ledger(self, now_ms):
        # A session's base goes to flash only after the ledger up to it: a power cut then
        # finds the unbilled energy before the base counted, and the session's after it
        # (_settle writes the counters before the checkpoint).
        if self.counters.dirty:
            self._counters_due = True
            self._settle()

    def _save_counters(self):
        try:
            self.counters.save(self._now)
        except StorageError as e:
            self.error = e.args[0]

    def _settle(self):
        """Make the writes asked for, in durability order, while the budget allows: a
        record is on flash before its live files go and before the counters count it, the
        ledger before the checkpoint of a session based on it."""
        b = self.budget
        while b.free():
            if self._queue:
                self._journal_next()
            elif self._drops:
                sid, name = self._drops.pop(0)
                self._drop_file(sid, name)
            elif self._counters_due:
                self._counters_due = False
                self._save_counters()
            elif self._ckpt_due:
                small = self._ckpt_due == 1
                self._ckpt_due = 0
                if self._session is not None:
                    self._write_checkpoint(small)
            else:
                return

    def flush(self):
        """Every write still pending, now (with an unbounded budget: a shutdown)."""
        self._settle()

    @property
    def writes_pending(self):
        return bool(self._queue or self._drops or self._counters_due or self._ckpt_due)

    def _start(self, now_ms, plugged, id_tag=None, auth=None):
        if self._orphan is not None:
            self.recover(now_ms, None)
        self._seq += 1
        s = _Session()
        s.id = "%d-%d" % (self.boot_id, self._seq)
        s.boot = self.boot_id
        s.station_id = self.cfg["station_id"]
        s.connector_id = self.cfg["connector_id"]
        s.last_ms = now_ms
        s.plugged = plugged
        s.id_tag = id_tag
        s.auth = auth
        s.tariff = Tariff.from_config(self.cfg).to_dict()
        wall = self._wall()
        if wall is None:
            s.time_source = TIME_MONOTONIC
            s.start_time = now_ms
        else:
            s.time_source = TIME_WALL
            s.start_time = wall
        s.start_ms = now_ms
        s.faults = self._present[:]       # faults present as the session starts
        self.serial_wanted = True
        self._session = s
        if self._reg is not None and self._clean:
            # Read with the contactor open and none closed since: the register now.
            s.seg_base = s.seg_last = s.meter_start_wh = self._reg
            s.serial_start = s.serial_stop = self._serial
            self._save_ledger(now_ms)
        self._checkpoint(now_ms)
        return s

    def _sync_wall(self, s):
        wall = self._wall()
        if wall is None:
            return
        if s.time_source == TIME_MONOTONIC and s.boot == self.boot_id:
            # The clock was set during the session: date its start back.
            s.start_time = wall - s.elapsed_ms // 1000
            s.time_source = TIME_WALL
        s.last_wall = wall

    def _checkpoint(self, now_ms):
        self._full_ms = now_ms
        self._ask_checkpoint(now_ms, 2)

    def _checkpoint_small(self, now_ms):
        self._ask_checkpoint(now_ms, 1)

    def _ask_checkpoint(self, now_ms, level):
        # Written by _settle(), with the session as it is then (several asks in one
        # iteration, as at a start, make one write).
        self._ckpt_ms = now_ms
        e = self._session.energy_wh()
        self._ckpt_wh = e if e is not None else 0
        if level > self._ckpt_due:
            self._ckpt_due = level
        self._settle()

    def _live_held(self, sid):
        # session.live / session.ckpt still hold a finished record the journal could not
        # take: they are its only copy on flash, and stay until it is journaled.
        live = self._live_sid
        return live is not None and live != sid and live in self._unsaved

    def _write_checkpoint(self, small):
        s = self._session
        self._sync_wall(s)
        if self._live_held(s.id):
            self.checkpoints_held += 1
            return
        self._live_sid = s.id
        name = CKPT_FILE if small else LIVE_FILE
        values = s.small() if small else s.dump_json
        try:
            self.store.write_json(name, values)
        except StorageError as e:
            self.checkpoint_write_failures += 1
            self.error = e.args[0]

    def _end(self, now_ms, reason):
        s = self._session
        self._sync_wall(s)
        # Its end is the register now only if read with the contactor open and none closed
        # since; otherwise what flowed after its last reading is unbilled.
        s.end_estimated = s.seg_last is not None and not self._clean
        # The session is let go only once its record exists: an error while building it
        # (out of memory) leaves it live, to be ended again, not lost.
        rec = self._finish(s, reason, now_ms, self._reg)
        self._session = None
        return rec

    def _record(self, s, reason):
        energy = s.energy_wh()
        charging_s = s.charging_ms // 1000
        idle_s = s.idle_ms // 1000
        billable_idle_s = (s.idle_ms - s.suspended_ms) // 1000
        # Rounded so that idle_s - suspended_s is exactly the idle time billed (the backend
        # re-rates from the record): the station's part rounds up, the EV's down.
        suspended_s = idle_s - billable_idle_s
        tariff = Tariff.from_dict(s.tariff)
        total, breakdown = tariff.cost(energy, charging_s, billable_idle_s)
        if reason is None:
            stop = None
        elif s.time_source == TIME_WALL:
            stop = s.last_wall if s.last_wall is not None else s.start_time + s.elapsed_ms // 1000
        else:
            stop = s.last_ms
        return {
            "v": RECORD_VERSION,
            "id": s.id,
            "station_id": s.station_id,
            "connector_id": s.connector_id,
            "id_tag": s.id_tag,
            "auth": s.auth,
            "boot": s.boot,
            "time_source": s.time_source,
            "start_time": s.start_time,
            "stop_time": stop,
            "duration_s": s.elapsed_ms // 1000,
            "charging_s": charging_s,
            "idle_s": idle_s,
            "suspended_s": suspended_s,
            "meter_start_wh": s.meter_start_wh,
            "meter_stop_wh": s.seg_last,
            "energy_wh": energy,
            "peak_power_w": s.peak_power_w,
            "stop_reason": reason,
            "faults": list(s.faults),
            "tariff_id": tariff.tariff_id,
            "currency": tariff.currency,
            "cost_minor": total,
            "cost": breakdown,
            "meter_flags": {
                "energy_source": s.energy_source(),
                "stale": s.stale,
                "implausible": s.implausible,
                "rebased": s.rebased,
                "late_register": s.late_register,
                "end_estimated": s.end_estimated,
                "recovered_wh": s.recovered_wh,
                "swaps": s.swaps,
                "serial_start": s.serial_start,
                "serial_stop": s.serial_stop,
            },
        }

    def _finish(self, s, reason, now_ms, ledger_wh):
        rec = self._record(s, reason)
        sid = rec["id"]
        for start in self._starts:
            if start["id"] == sid:
                # Not in the outbox yet: the end record tells the backend all of it.
                self._starts.remove(start)
                break
        # Order matters for crash safety: the record first, then the live file, then the
        # counters (which skip a session id they already counted): queued, and written in
        # that order by _settle() (at once, or one write per loop iteration in a station).
        # Until its record is journaled the live files stay: a reset recovers the session.
        if s is self._session:
            self._ckpt_due = 0            # its checkpoint is moot: the record says all
        self._queue.append((rec, now_ms, ledger_wh))
        self._settle()
        return rec

    def _journal_next(self):
        rec, now_ms, ledger_wh = self._queue.pop(0)
        sid = rec["id"]
        try:
            self.journal.append_json({"k": "done", "r": rec})
            self._keep_fresh(sid, rec)
        except (StorageError, ValueError, MemoryError) as e:
            # Kept in RAM and retried from tick(); the live file stays until it is on flash
            # (no later checkpoint overwrites it: _live_held), and the counters count the
            # session only then: a record counted but not journaled would be taken for a
            # finished one at the next boot.
            self.journal_write_failures += 1
            self.error = e.args[0] if e.args else type(e).__name__
            self._unsaved[sid] = rec
            self._live_sid = sid
        self._pending.append(sid)
        if sid not in self._unsaved:
            self._ask_drop(sid)
            self._count(rec, now_ms, ledger_wh)

    def _ask_drop(self, sid):
        # session.live first: without it the small checkpoint is never read.
        self._drops.append((sid, LIVE_FILE))
        self._drops.append((sid, CKPT_FILE))

    def _drop_file(self, sid, name):
        if self._live_sid is not None and self._live_sid != sid:
            return                       # the files belong to another session by now
        try:
            self.store.remove(name)
            if name == CKPT_FILE:
                self._live_sid = None
        except StorageError as e:
            self.error = e.args[0]

    def _keep_fresh(self, sid, rec):
        # A few just-finished records stay in RAM for pop_completed; older ones are read
        # back from the journal, so an outbox that does not poll cannot fill the heap.
        if len(self._fresh) >= _FRESH_MAX:
            oldest = None
            for k in self._fresh:
                if oldest is None or _id_key(k) < _id_key(oldest):
                    oldest = k
            del self._fresh[oldest]
        self._fresh[sid] = rec

    def _count(self, rec, now_ms, ledger_wh):
        # Counted in RAM now, written by _settle() after the record and its live files.
        # Older sessions not yet finished on flash (a journal write being retried or
        # queued, a session cut by a reset awaiting recover()) are counted later: the
        # counters must know.
        sid = rec["id"]
        open_ids = [k for k in self._unsaved if k != sid]
        for q in self._queue:
            if q[0]["id"] != sid:
                open_ids.append(q[0]["id"])
        if self._orphan is not None and self._orphan.id != sid:
            open_ids.append(self._orphan.id)
        if self.counters.session_ended(sid, rec["energy_wh"], now_ms, ledger_wh, open_ids,
                                       save=False):
            self._counters_due = True

    def _retry_unsaved(self):
        for sid in list(self._unsaved):
            if not self.budget.free():
                return True               # the others in a later iteration
            rec = self._unsaved[sid]
            try:
                self.journal.append_json({"k": "done", "r": rec})
            except (StorageError, ValueError, MemoryError) as e:
                self.journal_write_failures += 1
                self.error = e.args[0] if e.args else type(e).__name__
                return False
            del self._unsaved[sid]
            if sid not in self._handed:
                self._keep_fresh(sid, rec)
            self._count(rec, None, rec.get("meter_stop_wh"))
            if self._live_sid == sid:
                self._ask_drop(sid)
                if self._session is not None:
                    self._checkpoint(self._now)   # the live session's files, held till now
        self._settle()
        return True

    def _stored_records(self, ids):
        want = set(ids)
        out = {}
        if not want:
            return out
        try:
            for payload in self.journal.records():
                try:
                    entry = json.loads(payload)
                    if entry.get("k") == "done" and entry["r"]["id"] in want:
                        out[entry["r"]["id"]] = entry["r"]
                except (ValueError, KeyError, TypeError):
                    pass
        except StorageError as e:
            self.error = e.args[0]
        return out

    def _compact(self, pending_ids):
        want = set(pending_ids)

        def live():
            for payload in self.journal.records():
                try:
                    entry = json.loads(payload)
                except ValueError:
                    continue
                if entry.get("k") == "done" and entry["r"]["id"] in want:
                    yield payload
        self.journal.rewrite(live())
